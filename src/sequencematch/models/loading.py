"""One entry point for every model: a tiny preset, a named pretrained model, a Hugging Face
model folder or a ``.gguf`` file, in an explicit dtype, with the tokenizer that belongs to it.

The dtype is always passed to ``from_pretrained``: transformers 5 otherwise keeps a checkpoint
in the dtype it was saved in (a bf16 checkpoint would train bf16 weights with no float32
master copy), and the loaded parameters are checked against the dtype asked for. Nothing is
fetched from a model hub: named pretrained models come from a package index (see
:mod:`sequencematch.models.pretrained`).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..core.causal_lm import SUPPORTED_ATTENTION
from .gguf import load_gguf
from .pickled_weights import refused_pickles_in_one_line
from .presets import tiny_model
from .pretrained import PRETRAINED, pretrained_folder

PRESETS = ("tiny_gpt2", "tiny_llama")

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float64": torch.float64,
}

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
"""Files a tokenizer is built from (``tokenizer_config.json`` alone is not enough)."""


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype from its name (``"float32"``, ``"bf16"``, ...) or itself."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype {dtype} is not a floating dtype; use one of {_names()}")
        return dtype
    resolved = DTYPES.get(str(dtype).lower())
    if resolved is None:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {_names()}")
    return resolved


def _names() -> str:
    return ", ".join(DTYPES)


def model_source(name_or_path: str | Path) -> str:
    """What ``name_or_path`` names: ``"preset"``, ``"pretrained"``, ``"gguf"`` or ``"folder"``.

    Raises ValueError, saying what is accepted, for anything else.
    """
    text = str(name_or_path)
    if text in PRESETS:
        return "preset"
    if text.lower() in PRETRAINED:
        return "pretrained"
    path = Path(text).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ValueError(f"GGUF file {path} does not exist")
        return "gguf"
    if path.is_dir():
        return "folder"
    raise ValueError(
        f"model {text!r} is neither a preset ({', '.join(PRESETS)}), a known pretrained model "
        f"({', '.join(sorted(PRETRAINED))}), a model folder nor a .gguf file; pass one of those "
        "(nothing is downloaded from a model hub)"
    )


def load_model(
    name_or_path: str | Path,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    dtype: str | torch.dtype = "float32",
    attn_implementation: str = "sdpa",
    preset_overrides: Mapping[str, int | float] | None = None,
    load_in_4bit: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model named by ``name_or_path`` and its tokenizer.

    Args:
        name_or_path: a preset (``tiny_gpt2``, ``tiny_llama``: a small random model), a named
            pretrained model (``smollm2-135m``, converted and cached on first use), a folder
            written by ``save_pretrained``, or a ``.gguf`` file.
        tokenizer: for a preset, the tokenizer the random model is built for (required); for
            any other model, a replacement for the tokenizer saved with it (by default the
            model's own is loaded: a pretrained model keeps its vocabulary).
        dtype: the dtype of the parameters (``"float32"``, ``"bfloat16"``, ``"float16"``,
            ``"float64"``), passed explicitly to ``from_pretrained`` and checked afterwards.
        attn_implementation: ``"sdpa"`` or ``"eager"`` (both follow the backspace layout).
        preset_overrides: config fields of a preset (``hidden_size``, ``num_hidden_layers``...).
        load_in_4bit: quantise the linear layers of the blocks to 4-bit NF4 (QLoRA's base
            weights, through ``bitsandbytes``), computing in ``dtype``; pretrained weights only.
        log: where progress messages of a first conversion go.

    Returns:
        ``(model, tokenizer)``; ``<bkspc>`` is not added (see
        :func:`~sequencematch.models.backspace.add_backspace`).
    """
    source = model_source(name_or_path)
    torch_dtype = resolve_dtype(dtype)
    if attn_implementation not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"attn_implementation {attn_implementation!r} cannot follow the per-row 4-D mask "
            f"that <bkspc> needs; use one of {', '.join(SUPPORTED_ATTENTION)}"
        )
    if source == "preset":
        model, tokenizer = _load_preset(
            str(name_or_path), tokenizer, torch_dtype, attn_implementation, preset_overrides,
            load_in_4bit,
        )  # fmt: skip
    else:
        if preset_overrides:
            raise ValueError(
                f"preset_overrides apply to presets ({', '.join(PRESETS)}) only; {name_or_path!r} "
                "has its own config"
            )
        if source == "gguf":
            if load_in_4bit:
                raise ValueError(
                    "load_in_4bit reads a model folder; load the .gguf file once, save it with "
                    "save_pretrained(folder) and load that folder with load_in_4bit=True"
                )
            model, own = load_gguf(
                name_or_path, dtype=torch_dtype, attn_implementation=attn_implementation
            )
        else:
            folder = Path(name_or_path).expanduser()
            if source == "pretrained":
                folder = pretrained_folder(str(name_or_path), log=log)
            model, own = _load_folder(
                folder, torch_dtype, attn_implementation, load_in_4bit, tokenizer is None
            )
        tokenizer = _matching_tokenizer(model, tokenizer, own, name_or_path)
    check_parameter_dtype(model, torch_dtype)
    return model, tokenizer


def _load_preset(
    preset: str,
    tokenizer: PreTrainedTokenizerBase | None,
    dtype: torch.dtype,
    attn_implementation: str,
    overrides: Mapping[str, int | float] | None,
    load_in_4bit: bool,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A random preset model built for ``tokenizer``."""
    if tokenizer is None:
        raise ValueError(
            f"preset {preset!r} is a random model built for a tokenizer: pass tokenizer=... "
            "(e.g. char_tokenizer(alphabet) or a BPE trained on the data)"
        )
    if load_in_4bit:
        raise ValueError(
            f"load_in_4bit quantises pretrained weights; preset {preset!r} is a random model "
            "trained from scratch: load it without load_in_4bit"
        )
    overrides = dict(overrides or {})
    model = tiny_model(preset, tokenizer, attn_implementation=attn_implementation, **overrides)
    return model.to(dtype), tokenizer


def _load_folder(
    folder: Path,
    dtype: torch.dtype,
    attn_implementation: str,
    load_in_4bit: bool,
    needs_tokenizer: bool,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    """Model (and, when asked, tokenizer) saved in a Hugging Face model folder."""
    if not (folder / "config.json").is_file():
        hint = (
            "it holds a LoRA adapter (adapter_config.json): load the merged model folder "
            "saved beside it"
            if (folder / "adapter_config.json").is_file()
            else "save one with model.save_pretrained(folder)"
        )
        raise ValueError(f"folder {folder} holds no config.json, so no model: {hint}")
    if needs_tokenizer and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(
            f"folder {folder} has no tokenizer (no tokenizer.json, tokenizer.model or vocab "
            "file): save the "
            "tokenizer with tokenizer.save_pretrained(folder), or pass tokenizer=..."
        )
    extra = {"quantization_config": _four_bit_config(dtype)} if load_in_4bit else {}
    with refused_pickles_in_one_line(folder):
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            dtype=dtype,
            attn_implementation=attn_implementation,
            local_files_only=True,
            **extra,
        )
    if load_in_4bit:
        keep_four_bit_training_path(model)
    tokenizer = AutoTokenizer.from_pretrained(folder) if needs_tokenizer else None
    return model, tokenizer


def keep_four_bit_training_path(model: torch.nn.Module) -> None:
    """Keep every bitsandbytes 4-bit layer on its training kernel.

    On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight for a bf16 inference kernel
    at the first forward in eval mode without gradients (as sampling runs), and from then on
    uses that kernel for every forward, training ones included; it computes in bf16 and passes
    no gradient back through the frozen layer, so the LoRA gradients of all earlier layers come
    out wrong. With repacking off, sampling and training compute the same float function.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _four_bit_config(dtype: torch.dtype) -> BitsAndBytesConfig:
    """QLoRA's base-weight quantisation: NF4 with double quantisation, computing in ``dtype``."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(
            "load_in_4bit needs the bitsandbytes package: pip install 'sequencematch[qlora]' "
            "(its CPU backend works on x86-64 and ARM; GPUs need a CUDA, ROCm or XPU build)"
        )
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )


def _matching_tokenizer(
    model: PreTrainedModel,
    given: PreTrainedTokenizerBase | None,
    own: PreTrainedTokenizerBase | None,
    name_or_path: str | Path,
) -> PreTrainedTokenizerBase:
    """The given tokenizer if it fits the model's embedding, else the model's own."""
    tokenizer = given if given is not None else own
    assert tokenizer is not None  # the folder loader loads one whenever none is given
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but {name_or_path!r} has {rows} embedding "
            "rows; use the tokenizer saved with the model"
        )
    return tokenizer


def check_parameter_dtype(model: torch.nn.Module, dtype: str | torch.dtype) -> None:
    """Raise ValueError unless every floating parameter is in ``dtype``.

    Parameters that the model class deliberately keeps in float32 (its
    ``_keep_in_fp32_modules``) may stay float32; quantised (integer) weights are skipped.
    """
    dtype = resolve_dtype(dtype)
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    kept = (
        re.compile("|".join(rf"(^|\.){re.escape(name)}(\.|$)" for name in keep)) if keep else None
    )
    for name, parameter in model.named_parameters():
        if not parameter.dtype.is_floating_point or parameter.dtype == dtype:
            continue
        if parameter.dtype == torch.float32 and kept is not None and kept.search(name):
            continue
        raise ValueError(
            f"parameter {name} is {parameter.dtype} although {dtype} was asked for; load the "
            f"model with from_pretrained(..., dtype={dtype}) (transformers otherwise keeps the "
            "checkpoint's dtype)"
        )
