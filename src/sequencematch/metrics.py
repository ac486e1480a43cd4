"""Evaluation of generation quality: arithmetic accuracy, forced-noise sweeps, perplexity.

Accuracy is exact match of the visible answer (after backspaces, without ``<eos>``), with
a Wilson score interval over questions; :func:`mean_confidence_interval` aggregates a
metric over seeds with a Student t interval. The forced-noise sweep (SPEC section 9, our
addition to the paper) forces a plausible random answer character with probability ``p``
per generation step and measures how often the model deletes it again, a direct test of
recovery from compounding error. Action-trace statistics, scoring and trace rendering are
pure functions of a :class:`~sequencematch.sampling.GenerationOutput`, testable without a
model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .actions import collate
from .data import encode_prompt
from .forward import state_logits
from .model import backspace_id
from .sampling import GenerationOutput, generate
from .tasks.arithmetic import DIGITS, ArithmeticQuestion, format_prompt, score

# --------------------------------------------------------------------------- intervals


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (``n == 0`` gives ``(0.0, 1.0)``).

    Used for accuracy over questions: unlike the normal (Wald) interval it stays inside
    [0, 1] and is not degenerate at 0 or n successes.
    """
    _check_confidence(confidence)
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = successes / n
    denominator = 1.0 + z * z / n
    center = (p + z * z / (2.0 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n))
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 1000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return result


def _regularized_beta(a: float, b: float, x: float) -> float:
    """``I_x(a, b)``, the regularized incomplete beta function, for ``0 <= x <= 1``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
        + a * math.log(x) + b * math.log1p(-x)
    )  # fmt: skip
    # The continued fraction converges fast below the mean; use the symmetry above it.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """CDF of Student's t distribution with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"df must be positive, got {df}")
    tail = 0.5 * _regularized_beta(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


def student_t_quantile(q: float, df: float) -> float:
    """Quantile of Student's t distribution: the ``t`` with ``student_t_cdf(t, df) == q``.

    scipy is not a dependency, so this inverts the CDF (written with the regularized
    incomplete beta function, evaluated by its continued fraction) by bisection, to about
    1e-12 relative, for any (also non-integer) ``df``: no table, no normal approximation.
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must lie in (0, 1), got {q}")
    if q < 0.5:
        return -student_t_quantile(1.0 - q, df)
    if q == 0.5:
        return 0.0
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < q:
        low, high = high, 2.0 * high
    for _ in range(200):
        middle = 0.5 * (low + high)
        if student_t_cdf(middle, df) < q:
            low = middle
        else:
            high = middle
        if high - low <= 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


def mean_confidence_interval(
    values: Sequence[float], confidence: float = 0.95
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the Student t interval of the mean, e.g. of a metric over seeds.

    Uses the sample standard deviation (``n - 1``) and :func:`student_t_quantile`. With a
    single value the interval is undefined and ``low``/``high`` are NaN.
    """
    _check_confidence(confidence)
    data = [float(v) for v in values]
    if not data:
        raise ValueError("mean_confidence_interval needs at least one value")
    n = len(data)
    mean = math.fsum(data) / n
    if n == 1:
        return mean, math.nan, math.nan
    variance = math.fsum((v - mean) ** 2 for v in data) / (n - 1)
    half = student_t_quantile(0.5 + confidence / 2.0, n - 1) * math.sqrt(variance / n)
    return mean, mean - half, mean + half


# ----------------------------------------------------------------------- trace handling


def strip_eos(tokens: Sequence[int], eos_token_id: int | None) -> list[int]:
    """``tokens`` without one final ``<eos>`` (generation keeps it in the visible sequence)."""
    tokens = [int(token) for token in tokens]
    if eos_token_id is not None and tokens and tokens[-1] == eos_token_id:
        return tokens[:-1]
    return tokens


def format_trace(
    tokenizer: PreTrainedTokenizerBase,
    actions: Sequence[int],
    bkspc_id: int | None,
    forced: Sequence[bool] | None = None,
) -> str:
    """The action trace as text with its deletions visible, for reading samples.

    Each token is decoded on its own; a token that a later ``<bkspc>`` deleted is shown in
    brackets, so the trace ``1 2 <bkspc> 3`` reads ``1[2]3`` and ``1 2 <bkspc> <bkspc> 3``
    reads ``[1][2]3``. With ``forced``, forced-noise tokens get a ``*`` after them
    (``1[2*]3``). Special tokens such as ``<eos>`` are shown by name.
    """
    if forced is not None and len(forced) != len(actions):
        raise ValueError(f"{len(actions)} actions but {len(forced)} forced flags")
    pieces: list[str] = []
    deleted: list[bool] = []
    stack: list[int] = []  # indices into pieces of the visible tokens
    for step, action in enumerate(actions):
        if bkspc_id is not None and action == bkspc_id:
            if not stack:
                raise ValueError(f"the <bkspc> at action {step} has nothing to delete")
            deleted[stack.pop()] = True
            continue
        text = tokenizer.decode(
            [int(action)], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        if forced is not None and forced[step]:
            text += "*"
        stack.append(len(pieces))
        pieces.append(text)
        deleted.append(False)
    return "".join(f"[{p}]" if gone else p for p, gone in zip(pieces, deleted, strict=True))


@dataclass(frozen=True)
class TraceStatistics:
    """Counts over a set of action traces, and the rates derived from them.

    Attributes:
        rows: number of traces.
        actions: actions over all traces, ``<bkspc>`` included.
        bkspc: ``<bkspc>`` actions.
        forced: forced-noise actions.
        forced_deleted: forced tokens that a later ``<bkspc>`` deleted.
    """

    rows: int
    actions: int
    bkspc: int
    forced: int
    forced_deleted: int

    @property
    def bkspc_rate(self) -> float:
        """Fraction of all actions that are ``<bkspc>`` (pooled over traces)."""
        return self.bkspc / self.actions if self.actions else 0.0

    @property
    def forced_rate(self) -> float:
        """Fraction of all actions that were forced noise (pooled over traces)."""
        return self.forced / self.actions if self.actions else 0.0

    @property
    def forced_deleted_rate(self) -> float | None:
        """Of the forced tokens, the fraction deleted later; ``None`` when none was forced."""
        return self.forced_deleted / self.forced if self.forced else None

    @property
    def mean_actions(self) -> float:
        """Mean number of actions per trace."""
        return self.actions / self.rows if self.rows else 0.0


def trace_statistics(
    actions_list: Sequence[Sequence[int]],
    forced_list: Sequence[Sequence[bool]],
    bkspc_id: int | None,
) -> TraceStatistics:
    """Backspace and forced-noise counts of action traces (one entry per row).

    Each trace is walked with a stack of ``(token, forced?)`` pairs: a token pushes, a
    ``<bkspc>`` pops one; a forced pair popped by a backspace is a deleted forced token,
    however many steps later that happens. A forced ``<bkspc>`` (only with custom
    ``noise_token_ids``) counts as forced but deletes like any other.
    """
    if len(actions_list) != len(forced_list):
        raise ValueError(f"{len(actions_list)} action traces but {len(forced_list)} forced lists")
    actions = bkspc = forced = forced_deleted = 0
    for row, (trace, flags) in enumerate(zip(actions_list, forced_list, strict=True)):
        if len(trace) != len(flags):
            raise ValueError(f"row {row}: {len(trace)} actions but {len(flags)} forced flags")
        stack: list[bool] = []  # forced? of each visible generated token
        for step, (action, was_forced) in enumerate(zip(trace, flags, strict=True)):
            actions += 1
            forced += bool(was_forced)
            if bkspc_id is not None and action == bkspc_id:
                if not stack:
                    raise ValueError(f"row {row}: the <bkspc> at action {step} deletes nothing")
                bkspc += 1
                forced_deleted += stack.pop()
            else:
                stack.append(bool(was_forced))
    return TraceStatistics(len(actions_list), actions, bkspc, forced, forced_deleted)


# ---------------------------------------------------------------------------- arithmetic


def answer_token_ids(
    tokenizer: PreTrainedTokenizerBase, characters: str = DIGITS + "-"
) -> list[int]:
    """Ids of the single-token characters that can appear in arithmetic answers.

    These are the forced-noise candidates of :func:`evaluate_arithmetic`: the protocol is
    "a plausible random answer character is forced", never ``<eos>``, ``<bkspc>``, padding
    or prompt-only characters. Characters that are not one token (or are unknown) are left
    out.
    """
    ids: list[int] = []
    for character in characters:
        encoded = tokenizer(character, add_special_tokens=False).input_ids
        if len(encoded) == 1 and encoded[0] != tokenizer.unk_token_id and encoded[0] not in ids:
            ids.append(int(encoded[0]))
    if not ids:
        raise ValueError(f"no character of {characters!r} is a single token of this tokenizer")
    return ids


@dataclass
class ArithmeticEval:
    """Exact-match accuracy of generated answers, with trace statistics.

    Attributes:
        n: questions evaluated.
        correct: exactly right answers.
        accuracy: ``correct / n``.
        ci_low, ci_high: 95% Wilson score interval of the accuracy.
        noise_prob: probability of forcing a random answer character per step.
        bkspc_rate: fraction of actions that are ``<bkspc>``.
        forced_rate: fraction of actions that were forced noise.
        forced_deleted_rate: of the forced tokens, the fraction a later ``<bkspc>`` deleted
            (``None`` when nothing was forced).
        mean_actions: mean actions per question, ``<bkspc>`` included.
        finished_rate: fraction of answers that ended with ``<eos>`` (others were cut).
        examples: the first few questions with answer, prediction and rendered trace.
    """

    n: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    noise_prob: float
    bkspc_rate: float
    forced_rate: float
    forced_deleted_rate: float | None
    mean_actions: float
    finished_rate: float
    examples: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self, include_examples: bool = False) -> dict[str, Any]:
        """A JSON-ready dict of the metrics (examples only when asked)."""
        result = asdict(self)
        if not include_examples:
            del result["examples"]
        return result


def score_outputs(
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[ArithmeticQuestion],
    output: GenerationOutput,
    bkspc_id: int | None,
    *,
    noise_prob: float = 0.0,
    num_examples: int = 5,
) -> ArithmeticEval:
    """Score generated answers (row ``i`` answers ``questions[i]``) and collect statistics.

    The prediction is the visible sequence (backspaces applied by the sampler) without its
    final ``<eos>``, decoded with special tokens kept, so a stray special token makes an
    answer wrong rather than disappearing; it is compared with :func:`arithmetic.score`.
    """
    if len(output.sequences) != len(questions):
        raise ValueError(f"{len(questions)} questions but {len(output.sequences)} generated rows")
    eos = tokenizer.eos_token_id
    correct = 0
    examples: list[dict[str, Any]] = []
    for row, question in enumerate(questions):
        prediction = tokenizer.decode(
            strip_eos(output.sequences[row], eos),
            skip_special_tokens=False,
            clean_up_tokenization_spaces=False,
        )
        right = score(prediction, question.answer)
        correct += right
        if row < num_examples:
            trace = format_trace(tokenizer, output.actions[row], bkspc_id, output.forced[row])
            examples.append(
                {
                    "question": question.question,
                    "answer": question.answer,
                    "prediction": prediction,
                    "correct": right,
                    "trace": trace,
                }
            )
    n = len(questions)
    low, high = wilson_interval(correct, n)
    stats = trace_statistics(output.actions, output.forced, bkspc_id)
    return ArithmeticEval(
        n=n,
        correct=correct,
        accuracy=correct / n if n else 0.0,
        ci_low=low,
        ci_high=high,
        noise_prob=float(noise_prob),
        bkspc_rate=stats.bkspc_rate,
        forced_rate=stats.forced_rate,
        forced_deleted_rate=stats.forced_deleted_rate,
        mean_actions=stats.mean_actions,
        finished_rate=sum(output.finished) / n if n else 0.0,
        examples=examples,
    )


def concatenate_outputs(outputs: Sequence[GenerationOutput]) -> GenerationOutput:
    """One :class:`GenerationOutput` holding the rows of several, in order."""
    return GenerationOutput(
        sequences=[row for out in outputs for row in out.sequences],
        actions=[row for out in outputs for row in out.actions],
        logprobs=[row for out in outputs for row in out.logprobs],
        forced=[row for out in outputs for row in out.forced],
        finished=[row for out in outputs for row in out.finished],
        prompts=[row for out in outputs for row in out.prompts],
    )


def evaluate_arithmetic(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[ArithmeticQuestion],
    *,
    bkspc_id: int | None,
    noise_prob: float = 0.0,
    batch_size: int = 64,
    max_new_tokens: int = 16,
    seed: int = 0,
    do_sample: bool = False,
    num_examples: int = 5,
) -> ArithmeticEval:
    """Generate an answer to every question (greedy by default) and score exact matches.

    Prompts are :func:`encode_prompt` of :func:`arithmetic.format_prompt`. With
    ``noise_prob > 0``, each step forces, with that probability, a token drawn uniformly
    from :func:`answer_token_ids` (digits ``0-9a-f`` and ``-``): a plausible wrong answer
    character, never ``<eos>`` or ``<bkspc>``. One generator seeded with ``seed`` drives
    sampling and noise over all batches, so results are reproducible for a given
    ``(seed, batch_size)``.
    """
    if not questions:
        raise ValueError("questions is empty: nothing to evaluate")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    prompts = [encode_prompt(tokenizer, format_prompt(q.question)) for q in questions]
    noise_ids = answer_token_ids(tokenizer) if noise_prob > 0 else None
    device = model.get_input_embeddings().weight.device
    generator = torch.Generator(device=device).manual_seed(seed)
    outputs = [
        generate(
            model,
            prompts[start : start + batch_size],
            bkspc_id=bkspc_id,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            eos_token_id=tokenizer.eos_token_id,
            noise_prob=noise_prob,
            noise_token_ids=noise_ids,
            generator=generator,
        )
        for start in range(0, len(prompts), batch_size)
    ]
    return score_outputs(
        tokenizer,
        questions,
        concatenate_outputs(outputs),
        bkspc_id,
        noise_prob=noise_prob,
        num_examples=num_examples,
    )


def noise_sweep(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[ArithmeticQuestion],
    *,
    bkspc_id: int | None,
    levels: Sequence[float] = (0.0, 0.05, 0.1, 0.2),
    seed: int = 0,
    **kwargs: Any,
) -> list[ArithmeticEval]:
    """:func:`evaluate_arithmetic` at each forced-noise level (same questions and seed)."""
    return [
        evaluate_arithmetic(
            model, tokenizer, questions, bkspc_id=bkspc_id, noise_prob=level, seed=seed, **kwargs
        )
        for level in levels
    ]


# ---------------------------------------------------------------------------- perplexity


@torch.no_grad()
def perplexity(
    model: PreTrainedModel,
    prompts: list[list[int]],
    completions: list[list[int]],
    *,
    batch_size: int = 64,
) -> float:
    """Perplexity of completions given prompts: ``exp`` of the mean NLL per completion token.

    Completions are token ids as in training data, so the caller includes the final
    ``<eos>`` (it is scored like any other token). The model is a policy over the vocabulary
    plus ``<bkspc>``: probability mass on ``<bkspc>`` counts against the data, except in
    the state right after the prompt, where ``<bkspc>`` is not a valid action and is masked
    as in sampling. The mean is over all completion tokens of all rows (token-weighted).
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    bkspc_id = backspace_id(model)
    if bkspc_id is not None and any(bkspc_id in row for row in completions):
        raise ValueError("completions contain <bkspc>; perplexity scores data without it")
    if any(len(prompt) == 0 for prompt in prompts):
        raise ValueError("every prompt needs at least one token (prepend a BOS token)")
    device = model.get_input_embeddings().weight.device
    total_nll, total_tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            batch = collate(
                prompts[start : start + batch_size], completions[start : start + batch_size]
            ).to(device)
            logits = state_logits(
                model, batch.sequences, batch.prompt_lengths, batch.lengths, bkspc_id=None
            )  # [B, T, V]: logits[b, t] score element t + 1
            if logits.dtype in (torch.float16, torch.bfloat16):
                logits = logits.float()
            rows = torch.arange(logits.shape[0], device=device)
            if bkspc_id is not None:
                logits = logits.clone()
                logits[rows, batch.prompt_lengths - 1, bkspc_id] = float("-inf")
            log_probs = logits[:, :-1].log_softmax(dim=-1)  # [B, T-1, V]
            targets = batch.sequences[:, 1:]  # [B, T-1]
            token_log_probs = log_probs.gather(-1, targets[..., None])[..., 0]  # [B, T-1]
            index = torch.arange(1, batch.sequences.shape[1], device=device)  # [T-1]
            scored = (index >= batch.prompt_lengths[:, None]) & (
                index < batch.lengths[:, None]
            )  # [B, T-1]: the target is a completion token
            total_nll -= token_log_probs[scored].double().sum().item()
            total_tokens += int(scored.sum())
    finally:
        model.train(was_training)
    if total_tokens == 0:
        raise ValueError("no completion tokens to score")
    return math.exp(total_nll / total_tokens)
