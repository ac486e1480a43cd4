"""Generation with backspace: consistency with the one-pass layout and with HF generate."""

from __future__ import annotations

import pytest
import torch
from conftest import boost_logit, make_model

from sequencematch.core.actions import apply_backspaces
from sequencematch.core.forward import state_logits
from sequencematch.core.layout import visible_lengths
from sequencematch.core.sampling import generate


def recomputed_logprobs(model, out, bk):
    batch = out.to_batch()
    with torch.no_grad():
        logits = state_logits(model, batch.sequences, batch.prompt_lengths, batch.lengths, bk)
    depths = visible_lengths(batch.sequences, batch.prompt_lengths, batch.lengths, bk)
    result = []
    for row, actions in enumerate(out.actions):
        prompt = len(out.prompts[row])
        row_values = []
        for k, action in enumerate(actions):
            state = logits[row, prompt + k - 1].clone()
            if depths[row, prompt + k - 1] <= prompt:
                state[bk] = float("-inf")
            row_values.append(state.log_softmax(-1)[action].item())
        result.append(row_values)
    return result


@pytest.mark.parametrize("preset", ["tiny_gpt2", "tiny_llama"])
def test_sampled_logprobs_match_state_logits(preset):
    model, tokenizer, bk = make_model(preset, dtype=torch.float32)
    handle = boost_logit(model, bk, 3.0)  # make backspaces frequent
    try:
        prompts = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
        out = generate(
            model, prompts, bkspc_id=bk, max_new_tokens=12,
            eos_token_id=tokenizer.eos_token_id, generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        assert sum(actions.count(bk) for actions in out.actions) >= 5
        expected = recomputed_logprobs(model, out, bk)
    finally:
        handle.remove()
    for got, want in zip(out.logprobs, expected, strict=True):
        assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-5)
    for row, actions in enumerate(out.actions):
        assert apply_backspaces(actions, bk) == out.sequences[row]


def test_greedy_without_backspace_equals_hf_generate(float64_model):
    model, _, bk = float64_model
    prompts = torch.tensor([[5, 6, 7, 8], [9, 9, 4, 12]])
    reference = model.generate(
        prompts, do_sample=False, max_new_tokens=15, eos_token_id=None, pad_token_id=0
    )[:, 4:]
    handle = boost_logit(model, bk, -1e4)  # the model never emits <bkspc>
    try:
        ours = generate(model, prompts, bkspc_id=bk, do_sample=False, max_new_tokens=15,
                        eos_token_id=[])  # fmt: skip
    finally:
        handle.remove()
    assert ours.sequences == reference.tolist()
    assert ours.actions == reference.tolist()


def test_ragged_batch_equals_rows_generated_alone():
    model, _, bk = make_model("tiny_llama", dtype=torch.float64, seed=3)
    handle = boost_logit(model, bk, 2.0)
    try:
        prompts = [[5, 6], [7, 8, 9, 10, 11], [12]]
        together = generate(model, prompts, bkspc_id=bk, do_sample=False, max_new_tokens=10,
                            eos_token_id=[])  # fmt: skip
        alone = [
            generate(model, [p], bkspc_id=bk, do_sample=False, max_new_tokens=10, eos_token_id=[])
            for p in prompts
        ]
    finally:
        handle.remove()
    assert together.actions == [out.actions[0] for out in alone]
    assert any(bk in actions for actions in together.actions)


def test_backspace_never_deletes_the_prompt_and_loops_stop():
    model, _, bk = make_model("tiny_gpt2", dtype=torch.float32)
    handle = boost_logit(model, bk, 1e4)  # <bkspc> whenever it is allowed
    try:
        out = generate(model, [[4, 5]], bkspc_id=bk, max_new_tokens=5, max_steps=9,
                       eos_token_id=[], generator=torch.Generator().manual_seed(0))  # fmt: skip
    finally:
        handle.remove()
    actions = out.actions[0]
    assert len(actions) == 9  # stopped by max_steps although it never finished
    assert actions[0] != bk and actions[1] == bk  # insert / delete loop, never below the prompt
    assert actions[::2] == [a for a in actions if a != bk]
    assert out.finished == [False]


def test_stops_at_eos_and_at_max_new_tokens():
    model, tokenizer, bk = make_model("tiny_gpt2", dtype=torch.float32)
    eos = tokenizer.eos_token_id
    handle = boost_logit(model, eos, 1e4)
    try:
        out = generate(model, [[4, 5]], bkspc_id=bk, eos_token_id=eos, do_sample=False)
    finally:
        handle.remove()
    assert out.actions == [[eos]] and out.finished == [True] and out.sequences == [[eos]]
    out = generate(model, [[4, 5], [6]], bkspc_id=None, max_new_tokens=7, eos_token_id=[])
    assert [len(s) for s in out.sequences] == [7, 7]


def test_forced_noise_with_probability_one_forces_every_step():
    model, tokenizer, bk = make_model("tiny_gpt2", dtype=torch.float32)
    candidates = [10, 11, 12]
    out = generate(
        model, [[4, 5]] * 3, bkspc_id=bk, max_new_tokens=8, noise_prob=1.0,
        noise_token_ids=candidates, generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    for actions, forced in zip(out.actions, out.forced, strict=True):
        assert all(forced) and len(actions) == 8
        assert set(actions) <= set(candidates)
    quiet = generate(model, [[4, 5]], bkspc_id=bk, max_new_tokens=8, noise_prob=0.0)
    assert not any(quiet.forced[0])


def test_temperature_top_k_top_p_restrict_choices():
    model, _, bk = make_model("tiny_gpt2", dtype=torch.float32)
    greedy = generate(model, [[4, 5]], bkspc_id=bk, do_sample=False, max_new_tokens=6,
                      eos_token_id=[])  # fmt: skip
    for kwargs in ({"top_k": 1}, {"top_p": 1e-6}, {"temperature": 1e-4}):
        sampled = generate(model, [[4, 5]], bkspc_id=bk, max_new_tokens=6, eos_token_id=[],
                           generator=torch.Generator().manual_seed(2), **kwargs)  # fmt: skip
        assert sampled.actions == greedy.actions, kwargs


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt_ids": [[]]}, "at least one token"),
        ({"prompt_ids": []}, "empty"),
        ({"prompt_ids": [[1000]]}, "outside the vocabulary"),
        ({"prompt_ids": [[4]], "temperature": 0.0}, "temperature"),
        ({"prompt_ids": [[4]], "max_new_tokens": 0}, "max_new_tokens"),
        ({"prompt_ids": [[4]], "top_p": 1.5}, "top_p"),
        ({"prompt_ids": [[4]], "noise_prob": 2.0}, "noise_prob"),
    ],
)
def test_bad_generation_arguments(kwargs, message):
    model, _, bk = make_model("tiny_gpt2", dtype=torch.float32)
    with pytest.raises(ValueError, match=message):
        generate(model, bkspc_id=bk, **kwargs)


def test_prompt_with_backspace_is_refused():
    model, _, bk = make_model("tiny_gpt2", dtype=torch.float32)
    with pytest.raises(ValueError, match="contains <bkspc>"):
        generate(model, [[4, bk]], bkspc_id=bk)


def test_greedy_never_repeats_a_deleted_token_in_the_same_state():
    model, _, bk = make_model("tiny_gpt2", dtype=torch.float32)
    with torch.no_grad():
        first_state = model(input_ids=torch.tensor([[4, 5]])).logits[0, -1]
    first_state[bk] = float("-inf")
    ranking = first_state.argsort(descending=True)[:4].tolist()
    handle = boost_logit(model, bk, 1e4)  # delete whatever is written
    try:
        blocked = generate(model, [[4, 5]], bkspc_id=bk, do_sample=False, max_new_tokens=5,
                           max_steps=8, eos_token_id=[])  # fmt: skip
        looping = generate(model, [[4, 5]], bkspc_id=bk, do_sample=False, max_new_tokens=5,
                           max_steps=8, eos_token_id=[], block_deleted=False)  # fmt: skip
    finally:
        handle.remove()
    # greedy tries the best, second best, ... token of the state, each then deleted
    assert blocked.actions[0] == [ranking[0], bk, ranking[1], bk, ranking[2], bk, ranking[3], bk]
    assert looping.actions[0] == [ranking[0], bk] * 4
