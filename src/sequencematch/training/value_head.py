"""A learned per-state value offset ``b(s)`` for reading a pretrained model's logits as Q.

A pretrained model's logits carry an arbitrary per-state level (their log-sum-exp, ~9-28 on
SmolLM2-135M) that the SequenceMatch terms read as value; flattening it through the shared
network moves the policy too (docs/method.md, "Reading logits as Q"). ``b(s)`` is a
zero-initialised linear head on
the detached last hidden state: the chi2 regulariser and the value term can be met by ``b``
while the policy ``softmax(logits)`` never sees it (``b`` cancels in it and in the MLE
identity). It lives beside the model, is trained by its own optimiser group, and is saved in
checkpoints only: the saved model is the policy alone.
"""

from __future__ import annotations

import torch

from ..models.loading import PRESETS
from .distributed import World

READINGS = ("none", "offset", "normalised")
"""How the SequenceMatch terms read Q from the logits (``TrainConfig.value_head``)."""


def q_reading(value_head: str, model: str) -> str:
    """The reading a run uses: ``value_head`` itself, or for ``auto`` plain logits on a model
    trained from scratch in this run (a preset: its logit levels are learned under
    SequenceMatch's own terms) and ``normalised`` on a loaded one (pretrained, or a model
    folder an earlier run saved), whose logit levels the value terms would otherwise read
    as value (measured in docs/RESULTS.md). Only ``model`` decides: a preset name or not."""
    if value_head != "auto":
        return value_head
    return "none" if model in PRESETS else "normalised"


class ValueHead(torch.nn.Module):
    """``b(s) = w . h(s) + c`` on the last hidden state ``h`` (no gradient into the model)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[B, T, H]`` hidden states -> ``[B, T]`` float32 offsets."""
        return self.linear(hidden.detach().float()).squeeze(-1)  # [B, T]


def hidden_size(model: torch.nn.Module) -> int:
    """Width of the hidden state the LM head reads (the input of its weight)."""
    return int(model.get_output_embeddings().weight.shape[1])


def average_gradients(head: ValueHead, world: World) -> bool:
    """Average the head's gradients over processes (it is outside DDP/FSDP, and not part of
    the model's clipped norm); return whether they are all finite."""
    for parameter in head.parameters():
        if parameter.grad is None:
            continue
        if world.size > 1:
            torch.distributed.all_reduce(parameter.grad)
            parameter.grad /= world.size
        if not bool(torch.isfinite(parameter.grad).all()):
            return False
    return True
