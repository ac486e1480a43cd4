"""Running a Hugging Face causal LM on the one-pass backspace layout.

:func:`state_logits` gives the logits of every state visited by a batch of action
sequences in one forward pass. :func:`model_mask` turns a boolean mask into what the
model's attention implementation expects, and :func:`cache_keyword` names the KV-cache
argument of the installed ``transformers``; the sampler shares both.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

from .backspace import causal_lm, check_backspace_support
from .layout import build_layout, validate_rows

_VERIFIED_ATTRIBUTE = "_sequencematch_layout_verified"


def as_lengths(values: torch.Tensor | Sequence[int], device: torch.device) -> torch.Tensor:
    """A 1-D int64 tensor of lengths on ``device``."""
    return torch.as_tensor(values, dtype=torch.long, device=device).reshape(-1)


def model_mask(model: torch.nn.Module, mask: torch.Tensor) -> torch.Tensor:
    """Turn a boolean ``[B, Q, K]`` mask into the 4-D ``[B, 1, Q, K]`` form the model takes.

    SDPA takes booleans (``True`` attends); eager attention adds the mask to its scores,
    so it gets ``0`` where attending and the dtype's minimum elsewhere.
    """
    model = causal_lm(model)
    mask = mask[:, None]  # [B, 1, Q, K]
    if getattr(model.config, "_attn_implementation", "eager") == "sdpa":
        return mask
    dtype = model.dtype
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return bias.masked_fill(~mask, torch.finfo(dtype).min)


def cache_keyword(model: torch.nn.Module) -> str:
    """The name of the KV-cache argument (``cache`` from transformers 5.24 on)."""
    parameters = inspect.signature(causal_lm(model).forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def state_logits(
    model: torch.nn.Module,
    sequences: torch.Tensor,
    prompt_lengths: torch.Tensor | Sequence[int],
    lengths: torch.Tensor | Sequence[int],
    bkspc_id: int | None = None,
    *,
    validate: bool = True,
) -> torch.Tensor:
    """Logits of the state reached after every element, in one forward pass.

    Args:
        model: a causal LM (eager or SDPA attention), or a ``DistributedDataParallel`` or
            peft (LoRA) wrapper of one.
        sequences: ``[B, T]`` prompt tokens then actions (``bkspc_id`` inside), right-padded.
        prompt_lengths: ``[B]`` prompt length of each row (at least 1).
        lengths: ``[B]`` real length of each row (prompt + actions).
        bkspc_id: id of ``<bkspc>``; ``None`` when the rows hold no backspaces.
        validate: check the rows first (ids in the vocabulary, no deletion into the prompt).

    Returns:
        ``[B, T, V]`` logits; ``logits[b, t]`` are those of a plain forward over the visible
        tokens of the state after element ``t``. Entries at padding positions are arbitrary.
    """
    device = sequences.device
    prompt_lengths = as_lengths(prompt_lengths, device)
    lengths = as_lengths(lengths, device)
    core = causal_lm(model)  # the causal LM inside a DDP or peft wrapper
    if validate:
        check_backspace_support(core)
        vocab_size = core.get_input_embeddings().weight.shape[0]
        validate_rows(sequences, prompt_lengths, lengths, bkspc_id, vocab_size)
        verify_layout_once(core)
    layout = build_layout(sequences, prompt_lengths, lengths, bkspc_id)
    output = model(
        input_ids=layout.input_ids,
        attention_mask=model_mask(core, layout.attention_mask),
        position_ids=layout.position_ids,
        use_cache=False,
    )
    return output.logits


@torch.no_grad()
def verify_layout_once(model: torch.nn.Module) -> None:
    """Check once per model, on a short probe, that the layout reproduces plain forwards.

    Catches models that accept a 4-D mask but do not follow it (or rebuild their own
    positions), which would otherwise train on wrong logits without any error. A wrapped
    model (DDP, peft) is checked through the causal LM inside it.
    """
    model = causal_lm(model)
    if getattr(model, _VERIFIED_ATTRIBUTE, False):
        return
    device = model.get_input_embeddings().weight.device
    vocab_size = model.get_input_embeddings().weight.shape[0]
    bkspc, a, b, c = 0, 1 % vocab_size, 2 % vocab_size, 3 % vocab_size
    row = [a, b, c, bkspc, c, a, bkspc, bkspc, b]  # prompt [a, b], then actions
    visible_states = [[a, b], [a, b, c], [a, b], [a, b, c], [a, b, c, a]]
    visible_states += [[a, b, c], [a, b], [a, b, b]]
    sequences = torch.tensor([row], device=device)
    was_training = model.training
    model.eval()
    try:
        layout = build_layout(sequences, as_lengths([2], device), as_lengths([len(row)], device), 0)
        logits = (
            model(
                input_ids=layout.input_ids,
                attention_mask=model_mask(model, layout.attention_mask),
                position_ids=layout.position_ids,
                use_cache=False,
            )
            .logits[0, 1:]
            .float()
        )  # [8, V]: states after elements 1..8
        plain = torch.stack(
            [
                model(
                    input_ids=torch.tensor([state], device=device),
                    attention_mask=torch.ones(1, len(state), dtype=torch.long, device=device),
                    use_cache=False,
                )
                .logits[0, -1]
                .float()
                for state in visible_states
            ]
        )
    finally:
        model.train(was_training)
    tolerance = 1e-4 if model.dtype in (torch.float32, torch.float64) else 5e-2
    error = (logits - plain).abs().max().item()
    if not error <= tolerance * (1.0 + plain.abs().max().item()):
        raise ValueError(
            f"{type(model).__name__} does not follow a custom 4-D attention mask with explicit "
            f"position ids (probe logits differ by {error:.3g}); load it with "
            "attn_implementation='sdpa' or 'eager', or use a model family that supports "
            "custom masks (GPT-2, Llama, Qwen2, Mistral without sliding window, ...)"
        )
    setattr(model, _VERIFIED_ATTRIBUTE, True)
