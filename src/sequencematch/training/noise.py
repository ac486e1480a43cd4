"""Noise sources by name: uniform, corpus unigram, the task's own mistakes (passed in), or a
mixture of them (``task+uniform``)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from ..core.actions import NoiseSource, UniformNoise, UnigramNoise
from ..core.examples import Example, special_ids
from .options import noise_source_parts


class MixtureNoise:
    """Each wrong token from one of ``sources``, chosen uniformly at random.

    The choice and the draw both use the caller's ``rng``, so a seeded augmentation stays
    deterministic; every source excludes the correct token, so the mixture does too. Listing
    garbage (``uniform``) beside plausible mistakes (``task``) teaches deleting both the
    near misses of greedy decoding and the off-distribution tokens that sampling from a
    large vocabulary reaches."""

    def __init__(self, sources: Sequence[NoiseSource]) -> None:
        if len(sources) < 2:
            raise ValueError(f"a noise mixture needs at least two sources, got {len(sources)}")
        self.sources = list(sources)

    def __call__(self, prefix: list[int], correct: int, rng: random.Random) -> int:
        source = self.sources[rng.randrange(len(self.sources))]
        return source(prefix, correct, rng)


def build_noise_source(
    kind: str,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    vocab_size: int,
    exclude: Sequence[int] = (),
    task_noise: NoiseSource | None = None,
) -> NoiseSource:
    """The noise source named in the configuration (``uniform``, ``unigram``, ``task``, or a
    ``+``-joined mixture of them such as ``task+uniform``: a :class:`MixtureNoise`); special
    tokens and ``exclude`` (e.g. ``<bkspc>``) are never drawn. ``task`` is the task's own
    source of plausible mistakes, ``task_noise``, which the task provides.

    ``vocab_size`` is the number of valid ids, ``len(tokenizer)``: only ids below it are drawn,
    never the padding rows of an embedding matrix padded beyond the tokenizer."""
    if vocab_size > len(tokenizer):
        raise ValueError(
            f"vocab_size {vocab_size} exceeds the tokenizer's {len(tokenizer)} entries: pass "
            "len(tokenizer) so that padding rows of the embedding matrix are never noise"
        )
    parts = noise_source_parts(kind)
    if len(parts) > 1:
        return MixtureNoise([
            build_noise_source(part, tokenizer, examples, vocab_size, exclude, task_noise)
            for part in parts
        ])  # fmt: skip
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
