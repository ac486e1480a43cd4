"""Reading logits as a soft Q-function: Q, V and V' of every action transition of a batch.

The logits of a row are read as a soft Q-function (docs/method.md): ``logits[b, t]`` is
``Q(s_t, .)`` for the state reached after element ``t``. The action at element ``t``
(``P <= t < L``) is the transition ``s = state after t-1 -> s' = state after t``, so its
``Q(s, a)`` is ``logits[b, t-1, a]``, its ``V(s)`` is the logsumexp of ``logits[b, t-1]`` and
its ``V(s')`` the logsumexp of ``logits[b, t]`` (over valid actions only: ``<bkspc>`` is
invalid in a state with no generated token left).

:func:`transitions` is the only place the objectives touch logits: it returns ``[B, T]``
tensors (:class:`Transitions`), and every loss of :mod:`.objectives` is computed from those.
Pass float32 (or float64) logits: bfloat16 cannot represent ``V`` to the precision the
rewards ``r = Q - gamma V'`` need.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .actions import Batch
from .chunked_logits import ChunkedLogits
from .layout import validate_rows, visible_lengths


@dataclass(frozen=True)
class Transitions:
    """Per-transition quantities, ``[B, T]``, aligned on the action element ``t``.

    Entries are zero (``False``) outside action elements (prompt and padding).

    Attributes:
        q: ``Q(s, a)``, the logit of the action taken in the state before it.
        v: ``V(s)``, logsumexp over the valid actions of that state.
        v_next: ``V(s')`` of the state after the action; after ``<eos>`` the absorbing
            terminal state's: ``0``, or its learned ``b`` (``learned_terminal``).
        done: ``True`` where the action is ``<eos>``.
        mask: ``True`` at action elements that are expert transitions (the ones any loss
            averages over; inserted noise actions of data rows are ``False``).
        step: ``t - P``, the action index after the prompt (backspaces and noise count),
            used for the ``gamma ** step`` weights.
        action: ``True`` at every action element (expert or not).

    ``noise`` (a property): action elements that are not expert transitions (the inserted
    wrong tokens of data rows).
    """

    q: torch.Tensor
    v: torch.Tensor
    v_next: torch.Tensor
    done: torch.Tensor
    mask: torch.Tensor
    step: torch.Tensor
    action: torch.Tensor

    @property
    def noise(self) -> torch.Tensor:
        """``[B, T]`` ``True`` at action elements that are no expert transition."""
        return self.action & ~self.mask

    def reward(self, gamma: float) -> torch.Tensor:
        """Implicit reward ``r = Q(s,a) - gamma * V(s')``, ``[B, T]`` (``V(s')`` is ``0`` after
        ``<eos>`` unless the terminal value is learned)."""
        return self.q - gamma * self.v_next

    def value_difference(self, gamma: float) -> torch.Tensor:
        """``V(s) - gamma * V(s')``, ``[B, T]`` (the value-term integrand)."""
        return self.v - gamma * self.v_next

    def weights(self, gamma: float) -> torch.Tensor:
        """``gamma ** step`` on masked transitions, ``0`` elsewhere, ``[B, T]``."""
        w = torch.pow(torch.as_tensor(gamma, dtype=self.q.dtype, device=self.q.device), self.step)
        return torch.where(self.mask, w, 0.0)


def _check_logits(logits: torch.Tensor, batch: Batch, name: str) -> None:
    """Raise ``ValueError`` when ``logits`` do not fit ``batch``."""
    if logits.dim() != 3:
        raise ValueError(f"{name} must be [batch, time, vocab], got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {logits.dtype}")
    if tuple(logits.shape[:2]) != tuple(batch.sequences.shape):
        raise ValueError(
            f"{name} has shape {tuple(logits.shape)} but the batch sequences are "
            f"{tuple(batch.sequences.shape)}: the first two dimensions must match"
        )
    if tuple(batch.expert.shape) != tuple(batch.sequences.shape):
        raise ValueError(
            f"batch.expert has shape {tuple(batch.expert.shape)}, expected "
            f"{tuple(batch.sequences.shape)} (one flag per element)"
        )
    if batch.expert.dtype != torch.bool:
        raise ValueError(f"batch.expert must be a bool tensor, got dtype {batch.expert.dtype}")


def _check_special(token_id: int | None, vocab: int, what: str) -> None:
    if token_id is not None and not 0 <= token_id < vocab:
        raise ValueError(f"{what}={token_id} is outside the logits' vocabulary of size {vocab}")


def transitions(
    logits: torch.Tensor | ChunkedLogits,
    batch: Batch,
    bkspc_id: int | None,
    eos_id: int | None,
    *,
    offsets: torch.Tensor | None = None,
    normalise: bool = False,
    learned_terminal: bool = True,
) -> Transitions:
    """Q, V, V' and flags of every action transition of a batch (see module doc).

    How logits are read as Q (docs/method.md, "Reading logits as Q"): by default
    ``Q = logits``. ``offsets``
    (``[B, T]``, one scalar ``b(s)`` per state after each element) are added to every Q of
    that state; with ``normalise`` the logits are first replaced by their log-softmax, so
    ``Q = log pi + b`` and ``V = b``. The policy ``softmax(Q)`` is the same in all three
    readings, and so is ``V(s) - Q(s, a) = -log pi(a|s)``.

    ``learned_terminal``: the state after ``<eos>`` is an absorbing state whose value is
    learned, ``V(s')`` read at the ``<eos>`` element in the reading's own way (the log-sum-exp
    of its logits, plus ``b`` with offsets; ``b`` alone when normalised), instead of ``0``
    (docs/method.md, "Terminal states"). Those logits serve nothing else: no action is taken
    after ``<eos>``. Without it, the level of Q at a finished answer is pinned by the terminal
    alone: ``r_eos = Q(s, <eos>)``, and a level above ``2 alpha / (1 - lambda_mle)`` makes the
    objective itself lower ``P(<eos>)``.

    ``<bkspc>`` is masked to ``-inf`` in every state whose visible length equals the prompt
    length (it would delete the prompt), so it never enters ``V`` there. ``bkspc_id=None``:
    no backspace in the vocabulary, nothing is masked; ``eos_id=None``: no terminal action
    (every row bootstraps from its last state).

    Logits of rows that are no state of any transition (padding, all prompt elements but
    the last, the state after ``<eos>``) are replaced by zeros first, so arbitrary (even
    non-finite) values there change nothing and receive an exact zero gradient.

    ``logits`` may be a :class:`~sequencematch.core.chunked_logits.ChunkedLogits`: the same
    quantities are then read a chunk of states at a time, without the full ``[B, T, V]``
    tensor (the rows it holds are the model's own, finite, so only padding and prompt rows
    are skipped).

    Raises:
        ValueError: shapes, ids or rows are invalid (e.g. a ``<bkspc>`` into the prompt).
    """
    _check_logits(logits, batch, "logits")
    _, time, vocab = logits.shape
    _check_special(bkspc_id, vocab, "bkspc_id")
    _check_special(eos_id, vocab, "eos_id")
    if bkspc_id is not None and vocab < 2:
        raise ValueError("with a <bkspc> id the vocabulary needs at least one other action")
    sequences, prompt_lengths, lengths = batch.sequences, batch.prompt_lengths, batch.lengths
    validate_rows(sequences, prompt_lengths, lengths, bkspc_id, vocab_size=vocab)

    device = logits.device
    index = torch.arange(time, device=device)  # [T]
    prompt = prompt_lengths.to(device)[:, None]  # [B, 1]
    length = lengths.to(device)[:, None]  # [B, 1]
    sequences = sequences.to(device)
    action = (index[None, :] >= prompt) & (index[None, :] < length)  # [B, T]
    done = action & (sequences == eos_id) if eos_id is not None else torch.zeros_like(action)
    mask = action & batch.expert.to(device)  # [B, T]

    # Rows that are a state of some transition: s of the action at t+1, s' of a
    # non-terminal action at t. Everything else is zeroed (no leak, no NaN gradient).
    next_is_action = torch.zeros_like(action)
    next_is_action[:, :-1] = action[:, 1:]  # [B, T] element t+1 is an action
    is_state = next_is_action | (action & ~done)  # [B, T]
    if learned_terminal:  # the absorbing state after <eos> is read for its value
        is_state = is_state | done  # [B, T]
    at_boundary = None
    if bkspc_id is not None:
        depths = visible_lengths(sequences, prompt_lengths.to(device), length[:, 0], bkspc_id)
        at_boundary = depths <= prompt  # [B, T] no generated token to delete
    # The action taken from the state after element t is element t+1 (pad ids may be anything).
    next_ids = torch.zeros_like(sequences)  # [B, T]
    next_ids[:, :-1] = sequences.clamp(0, vocab - 1)[:, 1:]

    if isinstance(logits, ChunkedLogits):
        # The state after <eos> is read too (its logits are finite and its value is dropped
        # below), so the MLE and SequenceMatch terms read the same states, computed once.
        values, next_q = logits.state_values(next_is_action | action, next_ids, at_boundary,
                                             bkspc_id)  # fmt: skip
    else:
        values, next_q = _dense_state_values(logits, is_state, next_ids, at_boundary, bkspc_id)
    if normalise:  # Q = log pi (+ b): the logits' own log-sum-exp is not read as value
        next_q = next_q - values  # [B, T] log pi(next action | state)
        values = torch.zeros_like(values)  # [B, T]
    if offsets is not None:
        if tuple(offsets.shape) != tuple(values.shape):
            raise ValueError(
                f"offsets must be one value per state, shape {tuple(values.shape)}, got "
                f"{tuple(offsets.shape)}"
            )
        offsets = offsets.to(values.dtype)
        values = values + torch.where(is_state | action, offsets, 0.0)  # [B, T]
        next_q = next_q + torch.where(is_state | action, offsets, 0.0)  # [B, T]
    # Shift by one: the transition of element t starts in the state after element t-1.
    q = torch.zeros_like(values)  # [B, T]
    v = torch.zeros_like(values)  # [B, T]
    q[:, 1:] = next_q[:, :-1]
    v[:, 1:] = values[:, :-1]
    zero = torch.zeros((), dtype=logits.dtype, device=device)
    q = torch.where(action, q, zero)
    v = torch.where(action, v, zero)
    # V(s'): 0 after <eos> unless the absorbing state's value is learned.
    v_next = torch.where(action & (~done | learned_terminal), values, zero)  # [B, T]
    step = torch.where(action, index[None, :] - prompt, 0).to(logits.dtype)  # [B, T]
    return Transitions(q=q, v=v, v_next=v_next, done=done, mask=mask, step=step, action=action)


def _dense_state_values(
    logits: torch.Tensor,
    is_state: torch.Tensor,
    next_ids: torch.Tensor,
    at_boundary: torch.Tensor | None,
    bkspc_id: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``V`` of the state after each element and its logit of the next action, ``[B, T]`` each,
    from a full ``[B, T, V]`` logits tensor (rows that are no state read as zeros)."""
    safe = logits.masked_fill(~is_state[..., None], 0.0)  # [B, T, V]
    if bkspc_id is not None:
        safe[..., bkspc_id] = safe[..., bkspc_id].masked_fill(at_boundary, float("-inf"))
    values = torch.logsumexp(safe, dim=-1)  # [B, T]
    next_q = safe.gather(-1, next_ids[..., None]).squeeze(-1)  # [B, T]
    return values, next_q
