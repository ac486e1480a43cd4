"""Running a Hugging Face causal LM on the one-pass backspace layout.

:func:`state_logits` gives the logits of every state visited by a batch of action
sequences in one forward pass. :func:`model_mask` turns a boolean mask into what the
model's attention implementation expects, and :func:`cache_keyword` names the KV-cache
argument of the installed ``transformers``; the sampler shares both.

For training, :func:`loss_logits` gives the logits a loss reads, dense or chunked:
:func:`chunked_state_logits` runs the transformer body (in bfloat16 under
autocast with ``body_dtype``) and hands back its last hidden states with the LM head as
:class:`~sequencematch.core.chunked_logits.ChunkedLogits`, which the objectives read in
float32 a chunk of states at a time: mixed precision that SequenceMatch can use, without
the full ``[B, T, V]`` logits in memory.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence
from typing import Any

import torch

from .actions import Batch
from .causal_lm import causal_lm, check_backspace_support
from .chunked_logits import ChunkedLogits
from .layout import Layout, build_layout, validate_rows
from .probe import MASK_IGNORED, layout_probe_verdict

_VERIFIED_ATTRIBUTE = "_sequencematch_layout_verified"
_HEAD_VERIFIED_ATTRIBUTE = "_sequencematch_head_verified"

PRECISION_BODY_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
"""Training precision name -> ``body_dtype`` (``None``: the body runs in the model's dtype)."""


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


def takes_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the model's forward can skip the LM head on unneeded positions
    (``logits_to_keep``, a 1-D tensor of positions to keep)."""
    return "logits_to_keep" in inspect.signature(causal_lm(model).forward).parameters


def state_logits(
    model: torch.nn.Module,
    sequences: torch.Tensor,
    prompt_lengths: torch.Tensor | Sequence[int],
    lengths: torch.Tensor | Sequence[int],
    bkspc_id: int | None = None,
    *,
    validate: bool = True,
    body_dtype: torch.dtype | None = None,
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
        body_dtype: run the transformer body under autocast in this dtype (``torch.bfloat16``)
            and the LM head outside it, in float32 at least, on the body's last hidden state;
            ``None``: one plain forward of the model as it is.

    Returns:
        ``[B, T, V]`` logits; ``logits[b, t]`` are those of a plain forward over the visible
        tokens of the state after element ``t``. Entries at padding positions are arbitrary.
    """
    if body_dtype is not None:
        return chunked_state_logits(
            model, sequences, prompt_lengths, lengths, bkspc_id, validate=validate,
            body_dtype=body_dtype, recompute=False,
        ).dense()  # fmt: skip
    core, layout = _checked_layout(model, sequences, prompt_lengths, lengths, bkspc_id, validate)
    return _layout_forward(model, core, layout).logits


def chunked_state_logits(
    model: torch.nn.Module,
    sequences: torch.Tensor,
    prompt_lengths: torch.Tensor | Sequence[int],
    lengths: torch.Tensor | Sequence[int],
    bkspc_id: int | None = None,
    *,
    validate: bool = True,
    body_dtype: torch.dtype | None = None,
    chunk_tokens: int | None = None,
    recompute: bool = True,
) -> ChunkedLogits:
    """The logits of :func:`state_logits`, for the objectives, without ``[B, T, V]`` in memory.

    Runs the model's transformer body over the one-pass layout (under autocast in
    ``body_dtype`` when given) and returns its last hidden states with the LM head; the
    objectives (``mle_loss``, ``sequencematch_loss``) read them a chunk of ``chunk_tokens``
    states at a time (default: 64 MiB of logits), the head in float32 (see
    :class:`~sequencematch.core.chunked_logits.ChunkedLogits`). Arguments as in
    :func:`state_logits`; ``recompute=False`` keeps each chunk's logits for the backward
    pass instead of recomputing them.

    The model is called through its wrapper (DDP, peft), so gradient synchronisation works as
    in a plain forward; a model whose logits are more than ``head(last hidden state)`` (a
    soft cap, a scale) is refused on the first call.
    """
    _check_body_dtype(body_dtype)
    core, layout = _checked_layout(model, sequences, prompt_lengths, lengths, bkspc_id, validate)
    if validate:
        verify_head_once(core)
    with _body_autocast(sequences.device, core, body_dtype):
        hidden = _body_hidden(model, core, layout)  # [B, T, H]
    return ChunkedLogits(
        hidden, core.get_output_embeddings(), chunk_tokens=chunk_tokens, recompute=recompute
    )


def loss_logits(
    model: torch.nn.Module,
    batch: Batch,
    bkspc_id: int | None,
    vocab_size: int,
    *,
    body_dtype: torch.dtype | None = None,
    chunk_tokens: int | None = None,
    with_hidden: bool = False,
) -> tuple[torch.Tensor | ChunkedLogits, torch.Tensor | None]:
    """The ``[B, T, V]`` logits of a training batch's states (rows not checked again), in
    float32, and its ``[B, T, H]`` last hidden states when ``with_hidden`` (else ``None``).

    ``chunk_tokens``: :class:`~sequencematch.core.chunked_logits.ChunkedLogits` that read
    this many states at a time and recompute them in the backward pass (for a head of
    exactly ``vocab_size`` rows); ``None``: the full tensor, the head's rows beyond
    ``vocab_size`` cut. ``body_dtype`` ``None``: one plain forward; bf16/fp16: the body
    under autocast and the LM head in float32 (autocast over the whole model would round the
    logits, and the rewards ``r = Q - gamma V'`` read off them, to bf16's 0.125 steps at
    logit 16).
    """
    rows = (batch.sequences, batch.prompt_lengths, batch.lengths, bkspc_id)
    if chunk_tokens is not None:
        chunked = chunked_state_logits(
            model, *rows, validate=False, body_dtype=body_dtype, chunk_tokens=chunk_tokens
        )  # [B, T, V] read a chunk of states at a time
        return chunked, chunked.hidden if with_hidden else None
    hidden = None
    if body_dtype is None and not with_hidden:
        logits = state_logits(model, *rows, validate=False)
    else:
        chunked = chunked_state_logits(
            model, *rows, validate=False, body_dtype=body_dtype, recompute=False
        )
        logits, hidden = chunked.dense(), chunked.hidden  # [B, T, V], [B, T, H]
    return logits[..., :vocab_size].float(), hidden


def _checked_layout(
    model: torch.nn.Module,
    sequences: torch.Tensor,
    prompt_lengths: torch.Tensor | Sequence[int],
    lengths: torch.Tensor | Sequence[int],
    bkspc_id: int | None,
    validate: bool,
) -> tuple[torch.nn.Module, Layout]:
    """The causal LM inside ``model`` (a DDP or peft wrapper) and the one-pass layout of the
    rows; with ``validate``, the rows and the model are checked first."""
    device = sequences.device
    prompt_lengths = as_lengths(prompt_lengths, device)
    lengths = as_lengths(lengths, device)
    core = causal_lm(model)
    if validate:
        check_backspace_support(core)
        vocab_size = core.get_input_embeddings().weight.shape[0]
        validate_rows(sequences, prompt_lengths, lengths, bkspc_id, vocab_size)
        verify_layout_once(core)
    return core, build_layout(sequences, prompt_lengths, lengths, bkspc_id)


def _layout_forward(
    model: torch.nn.Module, core: torch.nn.Module, layout: Layout, **kwargs: object
) -> Any:
    """One forward of ``model`` (through its wrapper) over ``layout``, without a KV cache."""
    return model(
        input_ids=layout.input_ids,
        attention_mask=model_mask(core, layout.attention_mask),
        position_ids=layout.position_ids,
        use_cache=False,
        **kwargs,
    )


def _check_body_dtype(body_dtype: torch.dtype | None) -> None:
    if body_dtype is not None and not (
        isinstance(body_dtype, torch.dtype) and body_dtype.is_floating_point
    ):
        raise ValueError(
            f"body_dtype must be a floating torch dtype (torch.bfloat16, torch.float16) or None, "
            f"got {body_dtype!r}"
        )


def precision_body_dtype(precision: str) -> torch.dtype | None:
    """``body_dtype`` for a training precision name: ``fp32`` (None), ``bf16`` or ``fp16``."""
    if precision not in PRECISION_BODY_DTYPES:
        raise ValueError(
            f"unknown precision {precision!r}; use one of {', '.join(PRECISION_BODY_DTYPES)}"
        )
    return PRECISION_BODY_DTYPES[precision]


def _body_autocast(
    device: torch.device, core: torch.nn.Module, body_dtype: torch.dtype | None
) -> contextlib.AbstractContextManager:
    """Autocast in ``body_dtype`` when it is narrower than the model's own dtype."""
    if body_dtype is None or body_dtype.itemsize >= core.dtype.itemsize:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=body_dtype)


def _body_hidden(model: torch.nn.Module, core: torch.nn.Module, layout: Layout) -> torch.Tensor:
    """``[B, T, H]`` last hidden states of the body, from a forward through ``model``.

    The model is called as a whole (so DDP and peft wrappers do their part) but asked for no
    logits (``logits_to_keep`` selects none) when its forward takes that argument; the body's
    output is read by a forward hook.
    """
    body = core.base_model
    if body is core:
        raise ValueError(
            f"{type(core).__name__} has no separate transformer body (base_model) to read "
            "hidden states from; use state_logits"
        )
    captured: list[torch.Tensor] = []

    def keep_hidden(module, inputs, output) -> None:
        captured.append(output.last_hidden_state if hasattr(output, "last_hidden_state")
                        else output[0])  # fmt: skip

    kwargs = {}
    if takes_logits_to_keep(core):
        kwargs["logits_to_keep"] = torch.empty(0, dtype=torch.long, device=layout.input_ids.device)
    handle = body.register_forward_hook(keep_hidden)
    try:
        _layout_forward(model, core, layout, **kwargs)
    finally:
        handle.remove()
    return captured[-1]


@torch.no_grad()
def verify_layout_once(model: torch.nn.Module) -> None:
    """Check once per model, on a short probe, that the layout reproduces plain forwards.

    Catches models that accept a 4-D mask but do not follow it (or rebuild their own
    positions), which would otherwise train on wrong logits without any error. The probe is
    judged on the model's own scales, not a fixed tolerance (see
    :func:`~sequencematch.core.probe.layout_probe_verdict`): the layout must be many times
    closer to the plain forwards than the logits of a layout that leaves deleted tokens
    visible or counts positions without deletion, or within a few times the rounding noise
    between two equivalent plain computations. So a float32 model with massive activations
    passes, and one that ignores the mask does not. A wrapped model (DDP, peft) is checked
    through the causal LM inside it.
    """
    model = causal_lm(model)
    if getattr(model, _VERIFIED_ATTRIBUTE, False):
        return
    with torch.autocast(model.device.type, enabled=False):
        _verify_layout(model)
    setattr(model, _VERIFIED_ATTRIBUTE, True)


def _verify_layout(model: torch.nn.Module) -> None:
    was_training = model.training
    model.eval()
    try:
        verdict = layout_probe_verdict(**_probe_logits(model))
    finally:
        model.train(was_training)
    if not verdict.accepted:
        raise ValueError(
            f"{type(model).__name__} does not follow a custom 4-D attention mask with explicit "
            f"position ids (probe logits differ by {verdict.error:.3g}, allowed "
            f"{verdict.tolerance:.3g}); load it with "
            "attn_implementation='sdpa' or 'eager', or use a model family that supports "
            "custom masks (GPT-2, Llama, Qwen2, Mistral without sliding window, ...)"
        )


def _probe_logits(model: torch.nn.Module) -> dict:
    """The probe's ``[8, V]`` float logits: the layout's, the correct ones computed twice,
    and those of two wrong layouts, all through ``model``."""
    device = model.get_input_embeddings().weight.device
    vocab_size = model.get_input_embeddings().weight.shape[0]
    bkspc, a, b, c = 0, 1 % vocab_size, 2 % vocab_size, 3 % vocab_size
    row = [a, b, c, bkspc, c, a, bkspc, bkspc, b]  # prompt [a, b], then actions
    visible_states = [[a, b], [a, b, c], [a, b], [a, b, c], [a, b, c, a]]
    visible_states += [[a, b, c], [a, b], [a, b, b]]
    layout = build_layout(
        torch.tensor([row], device=device), as_lengths([2], device),
        as_lengths([len(row)], device), bkspc,
    )  # fmt: skip
    ids, mask = layout.input_ids, model_mask(model, layout.attention_mask)
    counted = torch.arange(len(row), device=device)[None]  # [1, T] positions, no deletion

    def states(**inputs) -> torch.Tensor:  # [8, V]: states after elements 1..8
        return model(**inputs, use_cache=False).logits[0, 1:].float()

    alone, batched = _plain_logits(model, visible_states, len(row), pad_id=a)
    return {
        "layout": states(input_ids=ids, attention_mask=mask, position_ids=layout.position_ids),
        "correct": alone,
        "correct_again": batched,
        "wrong": {
            MASK_IGNORED: states(input_ids=ids, position_ids=layout.position_ids),
            "positions rebuilt": states(input_ids=ids, attention_mask=mask, position_ids=counted),
        },
    }


def _plain_logits(
    model: torch.nn.Module, states: list[list[int]], length: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[S, V]`` float last-position logits of plain forwards over ``states``, computed twice:
    each state alone, and all of them in one batch right-padded to ``length``; the two differ
    by rounding only."""
    device = model.get_input_embeddings().weight.device
    alone = []
    for state in states:
        ids = torch.tensor([state], device=device)  # [1, L]
        output = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
        alone.append(output.logits[0, -1])
    padded = torch.tensor([s + [pad_id] * (length - len(s)) for s in states], device=device)
    real = torch.tensor([[1] * len(s) + [0] * (length - len(s)) for s in states], device=device)
    logits = model(input_ids=padded, attention_mask=real, use_cache=False).logits  # [S, T, V]
    last = torch.tensor([len(s) - 1 for s in states], device=device)
    batched = logits[torch.arange(len(states), device=device), last]
    return torch.stack(alone).float(), batched.float()


@torch.no_grad()
def verify_head_once(model: torch.nn.Module) -> None:
    """Check once per model that its logits are its LM head applied to the body's output.

    :func:`chunked_state_logits` applies the head itself; a model that transforms the head's
    output further (a logit soft cap, a scale) would otherwise train on other logits. Unlike
    the layout probe, both sides run the same body on the same inputs and the same head on
    its output, so rounding does not enter: they agree exactly even on a float32 model with
    massive activations, and the small relative bound needs no noise floor.
    """
    model = causal_lm(model)
    if getattr(model, _HEAD_VERIFIED_ATTRIBUTE, False):
        return
    device = model.get_input_embeddings().weight.device
    vocab_size = model.get_input_embeddings().weight.shape[0]
    sequences = torch.tensor([[1 % vocab_size, 2 % vocab_size, 3 % vocab_size]], device=device)
    layout = build_layout(sequences, as_lengths([1], device), as_lengths([3], device), None)
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(device.type, enabled=False):
            hidden = _body_hidden(model, model, layout)  # [1, 3, H]
            head = model.get_output_embeddings()
            ours = head(hidden).float()
            plain = _layout_forward(model, model, layout).logits.float()
    finally:
        model.train(was_training)
    error = (ours - plain).abs().max().item()
    if not error <= 1e-5 * (1.0 + plain.abs().max().item()):
        raise ValueError(
            f"the logits of {type(model).__name__} are not its LM head applied to the last "
            f"hidden state (they differ by {error:.3g}: a soft cap or scale?); use state_logits "
            "without body_dtype for this model"
        )
    setattr(model, _HEAD_VERIFIED_ATTRIBUTE, True)
