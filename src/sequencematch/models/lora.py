"""LoRA fine-tuning through ``peft``, with the ``<bkspc>`` row trainable.

As in the paper's QLoRA setting, adapters go on every linear layer of the transformer blocks
(the output head excluded). The base weights stay frozen, and so does the embedding, except
the ``<bkspc>`` row that :func:`~sequencematch.models.backspace.add_backspace` added: it has
no pretrained meaning, so it trains (peft's trainable-token rows; with tied input/output
embeddings the one row serves both). The wrapped model works with
:func:`~sequencematch.core.forward.state_logits`, :func:`~sequencematch.core.sampling.generate`
and the contract checks, which look through the wrapper.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase
from transformers.initialization import no_init_weights
from transformers.pytorch_utils import Conv1D

from ..core.causal_lm import backspace_id, causal_lm
from .loading import keep_four_bit_training_path

ADAPTER_FOLDER = "adapter"
"""Subfolder of a saved model folder that holds the LoRA adapter."""


def block_linear_names(model: PreTrainedModel) -> list[str]:
    """Names (last component) of every linear layer in the transformer blocks: all
    ``nn.Linear`` (4-bit ones included) and GPT-2 ``Conv1D`` modules except the output head."""
    head = model.get_output_embeddings()
    names = set()
    for name, module in model.named_modules():
        if module is head or not isinstance(module, (torch.nn.Linear, Conv1D)):
            continue
        names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def _embedding_name(model: PreTrainedModel, module: torch.nn.Module) -> str:
    """Last name component of ``module`` inside ``model``."""
    for name, candidate in model.named_modules():
        if candidate is module:
            return name.rsplit(".", 1)[-1]
    raise ValueError(f"{type(module).__name__} is not a module of {type(model).__name__}")


def _trainable_rows(model: PreTrainedModel, bkspc_id: int) -> dict[str, list[int]]:
    """peft's ``trainable_token_indices``: the ``<bkspc>`` row of the input embedding, and of
    the output head when it is not tied to the input embedding."""
    inputs = model.get_input_embeddings()
    rows = {_embedding_name(model, inputs): [bkspc_id]}
    head = model.get_output_embeddings()
    if head is not None and head.weight.data_ptr() != inputs.weight.data_ptr():
        rows[_embedding_name(model, head)] = [bkspc_id]
    return rows


def apply_lora(
    model: PreTrainedModel,
    r: int = 64,
    alpha: float = 16.0,
    dropout: float = 0.05,
    target_modules: Sequence[str] | None = None,
) -> PeftModel:
    """Wrap ``model`` (with ``<bkspc>`` already added) in LoRA adapters; returns the peft model.

    Args:
        model: a causal LM on which :func:`~sequencematch.models.backspace.add_backspace`
            ran; a 4-bit model (``load_model(..., load_in_4bit=True)``) gives QLoRA.
        r: rank of the adapters (the paper: 64).
        alpha: LoRA scaling numerator, the update is ``alpha / r * B @ A`` (the paper: 16).
        dropout: dropout on the adapters' input.
        target_modules: layer names to adapt; default :func:`block_linear_names`.

    Only the adapters and the ``<bkspc>`` embedding row (and its output row, if untied) train.
    """
    if r < 1 or alpha <= 0 or not 0.0 <= dropout < 1.0:
        raise ValueError(
            f"LoRA needs r >= 1, alpha > 0 and 0 <= dropout < 1; got r={r}, alpha={alpha}, "
            f"dropout={dropout}"
        )
    if isinstance(model, PeftModel):
        raise ValueError("the model already has adapters; apply_lora takes the base model")
    bkspc_id = backspace_id(model)
    if bkspc_id is None:
        raise ValueError("the model has no <bkspc> row: call add_backspace(model, tokenizer) first")
    targets = list(target_modules) if target_modules is not None else block_linear_names(model)
    if not targets:
        raise ValueError(f"{type(model).__name__} has no linear layers to adapt")
    fan_in_fan_out = any(
        isinstance(module, Conv1D) and name.rsplit(".", 1)[-1] in targets
        for name, module in model.named_modules()
    )  # GPT-2 stores its Conv1D weights transposed
    if getattr(model, "is_loaded_in_4bit", False):
        _refuse_repacked_four_bit(model)
        keep_four_bit_training_path(model)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        fan_in_fan_out=fan_in_fan_out,
        trainable_token_indices=_trainable_rows(model, bkspc_id),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def rebuilt_with(model: PeftModel, state: dict[str, torch.Tensor]) -> PeftModel:
    """A plain (unsharded, CPU) copy of the LoRA ``model`` holding ``state``, the full state
    dict of ``model`` (``state_dict`` names and shapes).

    peft saves and merges adapters from the parameters a model holds; a sharded model holds
    only its own slices, so its gathered state is put into a model of the same architecture
    and adapter layout built here (its random initialisation skipped: every parameter and
    persistent buffer is overwritten)."""
    base = causal_lm(model)
    dtype = next(base.parameters()).dtype
    with no_init_weights():
        plain = AutoModelForCausalLM.from_config(base.config, dtype=dtype)
        plain.tie_weights()  # (skipped with the initialisation)
        name = model.active_adapter
        rebuilt = get_peft_model(plain, copy.deepcopy(model.peft_config[name]), adapter_name=name)
    rebuilt.load_state_dict(state)
    _keep_original_rows(rebuilt)
    return rebuilt


def _keep_original_rows(model: PeftModel) -> None:
    """Set the trainable token rows' originals (a buffer that state dicts leave out, read
    when the rows are unmerged) from the base embedding, as peft sets them when it wraps it."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    for module in model.modules():
        if not isinstance(module, TrainableTokensLayer) or module.tied_adapter is not None:
            continue
        weight = module.get_base_layer().weight
        for name, rows in module.token_indices.items():
            module.trainable_tokens_original[name] = weight[rows].detach().clone()


def _refuse_repacked_four_bit(model: PreTrainedModel) -> None:
    """Refuse 4-bit weights already repacked for bitsandbytes' bf16 CPU inference kernel."""
    for name, module in model.named_modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if getattr(state, "packing_format_for_cpu", False):
            raise ValueError(
                f"the 4-bit weights of {name} were repacked for bitsandbytes' bf16 CPU inference "
                "kernel by an eval-mode forward, which trains with wrong gradients; load the "
                "model with load_model(..., load_in_4bit=True), which prevents the repacking"
            )


def load_adapter(
    model: PreTrainedModel, adapter_folder: str | Path, *, trainable: bool = False
) -> PeftModel:
    """Put a saved adapter (see :func:`merge_and_save`) back on its base model.

    ``model`` must be the base the adapter was trained on, with ``<bkspc>`` added the same way
    (:func:`~sequencematch.models.backspace.add_backspace` is deterministic); ``trainable``
    keeps training it.
    """
    folder = Path(adapter_folder)
    if not (folder / "adapter_config.json").is_file():
        raise ValueError(f"{folder} holds no LoRA adapter (no adapter_config.json)")
    if backspace_id(model) is None:
        raise ValueError("the base model has no <bkspc> row: call add_backspace first")
    return PeftModel.from_pretrained(model, folder, is_trainable=trainable)


def merge_and_save(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    folder: str | Path,
    *,
    adapter_folder: str | Path | None = None,
) -> Path:
    """Save a model that ``from_pretrained`` loads, plus its adapter; returns ``folder``.

    ``folder`` gets the merged model (adapters and the trained ``<bkspc>`` row folded into
    the weights, ``bkspc_token_id`` in its config) and the tokenizer. For a LoRA model the
    adapter alone goes to ``adapter_folder`` (default ``folder/adapter``), to be put back with
    :func:`load_adapter`. The model passed in is left as it was, adapters unmerged.
    A model without adapters is saved as it is. A 4-bit (QLoRA) base is de-quantised before
    merging, so the merged folder holds float weights.
    """
    folder = Path(folder)
    if not isinstance(model, PeftModel):
        causal_lm(model).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder
    adapter = Path(adapter_folder) if adapter_folder is not None else folder / ADAPTER_FOLDER
    model.save_pretrained(adapter, save_embedding_layers=False)
    merged = _merged_copy(model)
    merged.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _merged_copy(model: PeftModel) -> PreTrainedModel:
    """A plain model with the adapters of ``model`` merged in (``model`` is not changed)."""
    base = model.get_base_model()
    if getattr(base, "is_loaded_in_4bit", False):
        return _merged_four_bit(model)
    return copy.deepcopy(model).merge_and_unload()


def _merged_four_bit(model: PeftModel) -> PreTrainedModel:
    """Merge a QLoRA model into float weights: each 4-bit layer with an adapter becomes a float
    ``nn.Linear`` holding de-quantised weight + LoRA update (merging into 4-bit weights, as
    peft would, rounds the update away); the ``<bkspc>`` row is merged as usual."""
    from bitsandbytes.functional import dequantize_4bit
    from peft.tuners.lora import LoraLayer

    copied = copy.deepcopy(model)
    base = copied.get_base_model()
    for name, module in list(base.named_modules()):
        if not isinstance(module, LoraLayer):
            continue
        layer = module.get_base_layer()
        if not hasattr(layer.weight, "quant_state"):
            continue
        weight = dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
        for adapter in module.active_adapters:
            weight = weight + module.get_delta_weight(adapter).float()  # [out, in]
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None)
        linear = linear.to(weight.device)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if layer.bias is not None:
                linear.bias.copy_(layer.bias.float())
        parent_name, _, child = name.rpartition(".")
        setattr(base.get_submodule(parent_name), child, linear)
    base.hf_quantizer.remove_quantization_config(base)
    for attribute in ("is_loaded_in_4bit", "is_loaded_in_8bit"):
        if hasattr(base, attribute):
            setattr(base, attribute, False)
    return copied.merge_and_unload().float()
