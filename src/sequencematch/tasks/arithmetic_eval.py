"""Evaluation of the arithmetic task: exact-match accuracy and the forced-noise sweep.

Accuracy is exact match of the visible answer (after backspaces, without ``<eos>``), with
a Wilson score interval over questions. The forced-noise sweep (SPEC section 9, our
addition to the paper) forces a plausible random answer character with probability ``p``
per generation step and measures how often the model deletes it again, a direct test of
recovery from compounding error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.examples import encode_prompt
from ..core.sampling import GenerationOutput, generate
from ..core.traces import concatenate_outputs, format_trace, strip_eos, trace_statistics
from ..evaluation.statistics import wilson_interval
from .arithmetic import DIGITS, ArithmeticQuestion, format_prompt, score


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
