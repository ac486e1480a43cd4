"""One forward pass over sequences with backspaces (the exactness layout).

A row is ``prompt tokens + actions``; an action is a token or ``<bkspc>``. Every element
gets one input id, one position id and one row of a boolean attention mask such that the
hidden state of element ``t`` equals the last hidden state of a plain causal forward over
the visible tokens of the state reached after element ``t``:

- a prompt element or a token action emits its token at position ``depth - 1`` (its index
  in the visible state) and attends to the original elements of the visible tokens;
- a ``<bkspc>`` emits a copy of the token that is now last, at that token's position,
  attending to the same set as the original with itself in place of the original;
- deleted elements and copies are never attended to by later elements.

Everything here is vectorised over the batch and the sequence: the stack of visible
elements is recovered from the running depth (a cumulative sum), not simulated in Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Layout:
    """Model inputs for a right-padded batch of ``[prompt + actions]`` rows.

    Attributes:
        input_ids: ``[B, T]`` ids to feed (a ``<bkspc>`` becomes a copy of the new last token).
        position_ids: ``[B, T]`` index of the element's token in its visible state.
        attention_mask: ``[B, T, T]`` boolean, ``True`` where query ``i`` may attend key ``j``.
        depths: ``[B, T]`` number of visible tokens in the state after each element.
        valid: ``[B, T]`` ``True`` on real (non-padding) elements.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    depths: torch.Tensor
    valid: torch.Tensor


def validate_rows(
    sequences: torch.Tensor,
    prompt_lengths: torch.Tensor,
    lengths: torch.Tensor,
    bkspc_id: int | None,
    vocab_size: int | None = None,
) -> None:
    """Raise ``ValueError`` with a clear message when a batch is not a valid set of rows."""
    if sequences.dim() != 2:
        raise ValueError(
            f"sequences must be a 2-D LongTensor [batch, time], got shape {tuple(sequences.shape)}"
        )
    if sequences.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"sequences must hold integer token ids, got dtype {sequences.dtype}")
    batch, time = sequences.shape
    for name, value in (("prompt_lengths", prompt_lengths), ("lengths", lengths)):
        if value.dim() != 1 or value.shape[0] != batch:
            raise ValueError(
                f"{name} must be a 1-D tensor with one entry per row ({batch}), "
                f"got shape {tuple(value.shape)}"
            )
    if (prompt_lengths < 1).any():
        row = int((prompt_lengths < 1).nonzero()[0])
        raise ValueError(
            f"row {row} has an empty prompt: every row needs at least one prompt token "
            "(prepend a BOS token if the task has no prompt)"
        )
    if (lengths < prompt_lengths).any() or (lengths > time).any():
        row = int(((lengths < prompt_lengths) | (lengths > time)).nonzero()[0])
        raise ValueError(
            f"row {row}: lengths[{row}]={int(lengths[row])} must lie between its prompt length "
            f"{int(prompt_lengths[row])} and the padded width {time}"
        )
    index = torch.arange(time, device=sequences.device)
    valid = index[None, :] < lengths[:, None]
    real_ids = sequences[valid]
    if real_ids.numel() and int(real_ids.min()) < 0:
        raise ValueError(f"negative token id {int(real_ids.min())} in sequences")
    if vocab_size is not None and real_ids.numel() and int(real_ids.max()) >= vocab_size:
        raise ValueError(
            f"token id {int(real_ids.max())} is outside the model's vocabulary of size "
            f"{vocab_size}; did you call add_backspace(model, tokenizer) before using its id?"
        )
    if bkspc_id is None:
        return
    in_prompt = index[None, :] < prompt_lengths[:, None]
    if ((sequences == bkspc_id) & in_prompt).any():
        row = int(((sequences == bkspc_id) & in_prompt).any(1).nonzero()[0])
        raise ValueError(
            f"row {row}: the prompt contains <bkspc> (id {bkspc_id}); prompts are plain tokens"
        )
    depths = visible_lengths(sequences, prompt_lengths, lengths, bkspc_id)
    acting = valid & ~in_prompt
    deletes_prompt = acting & (depths < prompt_lengths[:, None])
    if deletes_prompt.any():
        row, step = (int(v) for v in deletes_prompt.nonzero()[0])
        raise ValueError(
            f"row {row}: the <bkspc> at element {step} deletes into the prompt (the prompt has "
            f"{int(prompt_lengths[row])} tokens); a backspace may only delete generated tokens"
        )


def visible_lengths(
    sequences: torch.Tensor,
    prompt_lengths: torch.Tensor,
    lengths: torch.Tensor,
    bkspc_id: int | None,
) -> torch.Tensor:
    """Number of visible tokens in the state after each element, ``[B, T]``.

    Padding elements carry the depth of the row's final state.
    """
    time = sequences.shape[1]
    index = torch.arange(time, device=sequences.device)
    valid = index[None, :] < lengths[:, None]  # [B, T]
    is_bkspc = (sequences == bkspc_id) if bkspc_id is not None else torch.zeros_like(valid)
    is_bkspc = is_bkspc & valid & (index[None, :] >= prompt_lengths[:, None])
    step = torch.where(is_bkspc, -1, 1) * valid  # [B, T] +1 push, -1 pop, 0 pad
    return step.cumsum(dim=1)


def build_layout(
    sequences: torch.Tensor,
    prompt_lengths: torch.Tensor,
    lengths: torch.Tensor,
    bkspc_id: int | None,
) -> Layout:
    """Input ids, position ids and the boolean attention mask for one pass (see module doc).

    Inputs are assumed valid (see :func:`validate_rows`).
    """
    batch, time = sequences.shape
    device = sequences.device
    index = torch.arange(time, device=device)
    valid = index[None, :] < lengths[:, None]  # [B, T]
    in_prompt = index[None, :] < prompt_lengths[:, None]  # [B, T]
    if bkspc_id is None:
        is_bkspc = torch.zeros_like(valid)
    else:
        is_bkspc = (sequences == bkspc_id) & valid & ~in_prompt  # [B, T]
    is_push = valid & ~is_bkspc  # [B, T] elements that enter the visible stack
    depths = (torch.where(is_bkspc, -1, 1) * valid).cumsum(dim=1)  # [B, T]

    # A pushed element j dies at the first later element whose depth drops below depth[j].
    later = index[:, None] > index[None, :]  # [T(i), T(j)]
    drops = later[None] & (depths[:, :, None] < depths[:, None, :])  # [B, T(i), T(j)]
    dies_at = torch.where(drops.any(dim=1), drops.to(torch.int8).argmax(dim=1), time)  # [B, T]
    alive = (
        is_push[:, None, :]
        & valid[:, :, None]
        & (index[None, None, :] <= index[None, :, None])
        & (index[None, :, None] < dies_at[:, None, :])
    )  # [B, T(i), T(j)]: j is visible in the state after element i

    # The last visible element (the stack top) of each state; for a <bkspc> it is the
    # token the copy stands in for.
    top = (alive * (index + 1)[None, None, :]).argmax(dim=2)  # [B, T]
    copy_of_top = torch.nn.functional.one_hot(top, time).bool() & is_bkspc[:, :, None]
    eye = torch.eye(time, dtype=torch.bool, device=device)[None]
    mask = (alive & ~copy_of_top) | (eye & ~is_push[:, :, None])  # self for copies and pads

    input_ids = torch.where(is_bkspc, sequences.gather(1, top), sequences)
    input_ids = torch.where(valid, input_ids, 0)
    position_ids = torch.where(valid, depths - 1, 0).clamp(min=0)
    return Layout(input_ids, position_ids, mask, depths, valid)
