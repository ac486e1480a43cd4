"""Logits that are never all in memory: the body's last hidden states plus the LM head.

With a 49k vocabulary the ``[B, T, V]`` float32 logits are the largest tensors of a training
step, and reading them the plain way keeps several full-size copies alive (the logits, a
masked copy, the log-sum-exp's input, their gradients). The objectives only read two numbers
per state: ``V(s)``, the log-sum-exp over the valid actions, and ``Q(s, a)`` of the action
taken next. :class:`ChunkedLogits` computes both a chunk of states at a time (LM head,
``<bkspc>`` mask, log-sum-exp and gather fused per chunk) under activation checkpointing:
only the ``[N, H]`` hidden states are kept for the backward pass, which recomputes each
chunk's logits, so at most ``chunk_tokens x V`` logits exist at any moment. By default a
chunk holds 2**24 logits (64 MiB in float32: 341 states of SmolLM2's 49,153 actions); when
every state fits in one chunk nothing is recomputed.

The LM head always runs outside autocast, in float32 at least (a bfloat16 head would round
logits of 16 to steps of 0.125, as large as the rewards SequenceMatch reads off them).
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

CHUNK_LOGITS = 2**24
"""Logits per chunk when ``chunk_tokens`` is not given (64 MiB in float32)."""


class ChunkedLogits:
    """The ``[B, T, V]`` logits ``head(hidden)`` of every state, computed when read.

    Stands in for the logits tensor wherever the objectives read logits
    (:func:`~sequencematch.core.transitions.transitions`, hence ``mle_loss`` and
    ``sequencematch_loss``): it has the tensor's ``shape``, ``dtype``, ``device`` and
    ``dim()``, slices over rows (``logits[:n]``), and :meth:`dense` builds the full tensor when
    one is really wanted.

    Args:
        hidden: ``[B, T, H]`` last hidden states (the LM head's input).
        head: the LM head (any module mapping ``[..., H]`` to ``[..., V]``; a peft wrapper of
            it included).
        chunk_tokens: states per chunk; ``None``: as many as make :data:`CHUNK_LOGITS` logits.
        recompute: with more than one chunk, keep only the hidden states for the backward
            pass and recompute each chunk's logits there (activation checkpointing); ``False``
            keeps every chunk's logits instead (faster, as much memory as full logits).
        dtype: the dtype of the logits read (default: the head's, float32 at least).
        vocab: the head's output size (default: found by running it on an empty input).
    """

    def __init__(
        self,
        hidden: torch.Tensor,
        head: torch.nn.Module,
        *,
        chunk_tokens: int | None = None,
        recompute: bool = True,
        dtype: torch.dtype | None = None,
        vocab: int | None = None,
    ) -> None:
        if hidden.dim() != 3:
            raise ValueError(f"hidden must be [batch, time, hidden], got {tuple(hidden.shape)}")
        if chunk_tokens is not None and (not isinstance(chunk_tokens, int) or chunk_tokens < 1):
            raise ValueError(
                f"chunk_tokens must be a positive integer or None, got {chunk_tokens!r}"
            )
        self.hidden = hidden
        self.head = head
        self.chunk_tokens = chunk_tokens
        self.recompute = recompute
        self._head_dtype = _head_dtype(head, hidden)
        at_least_float32 = torch.promote_types(self._head_dtype, torch.float32)
        self.dtype = dtype if dtype is not None else at_least_float32
        if vocab is None:
            with torch.no_grad():
                vocab = self._head(hidden[:0, :0]).shape[-1]
        self.shape = torch.Size((*hidden.shape[:2], vocab))
        self._chunk_size = (
            chunk_tokens if chunk_tokens is not None else max(1, CHUNK_LOGITS // vocab)
        )
        self._cache: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._slices: dict[object, ChunkedLogits] = {}

    # ---------------------------------------------------------------- tensor-like surface

    @property
    def device(self) -> torch.device:
        return self.hidden.device

    def dim(self) -> int:
        return 3

    def is_floating_point(self) -> bool:
        return True

    def float(self) -> ChunkedLogits:
        """These logits in float32 (itself when they already are)."""
        if self.dtype == torch.float32:
            return self
        return self._like(self.hidden, torch.float32)

    def __getitem__(self, rows: slice | int) -> ChunkedLogits:
        """The logits of some rows (a slice or an integer over the batch dimension only).

        The same slice gives the same object, so terms that slice it separately share what
        it has computed.
        """
        if not isinstance(rows, (slice, int)):
            raise ValueError(
                "ChunkedLogits index rows only, with a slice or an integer (logits[a:b]); call "
                ".dense() for the full [batch, time, vocab] tensor"
            )
        key = (rows.start, rows.stop, rows.step) if isinstance(rows, slice) else rows
        if key not in self._slices:
            hidden = self.hidden[rows]
            if hidden.dim() == 2:
                hidden = hidden[None]  # an integer index keeps its row as a batch of one
            self._slices[key] = self._like(hidden, self.dtype)
        return self._slices[key]

    def _like(self, hidden: torch.Tensor, dtype: torch.dtype) -> ChunkedLogits:
        return ChunkedLogits(
            hidden, self.head, chunk_tokens=self.chunk_tokens, recompute=self.recompute,
            dtype=dtype, vocab=self.shape[-1],
        )  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"ChunkedLogits(shape={tuple(self.shape)}, dtype={self.dtype}, "
            f"chunk_tokens={self.chunk_tokens}, recompute={self.recompute})"
        )

    # ---------------------------------------------------------------- reading

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """``head(hidden)`` outside autocast, in :attr:`dtype`: ``[..., V]``."""
        with torch.autocast(hidden.device.type, enabled=False):
            return self.head(hidden.to(self._head_dtype)).to(self.dtype)

    def dense(self) -> torch.Tensor:
        """The full ``[B, T, V]`` logits tensor (all of it in memory)."""
        return self._head(self.hidden)

    def state_values(
        self,
        states: torch.Tensor,
        next_ids: torch.Tensor,
        bkspc_masked: torch.Tensor | None,
        bkspc_id: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``V`` and the logit of the next action at the chosen states, ``[B, T]`` each.

        Args:
            states: ``[B, T]`` bool, the states to read; zeros are returned elsewhere.
            next_ids: ``[B, T]`` the action taken from each state (any valid id elsewhere).
            bkspc_masked: ``[B, T]`` bool, states where ``<bkspc>`` is not a valid action
                (its logit is ``-inf`` there); ``None`` with ``bkspc_id=None``.
            bkspc_id: id of ``<bkspc>``, or ``None`` (nothing masked).

        Returns:
            ``(values, next_q)``: ``values[b, t] = logsumexp`` of the valid logits of the state
            after element ``t``; ``next_q[b, t]`` its logit of ``next_ids[b, t]``.

        The result of the last call is kept and returned again for equal arguments (the
        MLE and SequenceMatch terms of one step read the same states), so the head runs once.
        """
        key = (bkspc_id, torch.is_grad_enabled(), states, next_ids, bkspc_masked)
        if self._cache is not None and _same_key(self._cache[0], key):
            return self._cache[1]
        device = self.device
        states = states.to(device)
        where = states.nonzero(as_tuple=True)  # N states, row-major
        hidden = self.hidden[where]  # [N, H]
        ids = next_ids.to(device)[where]  # [N]
        if bkspc_masked is None:
            masked = torch.zeros_like(ids, dtype=torch.bool)  # [N]
        else:
            masked = bkspc_masked.to(device)[where]  # [N]
        count, size = hidden.shape[0], self._chunk_size
        checkpointed = self.recompute and torch.is_grad_enabled() and count > size
        value_parts, q_parts = [], []
        for start in range(0, count, size):
            part = slice(start, start + size)
            args = (hidden[part], ids[part], masked[part], bkspc_id)
            if checkpointed:
                value, q = checkpoint(self._chunk, *args, use_reentrant=False)
            else:
                value, q = self._chunk(*args)
            value_parts.append(value)
            q_parts.append(q)
        zeros = torch.zeros(states.shape, dtype=self.dtype, device=device)  # [B, T]
        if not value_parts:
            result = zeros, zeros.clone()
        else:
            values = zeros.index_put(where, torch.cat(value_parts))  # [B, T]
            next_q = zeros.index_put(where, torch.cat(q_parts))  # [B, T]
            result = values, next_q
        self._cache = (key, result)
        return result

    def _chunk(
        self,
        hidden: torch.Tensor,
        ids: torch.Tensor,
        masked: torch.Tensor,
        bkspc_id: int | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LM head, ``<bkspc>`` mask, log-sum-exp and gather of one chunk of ``n`` states."""
        logits = self._head(hidden)  # [n, V]
        if bkspc_id is not None:
            logits[:, bkspc_id] = logits[:, bkspc_id].masked_fill(masked, float("-inf"))
        values = torch.logsumexp(logits, dim=-1)  # [n]
        q = logits.gather(-1, ids[:, None]).squeeze(-1)  # [n]
        return values, q


def _head_dtype(head: torch.nn.Module, hidden: torch.Tensor) -> torch.dtype:
    """The dtype the head computes in: that of its first floating parameter."""
    for parameter in head.parameters():
        if parameter.dtype.is_floating_point:
            return parameter.dtype
    return hidden.dtype


def _same_key(a: tuple, b: tuple) -> bool:
    """Equal cache keys: same flags, and tensors equal in shape and content."""
    if a[:2] != b[:2]:
        return False
    for x, y in zip(a[2:], b[2:], strict=True):
        if (x is None) != (y is None):
            return False
        if x is not None and (x.shape != y.shape or not torch.equal(x, y.to(x.device))):
            return False
    return True
