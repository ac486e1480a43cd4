"""Evaluation metrics: intervals, trace statistics, arithmetic scoring, perplexity."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import boost_logit, make_model

from sequencematch.core.actions import apply_backspaces
from sequencematch.core.examples import encode_prompt
from sequencematch.core.forward import verify_layout_once
from sequencematch.core.sampling import GenerationOutput, generate
from sequencematch.core.traces import format_trace, strip_eos, trace_statistics
from sequencematch.evaluation.perplexity import perplexity
from sequencematch.evaluation.statistics import (
    mean_confidence_interval,
    student_t_quantile,
    wilson_interval,
)
from sequencematch.tasks.arithmetic import ArithmeticQuestion, format_prompt, make_splits
from sequencematch.tasks.arithmetic_task import ArithmeticTask, answer_token_ids
from sequencematch.tasks.base import EvalOptions, Pair
from sequencematch.tasks.exact_match import score_exact_match

BK = 99  # a <bkspc> id for hand-made traces


@pytest.fixture(scope="module")
def gpt2():
    return make_model("tiny_gpt2")


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def evaluate_questions(model, tokenizer, questions, *, bkspc_id, max_new_tokens=16, **options):
    """The arithmetic task's evaluation of ``questions`` (prompt: question + separator)."""
    pairs = [Pair(format_prompt(q.question), q.answer) for q in questions]
    return ArithmeticTask().evaluate(
        model, tokenizer, pairs, bkspc_id=bkspc_id, max_new_tokens=max_new_tokens,
        options=EvalOptions(**options),
    )  # fmt: skip


# ------------------------------------------------------------------------------ intervals


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        (0, 10, 0.0, 0.2775),  # 0/10, 5/10, 10/10: by hand from the closed form
        (5, 10, 0.2366, 0.7634),
        (10, 10, 0.7225, 1.0),
        (81, 263, 0.2553, 0.3662),  # Newcombe (1998), Stat. Med. 17:857, table I
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_interval_known_values(successes, n, low, high):
    got_low, got_high = wilson_interval(successes, n)
    assert got_low == pytest.approx(low, abs=6e-5)
    assert got_high == pytest.approx(high, abs=6e-5)


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    narrow, wide = wilson_interval(5, 10, 0.8), wilson_interval(5, 10, 0.99)
    assert wide[0] < narrow[0] < 0.5 < narrow[1] < wide[1]
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 10, 1.0)


@pytest.mark.parametrize(
    ("q", "df", "expected"),  # published t tables
    [
        (0.975, 1, 12.706),
        (0.975, 2, 4.303),
        (0.975, 4, 2.776),
        (0.975, 9, 2.262),
        (0.975, 30, 2.042),
        (0.975, 1000, 1.962),
        (0.995, 1, 63.657),
        (0.995, 3, 5.841),
        (0.9, 7, 1.415),
        (0.025, 4, -2.776),
    ],
)
def test_student_t_quantile_table(q, df, expected):
    assert student_t_quantile(q, df) == pytest.approx(expected, abs=6e-4)


def test_mean_confidence_interval_known_data():
    # mean 3, sample sd sqrt(2.5), se sqrt(0.5), t_{0.975, 4} = 2.776445
    mean, low, high = mean_confidence_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.776445105 * math.sqrt(0.5)
    assert mean == 3.0
    assert low == pytest.approx(3.0 - half, abs=1e-8)
    assert high == pytest.approx(3.0 + half, abs=1e-8)
    # two seeds: t_{0.975, 1} = 12.7062, sd = |a - b| / sqrt(2), se = |a - b| / 2
    mean, low, high = mean_confidence_interval([0.4, 0.6])
    assert (low, high) == pytest.approx((0.5 - 12.7062047 * 0.1, 0.5 + 12.7062047 * 0.1))
    mean, low, high = mean_confidence_interval([0.7])
    assert mean == 0.7 and math.isnan(low) and math.isnan(high)
    with pytest.raises(ValueError):
        mean_confidence_interval([])


# ------------------------------------------------------------------------ trace handling


def test_trace_statistics_hand_made():
    actions = [[1, 2, BK, 3, 0], [4, 5, BK, BK, 6]]
    forced = [[False, True, False, False, False], [True, False, False, False, True]]
    stats = trace_statistics(actions, forced, BK)
    # row 0: forced 2 deleted at once; row 1: forced 4 deleted by the second <bkspc>
    # (after 5), forced 6 kept
    assert (stats.rows, stats.actions, stats.bkspc, stats.forced) == (2, 10, 3, 3)
    assert stats.forced_deleted == 2
    assert stats.forced_deleted_rate == pytest.approx(2 / 3)
    assert stats.bkspc_rate == pytest.approx(0.3)
    assert stats.forced_rate == pytest.approx(0.3)
    assert stats.mean_actions == 5.0


def test_trace_statistics_deletion_is_of_the_last_token_not_the_forced_one():
    # the forced 7 stays: the <bkspc> deletes the unforced 8 typed after it
    stats = trace_statistics([[7, 8, BK]], [[True, False, False]], BK)
    assert stats.forced == 1 and stats.forced_deleted == 0
    assert stats.forced_deleted_rate == 0.0
    assert trace_statistics([[7, 8]], [[False, False]], BK).forced_deleted_rate is None
    with pytest.raises(ValueError, match="deletes nothing"):
        trace_statistics([[7, BK, BK]], [[False] * 3], BK)
    with pytest.raises(ValueError, match="forced flags"):
        trace_statistics([[7, 8]], [[False]], BK)


def test_format_trace_and_strip_eos(gpt2):
    _, tokenizer, bk = gpt2
    one, two, three = ids(tokenizer, "123")
    eos = tokenizer.eos_token_id
    assert format_trace(tokenizer, [one, two, bk, three], bk) == "1[2]3"
    assert format_trace(tokenizer, [one, two, bk, bk, three, eos], bk) == "[1][2]3<eos>"
    flags = [False, True, False, True]
    assert format_trace(tokenizer, [one, two, bk, three], bk, flags) == "1[2*]3*"
    assert format_trace(tokenizer, [one, two, three], None) == "123"
    assert strip_eos([one, eos], eos) == [one]
    assert strip_eos([eos, one], eos) == [eos, one]
    assert strip_eos([eos, one, eos], eos) == [eos, one]  # only the final one
    assert strip_eos([one, eos], None) == [one, eos]
    assert strip_eos([], eos) == []


def test_encode_prompt_and_answer_ids(gpt2):
    _, tokenizer, _ = gpt2
    prompt = encode_prompt(tokenizer, "12 +")
    assert prompt == [tokenizer.bos_token_id, *ids(tokenizer, "12 +")]
    answer_ids = answer_token_ids(tokenizer)
    assert tokenizer.decode(answer_ids) == "0123456789abcdef-"
    assert tokenizer.eos_token_id not in answer_ids


# ------------------------------------------------------------------------------- scoring


def test_score_outputs_on_hand_made_generation(gpt2):
    _, tokenizer, bk = gpt2
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    questions = [
        ArithmeticQuestion("In base 10, what is 1 + 2?", "3"),
        ArithmeticQuestion("In base 10, what is 1 - 2?", "-1"),
        ArithmeticQuestion("In base 10, what is 4 - 2?", "2"),
        ArithmeticQuestion("In base 10, what is 5 + 5?", "10"),
    ]
    actions = [
        [*ids(tokenizer, "4"), bk, *ids(tokenizer, "3"), eos],  # corrected: right
        ids(tokenizer, "-1"),  # cut before <eos>, still right
        [*ids(tokenizer, "2"), pad, eos],  # a stray special token: wrong
        [*ids(tokenizer, "10"), bk, eos],  # deleted its last digit: wrong
    ]
    forced = [[True, False, False, False], [False, False], [False] * 3, [True] + [False] * 3]
    output = GenerationOutput(
        sequences=[apply_backspaces(row, bk) for row in actions],
        actions=actions,
        logprobs=[[0.0] * len(row) for row in actions],
        forced=forced,
        finished=[True, False, True, True],
        prompts=[[tokenizer.bos_token_id]] * 4,
    )
    pairs = [(question.question, question.answer) for question in questions]
    result = score_exact_match(tokenizer, pairs, output, bk, noise_prob=0.5, num_examples=3)
    assert (result.n, result.correct, result.accuracy) == (4, 2, 0.5)
    assert (result.ci_low, result.ci_high) == wilson_interval(2, 4)
    assert result.bkspc_rate == pytest.approx(2 / 13)
    assert result.forced_rate == pytest.approx(2 / 13)
    assert result.forced_deleted_rate == 0.5  # the forced 4 was deleted, the forced 1 kept
    assert result.finished_rate == 0.75 and result.mean_actions == 13 / 4
    assert [e["prediction"] for e in result.examples] == ["3", "-1", "2<pad>"]
    assert result.examples[0]["trace"] == "[4*]3<eos>"
    summary = result.as_dict()
    assert "examples" not in summary and summary["noise_prob"] == 0.5
    full = json.loads(json.dumps(result.as_dict(include_examples=True)))  # JSON-ready
    assert full["examples"][3 - 1]["prediction"] == "2<pad>" and len(full["examples"]) == 3


def sample_questions(n: int) -> list[ArithmeticQuestion]:
    return make_splits(0, 0, n, seed=3)["test"]


def test_model_that_stops_at_once_scores_zero(gpt2):
    model, tokenizer, bk = gpt2
    handle = boost_logit(model, tokenizer.eos_token_id, 1e4)  # always <eos> first
    try:
        result = evaluate_questions(
            model, tokenizer, sample_questions(6), bkspc_id=bk, batch_size=4
        )
    finally:
        handle.remove()
    assert (result.n, result.correct, result.accuracy) == (6, 0, 0.0)
    assert (result.ci_low, result.ci_high) == pytest.approx((0.0, 0.3903), abs=1e-4)
    assert result.mean_actions == 1.0 and result.finished_rate == 1.0
    assert result.bkspc_rate == 0.0 and result.forced_deleted_rate is None
    assert [e["prediction"] for e in result.examples] == [""] * 5
    assert result.examples[0]["trace"] == "<eos>"


def test_model_steered_to_the_answer_scores_one(gpt2):
    model, tokenizer, bk = gpt2
    question = ArithmeticQuestion("In base 7, what is -135 - 5?", "-143")
    targets = [*ids(tokenizer, question.answer), tokenizer.eos_token_id]
    verify_layout_once(model)  # its probe forwards would advance the steering below
    calls = []

    def steer(module, inputs, output):  # forward k (prefill = 0) emits targets[k]
        output = output.clone()
        output[..., targets[min(len(calls), len(targets) - 1)]] += 1e4
        calls.append(None)
        return output

    handle = model.get_output_embeddings().register_forward_hook(steer)
    try:
        result = evaluate_questions(model, tokenizer, [question], bkspc_id=bk)
    finally:
        handle.remove()
    assert (result.n, result.correct, result.accuracy) == (1, 1, 1.0)
    assert (result.ci_low, result.ci_high) == wilson_interval(1, 1)
    assert result.examples[0]["prediction"] == "-143"
    assert result.examples[0]["trace"] == "-143<eos>"


def test_the_task_evaluation_matches_generate_and_batching(gpt2):
    model, tokenizer, bk = gpt2
    items = sample_questions(5)
    handle = boost_logit(model, bk, 2.0)  # frequent backspaces
    try:
        kwargs = dict(bkspc_id=bk, noise_prob=0.3, max_new_tokens=6, seed=7)
        result = evaluate_questions(model, tokenizer, items, batch_size=64, **kwargs)
        again = evaluate_questions(model, tokenizer, items, batch_size=64, **kwargs)
        greedy = [
            evaluate_questions(
                model, tokenizer, items, bkspc_id=bk, batch_size=size, max_new_tokens=6
            )
            for size in (2, 64)
        ]
        prompts = [[tokenizer.bos_token_id, *ids(tokenizer, format_prompt(q.question))]
                   for q in items]  # fmt: skip
        out = generate(
            model, prompts, bkspc_id=bk, max_new_tokens=6, do_sample=False,
            eos_token_id=tokenizer.eos_token_id, noise_prob=0.3,
            noise_token_ids=answer_token_ids(tokenizer),
            generator=torch.Generator().manual_seed(7),
        )  # fmt: skip
    finally:
        handle.remove()
    assert result.as_dict(include_examples=True) == again.as_dict(include_examples=True)
    assert greedy[0].as_dict(include_examples=True) == greedy[1].as_dict(include_examples=True)
    stats = trace_statistics(out.actions, out.forced, bk)
    assert result.bkspc_rate == stats.bkspc_rate > 0
    assert result.forced_rate == stats.forced_rate > 0
    assert result.forced_deleted_rate == stats.forced_deleted_rate
    assert result.accuracy == result.correct / result.n and result.n == 5
    expected = [
        tokenizer.decode(strip_eos(row, tokenizer.eos_token_id), skip_special_tokens=False)
        for row in out.sequences
    ]
    assert [e["prediction"] for e in result.examples] == expected


def test_noise_sweep_extremes(gpt2):
    model, tokenizer, bk = gpt2
    low, high = [
        evaluate_questions(
            model, tokenizer, sample_questions(4), bkspc_id=bk, noise_prob=p, max_new_tokens=5
        )
        for p in (0.0, 1.0)
    ]
    assert (low.noise_prob, high.noise_prob) == (0.0, 1.0)
    assert low.forced_rate == 0.0 and low.forced_deleted_rate is None
    assert high.forced_rate == 1.0 and high.bkspc_rate == 0.0
    assert high.forced_deleted_rate == 0.0 and high.finished_rate == 0.0
    assert high.mean_actions == 5.0  # every step forced a character: rows stop at the cap
    allowed = set("0123456789abcdef-*")
    assert all(set(e["trace"]) <= allowed for e in high.examples)


# ---------------------------------------------------------------------------- perplexity


def test_perplexity_equals_exp_mean_nll_of_plain_forwards():
    model, tokenizer, bk = make_model("tiny_llama", dtype=torch.float64)
    eos = tokenizer.eos_token_id
    prompts = [[1, *ids(tokenizer, "12+3=")], [1], [1, *ids(tokenizer, "a-b")]]
    completions = [[*ids(tokenizer, "15"), eos], [*ids(tokenizer, "7"), eos], [eos]]
    handle = boost_logit(model, bk, 3.0)  # <bkspc> mass matters, except at the boundary
    try:
        got = perplexity(model, prompts, completions, batch_size=2)
        nll = []
        with torch.no_grad():
            for prompt, completion in zip(prompts, completions, strict=True):
                row = torch.tensor([prompt + completion])
                logits = model(input_ids=row).logits[0]  # [T, V]
                for k, token in enumerate(completion):
                    state = logits[len(prompt) + k - 1].clone()
                    if k == 0:
                        state[bk] = float("-inf")  # <bkspc> is invalid after the prompt
                    nll.append(-state.log_softmax(-1)[token].item())
    finally:
        handle.remove()
    assert len(nll) == 6
    assert got == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-10)
    # a large vocabulary scores fewer rows at once: the same number, one row at a time
    import sequencematch.evaluation.perplexity as module

    assert module.rows_within_budget(64, 160, 49_153) == 8  # 2 GB of logits would be 64
    budget = module.LOGITS_BUDGET
    try:
        module.LOGITS_BUDGET = 1
        handle = boost_logit(model, bk, 3.0)
        assert perplexity(model, prompts, completions, batch_size=2) == pytest.approx(got)
    finally:
        module.LOGITS_BUDGET = budget
        handle.remove()
    with pytest.raises(ValueError, match="<bkspc>"):
        perplexity(model, prompts[:1], [[5, bk, 6]])
