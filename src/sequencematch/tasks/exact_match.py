"""Exact-match evaluation of completions: accuracy, trace statistics, the forced-noise sweep.

A prediction is the visible completion (after backspaces, without ``<eos>``), decoded with
special tokens kept, so a stray special token makes it wrong rather than disappearing; it
matches when it equals the expected completion after stripping surrounding whitespace.
Accuracy comes with a Wilson score interval over prompts. The forced-noise sweep (our
addition to the paper's protocol) forces a random token with probability ``p`` per
generation step and measures how often the model deletes it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.examples import encode_prompt
from ..core.sampling import GenerationOutput
from ..core.traces import format_trace, strip_eos, trace_statistics
from ..evaluation.generation import generate_batched
from ..evaluation.statistics import wilson_interval


def is_exact_match(prediction: str, answer: str) -> bool:
    """Exact match after stripping surrounding whitespace."""
    return prediction.strip() == answer.strip()


@dataclass
class ExactMatchEval:
    """Exact-match accuracy of generated completions, with trace statistics.

    Attributes:
        n: prompts evaluated.
        correct: exactly right completions.
        accuracy: ``correct / n``.
        ci_low, ci_high: 95% Wilson score interval of the accuracy.
        noise_prob: probability of forcing a random token per step.
        bkspc_rate: fraction of actions that are ``<bkspc>``.
        forced_rate: fraction of actions that were forced noise.
        forced_deleted_rate: of the forced tokens, the fraction a later ``<bkspc>`` deleted
            (``None`` when nothing was forced).
        mean_actions: mean actions per prompt, ``<bkspc>`` included.
        finished_rate: fraction of completions that ended with ``<eos>`` (others were cut).
        examples: the first few prompts with answer, prediction and rendered trace.
        outcomes: per prompt, in order, whether the completion was exactly right (what a
            paired test of two models on the same prompts needs).
        decoding: ``"greedy"`` or ``"sample"``.
        temperature: the sampling temperature (``None`` when greedy).
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
    outcomes: list[bool] = field(default_factory=list, repr=False)
    decoding: str = "greedy"
    temperature: float | None = None

    def as_dict(self, include_examples: bool = False) -> dict[str, Any]:
        """A JSON-ready dict of the metrics (examples only when asked; no per-prompt
        outcomes)."""
        result = asdict(self)
        del result["outcomes"]
        if not include_examples:
            del result["examples"]
        return result

    def summary(self) -> str:
        """One line: accuracy with its interval, the decoding, the noise level and the
        ``<bkspc>`` rate."""
        decoding = "greedy" if self.temperature is None else (
            f"sampled at temperature {self.temperature:g}"
        )  # fmt: skip
        return (
            f"accuracy {self.accuracy:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}] on {self.n} "
            f"prompts ({decoding}, forced noise {self.noise_prob:g}); "
            f"<bkspc> rate {self.bkspc_rate:.3f}"
        )


def score_exact_match(
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    output: GenerationOutput,
    bkspc_id: int | None,
    *,
    noise_prob: float = 0.0,
    num_examples: int = 5,
    temperature: float | None = None,
) -> ExactMatchEval:
    """Score generated completions (row ``i`` answers ``pairs[i] = (shown prompt, answer)``)
    and collect trace statistics; ``temperature``: the completions were sampled at it
    (``None``: greedy)."""
    if len(output.sequences) != len(pairs):
        raise ValueError(f"{len(pairs)} prompts but {len(output.sequences)} generated rows")
    eos = tokenizer.eos_token_id
    outcomes: list[bool] = []
    examples: list[dict[str, Any]] = []
    for row, (prompt, answer) in enumerate(pairs):
        prediction = tokenizer.decode(
            strip_eos(output.sequences[row], eos),
            skip_special_tokens=False,
            clean_up_tokenization_spaces=False,
        )
        right = is_exact_match(prediction, answer)
        outcomes.append(right)
        if row < num_examples:
            trace = format_trace(tokenizer, output.actions[row], bkspc_id, output.forced[row])
            examples.append(
                {"prompt": prompt, "answer": answer, "prediction": prediction,
                 "correct": right, "trace": trace}
            )  # fmt: skip
    n, correct = len(pairs), sum(outcomes)
    low, high = wilson_interval(correct, n)
    stats = trace_statistics(output.actions, output.forced, bkspc_id)
    return ExactMatchEval(
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
        outcomes=outcomes,
        decoding="greedy" if temperature is None else "sample",
        temperature=None if temperature is None else float(temperature),
    )


def evaluate_exact_match(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    *,
    bkspc_id: int | None,
    noise_prob: float = 0.0,
    noise_token_ids: Sequence[int] | None = None,
    batch_size: int = 64,
    max_new_tokens: int = 16,
    seed: int = 0,
    do_sample: bool = False,
    temperature: float = 1.0,
    num_examples: int = 5,
) -> ExactMatchEval:
    """Generate a completion for every ``(prompt, answer)`` pair (greedy by default;
    ``do_sample``: sampled at ``temperature``) and score exact matches.

    Prompts are encoded with :func:`encode_prompt`. With ``noise_prob > 0`` each step forces,
    with that probability, a token drawn uniformly from ``noise_token_ids`` (default: every
    ordinary token; never ``<eos>`` or ``<bkspc>``). Generation is
    :func:`~sequencematch.evaluation.generation.generate_batched`: only the tokenizer's ids
    are actions, and results are reproducible for a given ``(seed, batch_size)``.
    """
    if not pairs:
        raise ValueError("no prompts to evaluate")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    prompts = [encode_prompt(tokenizer, prompt) for prompt, _ in pairs]
    output = generate_batched(
        model, tokenizer, prompts, batch_size=batch_size, seed=seed, bkspc_id=bkspc_id,
        max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
        noise_prob=noise_prob, noise_token_ids=noise_token_ids if noise_prob > 0 else None,
    )  # fmt: skip
    return score_exact_match(
        tokenizer, pairs, output, bkspc_id, noise_prob=noise_prob,
        num_examples=num_examples, temperature=temperature if do_sample else None,
    )  # fmt: skip
