"""Noise drawn from the model's own next-token distribution (the ``model`` noise source).

One no-grad pass over a batch's clean rows gives the model's distribution in every data
state; the wrong tokens are sampled from it right there, on the model's device (Gumbel-max
over the logits, so a confident model with probabilities that underflow still samples
correctly). Only the sampled ids, ``[B, T, max_run]`` integers, leave the device.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from ..core.actions import collate
from ..core.examples import Example
from ..core.forward import state_logits


class ModelSampleNoise:
    """Wrong tokens the model itself would have sampled, for one data row (docs/method.md,
    "Noise rows").

    ``samples[t, k]`` is the ``k``-th wrong token of a run of noise inserted in the state
    after element ``t`` of the clean row ``prompt + completion``: ``k = 0`` is drawn from the
    model's distribution without the correct next token, later ones (inside a run, where no
    token is correct) from the whole distribution. A noise call finds its state by the
    longest common prefix with the clean row and its place in the run by how far the
    prefix runs past it.
    """

    def __init__(self, samples: torch.Tensor, clean_row: Sequence[int]) -> None:
        self.samples = samples.detach().to("cpu", torch.long)  # [T, K]
        self.clean_row = list(clean_row)

    def __call__(self, prefix: list[int], correct: int, rng: random.Random) -> int:
        shared = 0
        for mine, theirs in zip(prefix, self.clean_row, strict=False):
            if mine != theirs:
                break
            shared += 1
        state = max(shared, 1) - 1
        in_run = min(len(prefix) - shared, self.samples.shape[1] - 1)
        return int(self.samples[state, in_run])


def _gumbel_argmax(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One sample per row of ``softmax(logits)`` by Gumbel-max: ``[..., V] -> [...]``."""
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device)
    uniform = uniform.clamp(min=torch.finfo(uniform.dtype).tiny, max=1.0 - 1e-7)
    return (logits - torch.log(-torch.log(uniform))).argmax(dim=-1)


@torch.no_grad()
def model_noise_sources(
    model: PreTrainedModel,
    examples: Sequence[Example],
    *,
    pad_id: int,
    vocab_size: int,
    exclude: Sequence[int],
    max_run: int = 1,
    generator: torch.Generator | None = None,
) -> list[ModelSampleNoise]:
    """A :class:`ModelSampleNoise` per example from one no-grad pass over the clean rows.

    The pass runs in eval mode (no dropout; the mode is restored after). Only ids below
    ``vocab_size`` (the tokenizer's, without padding rows of the embedding matrix) and not
    in ``exclude`` (special tokens, ``<bkspc>``) can be drawn. ``generator`` lives on the
    model's device.
    """
    device = model.get_input_embeddings().weight.device
    batch = collate([e.prompt for e in examples], [e.completion for e in examples],
                    pad_id=pad_id).to(device)  # fmt: skip
    was_training = model.training
    model.eval()
    try:
        logits = state_logits(model, batch.sequences, batch.prompt_lengths, batch.lengths,
                              None, validate=False)  # fmt: skip
    finally:
        model.train(was_training)
    logits = logits[..., :vocab_size].float()  # [B, T, V] valid actions only
    banned = torch.tensor([i for i in exclude if 0 <= i < vocab_size], dtype=torch.long,
                          device=device)  # fmt: skip
    logits[..., banned] = float("-inf")
    later = [_gumbel_argmax(logits, generator) for _ in range(max_run - 1)]  # [B, T] each
    # the first wrong token of a run excludes the correct next token of the clean row
    following = batch.sequences[:, 1:].clamp(0, vocab_size - 1)  # [B, T-1]
    logits[:, :-1].scatter_(-1, following[..., None], float("-inf"))
    if not bool(torch.isfinite(logits).any(dim=-1).all()):
        raise ValueError(
            "model noise has no allowed wrong token in some state (every id is special, "
            "<bkspc> or the correct one): use noise_source uniform or a larger vocabulary"
        )
    first = _gumbel_argmax(logits, generator)  # [B, T]
    samples = torch.stack([first, *later], dim=-1).cpu()  # [B, T, K]
    return [
        ModelSampleNoise(samples[row, : int(batch.lengths[row])], [*e.prompt, *e.completion])
        for row, e in enumerate(examples)
    ]
