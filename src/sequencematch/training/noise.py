"""Noise sources by name: uniform, corpus unigram, or the task's own mistakes (passed in)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from ..core.actions import NoiseSource, UniformNoise, UnigramNoise
from ..core.examples import Example, special_ids


def build_noise_source(
    kind: str,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    vocab_size: int,
    exclude: Sequence[int] = (),
    task_noise: NoiseSource | None = None,
) -> NoiseSource:
    """The noise source named in the configuration (``uniform``, ``unigram`` or ``task``);
    special tokens and ``exclude`` (e.g. ``<bkspc>``) are never drawn. ``task`` is the
    task's own source of plausible mistakes, ``task_noise``, which the task provides.

    ``vocab_size`` is the number of valid ids, ``len(tokenizer)``: only ids below it are drawn,
    never the padding rows of an embedding matrix padded beyond the tokenizer."""
    if vocab_size > len(tokenizer):
        raise ValueError(
            f"vocab_size {vocab_size} exceeds the tokenizer's {len(tokenizer)} entries: pass "
            "len(tokenizer) so that padding rows of the embedding matrix are never noise"
        )
    excluded = sorted({*special_ids(tokenizer), *exclude})
    if kind == "uniform":
        return UniformNoise(vocab_size, exclude=excluded)
    if kind == "unigram":
        counts = Counter(token for example in examples for token in example.completion)
        return UnigramNoise([counts.get(i, 0) for i in range(vocab_size)], exclude=excluded)
    if kind == "model":
        raise ValueError("noise_source model is built per batch by the trainer (it needs logits)")
    if kind == "task":
        if task_noise is None:
            raise ValueError(
                "noise_source task needs the task's own mistakes, and this task defines none: "
                "use uniform, unigram or model"
            )
        return task_noise
    raise ValueError(f"unknown noise source {kind!r}; choose uniform, unigram or task")
