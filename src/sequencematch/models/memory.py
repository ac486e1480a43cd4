"""Gradient checkpointing of the transformer blocks: trade compute for activation memory.

A checkpointed block keeps only its input for the backward pass and runs its forward again
there; activations then take ``layers x tokens x hidden`` instead of a dozen tensors of that
size per layer, for about one more forward pass of compute. It acts in training mode with
gradients on (sampling and evaluation run as before) and gives the same gradients.
"""

from __future__ import annotations

import torch

from ..core.causal_lm import causal_lm


def set_gradient_checkpointing(
    model: torch.nn.Module, enabled: bool = True, *, every_n_layers: int = 1
) -> None:
    """Turn gradient checkpointing of the blocks of ``model`` on or off.

    Args:
        model: a Hugging Face causal LM, or a DDP or peft (LoRA) wrapper of one.
        enabled: ``True`` to checkpoint, ``False`` to keep every activation again.
        every_n_layers: checkpoint every n-th block only (``1``: all of them), keeping the
            activations of the others (less memory saved, less recomputed).

    Uses non-reentrant checkpointing, which works with LoRA's frozen base weights and with
    the one-pass 4-D attention mask. Raises ValueError for a model that does not support it.
    """
    core = causal_lm(model)
    if not getattr(core, "supports_gradient_checkpointing", False):
        raise ValueError(
            f"{type(core).__name__} does not support gradient checkpointing of its blocks; "
            "train it without, or with a smaller batch"
        )
    if not isinstance(every_n_layers, int) or every_n_layers < 1:
        raise ValueError(f"every_n_layers must be a positive integer, got {every_n_layers!r}")
    if not enabled:
        if hasattr(core, "activation_checkpointing_disable"):
            core.activation_checkpointing_disable()
        else:  # transformers before the activation_* names
            core.gradient_checkpointing_disable()
        return
    kwargs = {"use_reentrant": False}
    if hasattr(core, "activation_checkpointing_enable"):
        core.activation_checkpointing_enable(
            activation_checkpointing_kwargs=kwargs, every_n_layers=every_n_layers
        )
    elif every_n_layers == 1:
        core.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise ValueError(
            "every_n_layers needs transformers' activation_checkpointing_enable (5.24 or later)"
        )


def gradient_checkpointing_enabled(model: torch.nn.Module) -> bool:
    """Whether any block of ``model`` is checkpointed."""
    return any(
        getattr(module, "gradient_checkpointing", False) for module in causal_lm(model).modules()
    )
