"""The new ``<bkspc>`` action's output row: a linear-probe start and its own learning rate.

A pretrained model has no row for ``<bkspc>``; :func:`~sequencematch.models.backspace.add_backspace`
starts it at the mean embedding. Trained at the body's learning rate, that row moves about
``lr`` per coordinate per step, so raising ``logit_bk - logit_a = h . (w_bk - w_a)`` has to
come from moving the hidden state ``h`` instead: fine-tuning then distorts the pretrained
features and flattens the policy (docs/method.md, "The <bkspc> row"; Kumar et al. 2022,
"Fine-Tuning can Distort Pretrained Features": linear probing, then fine-tuning).

:func:`probe_bkspc_row` fits the row alone, body frozen, on the noise-augmented training rows
(the MLE objective of those rows as a function of the row: a multinomial logistic
regression on cached features), before any weight of the body moves.
:class:`RowLearningRate` lets the row keep a learning rate of its own during fine-tuning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.distributed.tensor import DTensor, Shard

from ..core.actions import Batch
from ..core.causal_lm import causal_lm
from ..core.forward import chunked_state_logits
from ..core.layout import visible_lengths


@dataclass(frozen=True)
class ProbeFeatures:
    """What the probe needs of every expert transition of some data rows, ``N`` of them.

    Attributes:
        hidden: ``[N, H]`` float32 last hidden state of the state the action is taken in.
        other_lse: ``[N]`` logsumexp of the logits of every valid action but ``<bkspc>``.
        action_logit: ``[N]`` logit of the expert action (unused where it is ``<bkspc>``).
        is_bkspc: ``[N]`` the expert action is ``<bkspc>`` (a noise state).
        can_delete: ``[N]`` ``<bkspc>`` is valid (a generated token is visible).
    """

    hidden: torch.Tensor
    other_lse: torch.Tensor
    action_logit: torch.Tensor
    is_bkspc: torch.Tensor
    can_delete: torch.Tensor

    @staticmethod
    def concatenate(parts: Sequence[ProbeFeatures]) -> ProbeFeatures:
        return ProbeFeatures(
            *(
                torch.cat([getattr(p, name) for p in parts])
                for name in ProbeFeatures.__annotations__
            )
        )


@torch.no_grad()
def probe_features(
    model: torch.nn.Module,
    batch: Batch,
    bkspc_id: int,
    vocab_size: int,
    body_dtype: torch.dtype | None = None,
) -> ProbeFeatures:
    """One no-grad forward of ``batch`` (one-pass layout) reduced to :class:`ProbeFeatures`."""
    chunked = chunked_state_logits(
        model, batch.sequences, batch.prompt_lengths, batch.lengths, bkspc_id,
        validate=False, body_dtype=body_dtype,
    )  # fmt: skip
    time = batch.sequences.shape[1]
    index = torch.arange(time, device=batch.sequences.device)  # [T]
    prompt = batch.prompt_lengths[:, None]  # [B, 1]
    action = (index >= prompt) & (index < batch.lengths[:, None])  # [B, T]
    expert = action & batch.expert  # [B, T] transitions the MLE objective averages
    depths = visible_lengths(batch.sequences, batch.prompt_lengths, batch.lengths, bkspc_id)
    rows, columns = expert.nonzero(as_tuple=True)  # the action elements
    states = columns - 1  # the state each action is taken in
    hidden = chunked.hidden[rows, states].float()  # [N, H]
    head = causal_lm(model).get_output_embeddings()
    bias = None if getattr(head, "bias", None) is None else head.bias.float()
    logits = torch.nn.functional.linear(hidden, head.weight.float(), bias)[:, :vocab_size]  # [N, V]
    actions = batch.sequences[rows, columns]  # [N]
    other = logits.clone()
    other[:, bkspc_id] = float("-inf")
    return ProbeFeatures(
        hidden=hidden,
        other_lse=torch.logsumexp(other, dim=-1),
        action_logit=logits.gather(-1, actions[:, None]).squeeze(-1),
        is_bkspc=actions == bkspc_id,
        can_delete=depths[rows, states] > batch.prompt_lengths[rows],
    )


def _log_likelihoods(
    features: ProbeFeatures, row: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log pi(expert action | s)`` and ``log pi(<bkspc> | s)`` for a candidate row, ``[N]``."""
    logit = features.hidden @ row + (0.0 if bias is None else bias)  # [N] <bkspc> logit
    logit = torch.where(features.can_delete, logit, float("-inf"))
    normaliser = torch.logaddexp(features.other_lse, logit)  # [N]
    taken = torch.where(features.is_bkspc, logit, features.action_logit)
    return taken - normaliser, logit - normaliser


def probe_bkspc_row(
    model: torch.nn.Module,
    features: ProbeFeatures,
    bkspc_id: int,
    *,
    steps: int,
    lr: float,
) -> dict[str, float]:
    """Fit the ``<bkspc>`` output row (and its bias, where the head has one) to the expert
    transitions of ``features`` with Adam, every other weight fixed; write it into ``model``.

    Returns the probe's statistics before and after: the NLL of the transitions, the mean
    ``P(<bkspc>)`` at noise states (where the expert deletes) and at the other states where
    ``<bkspc>`` is valid.
    """
    head = causal_lm(model).get_output_embeddings()
    weight = head.weight
    row = weight[bkspc_id].detach().float().clone().requires_grad_()  # [H]
    head_bias = getattr(head, "bias", None)
    bias = None
    if head_bias is not None:
        bias = head_bias[bkspc_id].detach().float().clone().requires_grad_()
    parameters = [row] + ([bias] if bias is not None else [])
    optimiser = torch.optim.Adam(parameters, lr=lr)
    stats = {f"probe/{k}_before": v for k, v in _statistics(features, row, bias).items()}
    for _ in range(steps):
        optimiser.zero_grad()
        taken, _ = _log_likelihoods(features, row, bias)
        (-taken.mean()).backward()
        optimiser.step()
    with torch.no_grad():
        weight[bkspc_id] = row.to(weight.dtype)  # tied embeddings: the input row too
        if bias is not None:
            head_bias[bkspc_id] = bias.to(head_bias.dtype)
    stats |= {f"probe/{k}_after": v for k, v in _statistics(features, row, bias).items()}
    return stats


@torch.no_grad()
def _statistics(
    features: ProbeFeatures, row: torch.Tensor, bias: torch.Tensor | None
) -> dict[str, float]:
    taken, bkspc = _log_likelihoods(features, row, bias)
    noise = features.is_bkspc
    clean = features.can_delete & ~noise

    def mean_probability(where: torch.Tensor) -> float:
        return float(bkspc[where].exp().mean()) if bool(where.any()) else float("nan")

    return {
        "nll": float(-taken.mean()),
        "p_bkspc_noise": mean_probability(noise),
        "p_bkspc_clean": mean_probability(clean),
    }


class RowLearningRate:
    """Give one row of the embedding (the ``<bkspc>`` row) its own learning rate under AdamW.

    Adam's step does not scale with the gradient, so a row cannot be sped up by scaling its
    gradient. Instead :meth:`before_step` keeps the row and :meth:`after_step` rescales the
    optimiser's update of it by ``row_lr / lr``: exactly AdamW with a per-row learning rate
    (weight decay included), on the same schedule as the rest. Under FSDP the embedding is
    sharded by rows: the process that holds the row rescales it, the others have nothing to do.
    """

    def __init__(self, model: torch.nn.Module, row: int, scale: float) -> None:
        head = causal_lm(model).get_output_embeddings().weight
        inputs = causal_lm(model).get_input_embeddings().weight
        weights = [head] if head is inputs else [head, inputs]  # tied: one parameter
        held = [_held_row(weight, row) for weight in weights]
        self.rows = [found for found in held if found is not None]  # (tensor, index) here
        self.scale = scale
        self._kept: list[torch.Tensor] = []

    @torch.no_grad()
    def before_step(self) -> None:
        self._kept = [tensor[index].clone() for tensor, index in self.rows]

    @torch.no_grad()
    def after_step(self) -> None:
        for (tensor, index), kept in zip(self.rows, self._kept, strict=True):
            tensor[index] = kept + (tensor[index] - kept) * self.scale
        self._kept = []


@torch.no_grad()
def _held_row(weight: torch.Tensor, row: int) -> tuple[torch.Tensor, int] | None:
    """The tensor on this process that holds ``row`` of ``weight`` and the row's index in it;
    ``None`` when another process holds it (FSDP2 shards dim 0 in ``torch.chunk`` pieces)."""
    if not isinstance(weight, DTensor):
        return weight, row
    if tuple(weight.placements) != (Shard(0),):
        raise ValueError(f"bkspc_row_lr: unexpected sharding of the embedding {weight.placements}")
    local = weight.to_local()  # [rows held here, H], the parameter's own storage
    per_process = -(-weight.shape[0] // weight.device_mesh.size())  # ceil(rows / processes)
    start = weight.device_mesh.get_local_rank() * per_process
    return (local, row - start) if start <= row < start + local.shape[0] else None
