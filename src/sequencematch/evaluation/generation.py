"""Generation for evaluation: every prompt, in batches, over the valid vocabulary only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.causal_lm import valid_vocabulary
from ..core.sampling import GenerationOutput, generate
from ..core.traces import concatenate_outputs


def generate_batched(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    *,
    batch_size: int,
    seed: int = 0,
    **options: Any,
) -> GenerationOutput:
    """:func:`~sequencematch.core.sampling.generate` over ``prompts`` (token-id lists),
    ``batch_size`` rows at a time, the rows of all batches in order.

    Actions are the tokenizer's ids only (:func:`valid_vocabulary`): padding rows of the
    embedding matrix are never sampled, forced or part of the policy's normaliser. ``<eos>``
    is the tokenizer's. One generator seeded with ``seed`` drives sampling and noise over all
    batches, so results are reproducible for a given ``(seed, batch_size)``. ``options``
    are :func:`generate`'s other keyword arguments.
    """
    if not prompts:
        raise ValueError("no prompts to generate from")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = model.get_input_embeddings().weight.device
    generator = torch.Generator(device=device).manual_seed(seed)
    vocab_size = valid_vocabulary(model, tokenizer)
    parts = [
        generate(
            model, prompts[start : start + batch_size], eos_token_id=tokenizer.eos_token_id,
            generator=generator, vocab_size=vocab_size, **options,
        )  # fmt: skip
        for start in range(0, len(prompts), batch_size)
    ]  # fmt: skip
    return concatenate_outputs(parts)
