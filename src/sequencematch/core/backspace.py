"""The ``<bkspc>`` action as the representation knows it: its token, its id on a model, and
which models can run the one-pass layout (a per-row 4-D mask with explicit position ids).

Any Hugging Face causal LM whose attention takes an arbitrary 4-D mask and explicit
``position_ids`` (eager or SDPA attention) can be used; :func:`check_backspace_support`
refuses the others with a message that says what to change.
"""

from __future__ import annotations

import inspect

from transformers import PreTrainedModel

BKSPC_TOKEN = "<bkspc>"


SUPPORTED_ATTENTION = ("sdpa", "eager")


def backspace_id(model: PreTrainedModel) -> int | None:
    """The ``<bkspc>`` id recorded by :func:`add_backspace`, or ``None``."""
    value = getattr(model.config, "bkspc_token_id", None)
    return None if value is None else int(value)


def check_backspace_support(model: PreTrainedModel) -> None:
    """Refuse models whose attention cannot follow an arbitrary 4-D mask with position ids."""
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
