"""Evaluation of the arithmetic task: exact-match accuracy and the forced-noise sweep.

Accuracy is exact match of the visible answer (after backspaces, without ``<eos>``), with
a Wilson score interval over questions (:mod:`sequencematch.tasks.exact_match`). The
forced-noise sweep (our addition to the paper's protocol) forces a plausible random
answer character with probability ``p`` per generation step and measures how often the
model deletes it again, a direct test of recovery from compounding error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.sampling import GenerationOutput
from .arithmetic import DIGITS, ArithmeticQuestion, format_prompt
from .exact_match import ExactMatchEval, evaluate_exact_match, score_exact_match

ArithmeticEval = ExactMatchEval
"""Exact-match accuracy of generated answers, with trace statistics."""


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


def score_outputs(
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[ArithmeticQuestion],
    output: GenerationOutput,
    bkspc_id: int | None,
    *,
    noise_prob: float = 0.0,
    num_examples: int = 5,
) -> ArithmeticEval:
    """Score generated answers (row ``i`` answers ``questions[i]``) and collect statistics
    (see :func:`sequencematch.tasks.exact_match.score_exact_match`)."""
    pairs = [(question.question, question.answer) for question in questions]
    return score_exact_match(
        tokenizer, pairs, output, bkspc_id, noise_prob=noise_prob, num_examples=num_examples
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
    temperature: float = 1.0,
    num_examples: int = 5,
) -> ArithmeticEval:
    """Generate an answer to every question (greedy by default; ``do_sample``: sampled at
    ``temperature``) and score exact matches.

    Prompts are :func:`arithmetic.format_prompt` of the questions. With ``noise_prob > 0``,
    each step forces, with that probability, a token drawn uniformly from
    :func:`answer_token_ids` (digits ``0-9a-f`` and ``-``): a plausible wrong answer
    character, never ``<eos>`` or ``<bkspc>``. Reproducible for a given
    ``(seed, batch_size)``.
    """
    if not questions:
        raise ValueError("questions is empty: nothing to evaluate")
    pairs = [(format_prompt(q.question), q.answer) for q in questions]
    return evaluate_exact_match(
        model, tokenizer, pairs, bkspc_id=bkspc_id, noise_prob=noise_prob,
        noise_token_ids=answer_token_ids(tokenizer) if noise_prob > 0 else None,
        batch_size=batch_size, max_new_tokens=max_new_tokens, seed=seed, do_sample=do_sample,
        temperature=temperature, num_examples=num_examples,
    )  # fmt: skip


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
