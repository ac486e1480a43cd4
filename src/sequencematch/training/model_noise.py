"""Noise drawn from the model's own next-token distribution (the ``model`` noise source).

One no-grad pass over a batch's clean rows gives the model's distribution in every data
state; the first wrong token of a run is sampled from it right there, on the model's device
(Gumbel-max over the logits, so a confident model with probabilities that underflow still
samples correctly). Each later token of a run is drawn from the state the run has reached:
one more no-grad pass per extra token, over every state of the batch at once (each state's
run so far is appended to the clean rows behind a mask). Only the sampled ids,
``[B, T, max_run]`` integers, leave the device.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from ..core.actions import collate
from ..core.causal_lm import causal_lm
from ..core.examples import Example
from ..core.forward import model_mask, state_logits, takes_logits_to_keep


class ModelSampleNoise:
    """Wrong tokens the model itself would have sampled, for one data row (docs/method.md,
    "Noise rows").

    ``samples[t, k]`` is the ``k``-th wrong token of a run of noise inserted in the state
    after element ``t`` of the clean row ``prompt + completion``: ``k = 0`` is drawn from the
    model's distribution without the correct next token, later ones (inside a run, where no
    token is correct) from the whole distribution in the state the run has reached (element
    ``t`` followed by ``samples[t, :k]``). A noise call finds its state by the
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


def _run_mask(length: int, blocks: int, device: torch.device) -> torch.Tensor:
    """``[L, L]`` boolean attention of clean rows of ``length`` elements followed by
    ``blocks`` run blocks (``L = (blocks + 1) * length``): the clean part is causal; element
    ``t`` of block ``j`` (the ``j``-th run token inserted after clean element ``t``) sees the
    clean elements up to ``t`` and element ``t`` of blocks ``1 .. j``."""
    index = torch.arange(length, device=device)
    causal = index[None, :] <= index[:, None]  # [T, T]
    same = torch.eye(length, dtype=torch.bool, device=device)  # [T, T]
    rows = []
    for query in range(blocks + 1):
        parts = [causal] + [same if key <= query else torch.zeros_like(same)
                            for key in range(1, blocks + 1)]  # fmt: skip
        rows.append(torch.cat(parts, dim=1))  # [T, L]
    return torch.cat(rows, dim=0)  # [L, L]


def run_state_logits(
    model: PreTrainedModel, sequences: torch.Tensor, lengths: torch.Tensor, runs: torch.Tensor
) -> torch.Tensor:
    """Logits of the state after each clean element followed by its run of tokens.

    Args:
        model: a causal LM (eager or SDPA attention), or a wrapper of one.
        sequences: ``[B, T]`` clean rows, right-padded.
        lengths: ``[B]`` real length of each row (the runs of padding states get junk
            logits, at position 0, so that no position exceeds those of real noisy rows).
        runs: ``[B, T, J]`` with ``J >= 1``: ``runs[b, t]`` is inserted after element ``t``.

    Returns:
        ``[B, T, V]``: entry ``[b, t]`` is the logits of a plain forward over
        ``sequences[b, : t + 1]`` followed by ``runs[b, t]``, in one pass over the clean rows
        and the ``J`` run blocks (element ``t`` of block ``j`` at position ``t + j``).
    """
    batch, length = sequences.shape
    blocks = runs.shape[-1]
    device = sequences.device
    input_ids = torch.cat([sequences, *runs.unbind(-1)], dim=1)  # [B, L]
    index = torch.arange(length, device=device)
    real = index[None, :] < lengths[:, None]  # [B, T]
    positions = torch.cat([(index + block) * real for block in range(blocks + 1)], dim=1)  # [B, L]
    mask = _run_mask(length, blocks, device).expand(batch, -1, -1)  # [B, L, L]
    keep = {"logits_to_keep": length} if takes_logits_to_keep(model) else {}
    output = model(
        input_ids=input_ids,
        attention_mask=model_mask(causal_lm(model), mask),
        position_ids=positions,
        use_cache=False,
        **keep,
    )
    return output.logits[:, -length:]  # [B, T, V]: the last run block


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
    """A :class:`ModelSampleNoise` per example: one no-grad pass over the clean rows, plus
    one pass per later token of a run (``max_run - 1`` of them, over every state at once).

    The passes run in eval mode (no dropout; the mode is restored after). Only ids below
    ``vocab_size`` (the tokenizer's, without padding rows of the embedding matrix) and not
    in ``exclude`` (special tokens, ``<bkspc>``) can be drawn. ``generator`` lives on the
    model's device.
    """
    device = model.get_input_embeddings().weight.device
    batch = collate([e.prompt for e in examples], [e.completion for e in examples],
                    pad_id=pad_id).to(device)  # fmt: skip
    banned = torch.tensor([i for i in exclude if 0 <= i < vocab_size], dtype=torch.long,
                          device=device)  # fmt: skip

    def allowed(logits: torch.Tensor) -> torch.Tensor:
        """``[B, T, V]`` float logits of the valid, not excluded actions (others -inf)."""
        logits = logits[..., :vocab_size].float()
        logits[..., banned] = float("-inf")
        return logits

    was_training = model.training
    model.eval()
    try:
        logits = allowed(state_logits(model, batch.sequences, batch.prompt_lengths,
                                      batch.lengths, None, validate=False))  # fmt: skip
        # the first wrong token of a run excludes the correct next token of the clean row
        following = batch.sequences[:, 1:].clamp(0, vocab_size - 1)  # [B, T-1]
        logits[:, :-1].scatter_(-1, following[..., None], float("-inf"))
        if not bool(torch.isfinite(logits).any(dim=-1).all()):
            raise ValueError(
                "model noise has no allowed wrong token in some state (every id is special, "
                "<bkspc> or the correct one): use noise_source uniform or a larger vocabulary"
            )
        run = [_gumbel_argmax(logits, generator)]  # K tensors [B, T]
        for _ in range(max_run - 1):
            after = run_state_logits(
                model, batch.sequences, batch.lengths, torch.stack(run, dim=-1)
            )
            run.append(_gumbel_argmax(allowed(after), generator))  # [B, T]
    finally:
        model.train(was_training)
    samples = torch.stack(run, dim=-1).cpu()  # [B, T, K]
    return [
        ModelSampleNoise(samples[row, : int(batch.lengths[row])], [*e.prompt, *e.completion])
        for row, e in enumerate(examples)
    ]
