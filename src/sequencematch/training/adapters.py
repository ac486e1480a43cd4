"""How the trainer adapts a model: full fine-tuning, or LoRA adapters (``lora_r > 0``)."""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor, distribute_tensor
from transformers.pytorch_utils import Conv1D

from ..models.memory import set_gradient_checkpointing
from .checkpoints import is_lora_model
from .options import ModelOptions


def adapt_model(
    model: torch.nn.Module, config: ModelOptions, bkspc_id: int | None
) -> torch.nn.Module:
    """``model`` ready to train as ``config`` says: wrapped in LoRA adapters when
    ``lora_r > 0`` (the ``<bkspc>`` row trains with them), with gradient checkpointing when
    asked. Call after ``add_backspace``; the optimiser takes the trainable parameters."""
    if config.lora_r > 0:
        try:  # peft is an optional dependency (the "pretrained" extra)
            from ..models.lora import apply_lora, block_linear_names
        except ImportError as error:
            raise ValueError(
                "lora_r > 0 needs the peft package: pip install 'sequencematch[pretrained]'"
            ) from error
        targets = config.lora_target_names()
        if bkspc_id is not None:
            model = apply_lora(model, config.lora_r, config.lora_alpha, config.lora_dropout,
                               targets)  # fmt: skip
        else:  # no <bkspc> row to train: adapters only
            model = _plain_lora(model, config, targets or block_linear_names(model))
    if config.gradient_checkpointing:
        set_gradient_checkpointing(model)
    return model


def _plain_lora(
    model: torch.nn.Module, config: ModelOptions, targets: list[str]
) -> torch.nn.Module:
    """LoRA adapters on ``targets`` (layer names) and nothing else trainable."""
    from peft import LoraConfig, get_peft_model

    fan_in_fan_out = any(
        isinstance(module, Conv1D) and name.rsplit(".", 1)[-1] in targets
        for name, module in model.named_modules()
    )  # GPT-2 stores its Conv1D weights transposed
    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=targets, fan_in_fan_out=fan_in_fan_out, task_type="CAUSAL_LM",
    )  # fmt: skip
    return get_peft_model(model, lora)


def saved_form(model: torch.nn.Module, weights: dict[str, torch.Tensor] | None) -> torch.nn.Module:
    """The model a checkpoint or the final save writes: ``model`` itself, or, for a sharded
    LoRA model, an unsharded copy holding ``weights`` (its gathered full state dict), since
    peft saves and merges adapters from the tensors a model holds."""
    if weights is None or not is_lora_model(model):
        return model
    from ..models.lora import rebuilt_with

    return rebuilt_with(model, weights)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the trainable parameters by name: what a LoRA checkpoint must hold (the
    frozen base is rebuilt from the run's ``model`` option)."""
    return {
        name: parameter.detach().cpu().clone()
        for name, parameter in model.named_parameters()
        if parameter.requires_grad
    }


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put :func:`trainable_state` back; refuses a state of another adapter layout."""
    parameters = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(parameters) != set(state):
        missing = sorted(set(parameters) ^ set(state))[:3]
        raise ValueError(
            f"the checkpoint's trainable parameters do not match this model's ({missing} ...); "
            "resume with the run's own model and LoRA options"
        )
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(_placed_like(parameter, state[name]))


def _placed_like(parameter: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` (a full tensor) laid out as ``parameter``: for a sharded parameter, this
    process's slice of it (every process holds the full value, so nothing is sent)."""
    if not isinstance(parameter, DTensor):
        return value
    return distribute_tensor(
        value.to(parameter.device), parameter.device_mesh, parameter.placements,
        src_data_rank=None,
    )  # fmt: skip
