"""GGUF files (llama.cpp's format) as plain Hugging Face models.

transformers reads a GGUF file itself (``from_pretrained(folder, gguf_file=...)``, with the
``gguf`` and ``accelerate`` packages): the weights are de-quantised to float tensors and the
tokenizer is rebuilt from the file's metadata. The model it returns still carries the GGUF
quantisation marker, which makes ``save_pretrained`` refuse it and marks it as not trainable;
:func:`load_gguf` removes the marker, so the result is an ordinary float model.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GgufConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

GGUF_PACKAGES = ("gguf", "accelerate")


def require_gguf_packages() -> None:
    """Raise ValueError naming the install command when ``gguf`` or ``accelerate`` is missing."""
    missing = [name for name in GGUF_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(
            f"loading a .gguf file needs the {' and '.join(missing)} package(s): "
            "pip install 'sequencematch[pretrained]'"
        )


def load_gguf(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The causal LM and tokenizer stored in the ``.gguf`` file ``path``, de-quantised to
    ``dtype`` (always passed explicitly: transformers would otherwise pick the file's own)."""
    require_gguf_packages()
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"GGUF file {path} does not exist")
    folder, name = str(path.resolve().parent), path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)  # a local folder: no hub
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=name,
        dtype=dtype,
        attn_implementation=attn_implementation,
        quantization_config=GgufConfig(dequantize=True),
        local_files_only=True,
    )
    return drop_quantization_marker(model), tokenizer


def drop_quantization_marker(model: PreTrainedModel) -> PreTrainedModel:
    """Turn a model whose GGUF weights were de-quantised at load time into a plain model
    (trainable, and saved by ``save_pretrained`` as ordinary safetensors)."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return model
    method = getattr(quantizer.quantization_config, "quant_method", None)
    if getattr(method, "value", method) != "gguf" or not quantizer.quantization_config.dequantize:
        raise ValueError(f"{type(model).__name__} holds quantised weights ({method}), not floats")
    quantizer.remove_quantization_config(model)
    return model
