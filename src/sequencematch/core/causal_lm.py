"""The causal LM the representation runs on: the model inside its wrappers, the ``<bkspc>``
token and the id a model records for it, the ids that are real actions, and which models
can run the one-pass layout (a per-row 4-D mask with explicit position ids).

Any Hugging Face causal LM whose attention takes an arbitrary 4-D mask and explicit
``position_ids`` (eager or SDPA attention) can be used, also inside a
``DistributedDataParallel`` or peft (LoRA) wrapper; :func:`check_backspace_support` refuses
the others with a message that says what to change.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from transformers import PreTrainedModel

BKSPC_TOKEN = "<bkspc>"


SUPPORTED_ATTENTION = ("sdpa", "eager")


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face causal LM inside a ``DistributedDataParallel`` and/or peft wrapper.

    peft injects its adapter layers (LoRA, trainable token rows) into the wrapped model's
    modules, so the model returned computes exactly what the wrapper does; the wrapper itself
    hides the model's ``forward`` signature and config behind ``*args, **kwargs``.
    """
    model = getattr(model, "module", model)  # DistributedDataParallel
    get_base_model = getattr(model, "get_base_model", None)  # peft's PeftModel
    if callable(get_base_model) and not isinstance(model, PreTrainedModel):
        model = get_base_model()
    return model


def backspace_id(model: torch.nn.Module) -> int | None:
    """The ``<bkspc>`` id recorded by :func:`add_backspace`, or ``None``."""
    value = getattr(causal_lm(model).config, "bkspc_token_id", None)
    return None if value is None else int(value)


def valid_vocabulary(model: torch.nn.Module, tokenizer: Any) -> int:
    """Number of ids that are real actions: the tokenizer's entries (``<bkspc>`` included,
    since adding it adds a tokenizer entry and, where needed, an embedding row).

    Embedding matrices are often padded beyond the tokenizer (to a multiple of 64 or 128);
    the logits of those rows are no action, so sampling, forced noise and perplexity's
    normaliser must ignore them. The model's recorded ``<bkspc>`` id counts even when
    ``tokenizer`` is a copy made before the token was added to it.
    """
    rows = causal_lm(model).get_input_embeddings().weight.shape[0]
    bkspc_id = backspace_id(model)
    entries = len(tokenizer) if bkspc_id is None else max(len(tokenizer), bkspc_id + 1)
    return min(entries, rows)


def checked_vocabulary(
    model: torch.nn.Module, vocab_size: int | None, rows: Iterable[Sequence[int]], what: str
) -> int:
    """The number of actions, ``vocab_size`` (default: every embedding row), after checking
    that it fits the embedding matrix and that every token id of ``rows`` lies below it;
    ``what`` names a row in the error (``"a prompt"``, ``"a completion"``)."""
    embedding_rows = model.get_input_embeddings().weight.shape[0]
    vocab = embedding_rows if vocab_size is None else vocab_size
    if not 0 < vocab <= embedding_rows:
        raise ValueError(
            f"vocab_size {vocab} must lie in [1, {embedding_rows}] (the embedding matrix's rows)"
        )
    if any(not 0 <= token < vocab for row in rows for token in row):
        raise ValueError(f"{what} holds a token id outside the vocabulary of size {vocab}")
    return vocab


def check_backspace_support(model: torch.nn.Module) -> None:
    """Refuse models whose attention cannot follow an arbitrary 4-D mask with position ids.

    Wrappers (``DistributedDataParallel``, a peft ``PeftModel``) are looked through.
    """
    model = causal_lm(model)
    name = type(model).__name__
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"{name} is not a Hugging Face PreTrainedModel causal LM")
    implementation = getattr(model.config, "_attn_implementation", None) or "eager"
    if implementation not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"{name} uses attn_implementation={implementation!r}, which ignores arbitrary "
            "attention masks; <bkspc> needs a per-row 4-D mask. Load the model with "
            "attn_implementation='sdpa' (or 'eager'), e.g. "
            f"{name}.from_pretrained(path, attn_implementation='sdpa')"
        )
    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError(f"{name} is an encoder-decoder model; <bkspc> needs a causal LM")
    parameters = inspect.signature(model.forward).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    named = "position_ids" in parameters and "attention_mask" in parameters
    if not (named or takes_any):
        raise ValueError(
            f"{name}.forward takes no position_ids or attention_mask, so it cannot run the "
            "one-pass backspace layout; use a causal LM that accepts both "
            "(GPT-2, Llama, Qwen2, ...)"
        )
