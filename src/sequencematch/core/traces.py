"""Action traces as data: visible text without ``<eos>``, rendering with deletions, counts.

Pure functions of a :class:`~sequencematch.core.sampling.GenerationOutput`, testable
without a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from .sampling import GenerationOutput


def strip_eos(tokens: Sequence[int], eos_token_id: int | None) -> list[int]:
    """``tokens`` without one final ``<eos>`` (generation keeps it in the visible sequence)."""
    tokens = [int(token) for token in tokens]
    if eos_token_id is not None and tokens and tokens[-1] == eos_token_id:
        return tokens[:-1]
    return tokens


def format_trace(
    tokenizer: PreTrainedTokenizerBase,
    actions: Sequence[int],
    bkspc_id: int | None,
    forced: Sequence[bool] | None = None,
) -> str:
    """The action trace as text with its deletions visible, for reading samples.

    Each token is decoded on its own; a token that a later ``<bkspc>`` deleted is shown in
    brackets, so the trace ``1 2 <bkspc> 3`` reads ``1[2]3`` and ``1 2 <bkspc> <bkspc> 3``
    reads ``[1][2]3``. With ``forced``, forced-noise tokens get a ``*`` after them
    (``1[2*]3``). Special tokens such as ``<eos>`` are shown by name.
    """
    if forced is not None and len(forced) != len(actions):
        raise ValueError(f"{len(actions)} actions but {len(forced)} forced flags")
    pieces: list[str] = []
    deleted: list[bool] = []
    stack: list[int] = []  # indices into pieces of the visible tokens
    for step, action in enumerate(actions):
        if bkspc_id is not None and action == bkspc_id:
            if not stack:
                raise ValueError(f"the <bkspc> at action {step} has nothing to delete")
            deleted[stack.pop()] = True
            continue
        text = tokenizer.decode(
            [int(action)], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        if forced is not None and forced[step]:
            text += "*"
        stack.append(len(pieces))
        pieces.append(text)
        deleted.append(False)
    return "".join(f"[{p}]" if gone else p for p, gone in zip(pieces, deleted, strict=True))


@dataclass(frozen=True)
class TraceStatistics:
    """Counts over a set of action traces, and the rates derived from them.

    Attributes:
        rows: number of traces.
        actions: actions over all traces, ``<bkspc>`` included.
        bkspc: ``<bkspc>`` actions.
        forced: forced-noise actions.
        forced_deleted: forced tokens that a later ``<bkspc>`` deleted.
    """

    rows: int
    actions: int
    bkspc: int
    forced: int
    forced_deleted: int

    @property
    def bkspc_rate(self) -> float:
        """Fraction of all actions that are ``<bkspc>`` (pooled over traces)."""
        return self.bkspc / self.actions if self.actions else 0.0

    @property
    def forced_rate(self) -> float:
        """Fraction of all actions that were forced noise (pooled over traces)."""
        return self.forced / self.actions if self.actions else 0.0

    @property
    def forced_deleted_rate(self) -> float | None:
        """Of the forced tokens, the fraction deleted later; ``None`` when none was forced."""
        return self.forced_deleted / self.forced if self.forced else None

    @property
    def mean_actions(self) -> float:
        """Mean number of actions per trace."""
        return self.actions / self.rows if self.rows else 0.0


def trace_statistics(
    actions_list: Sequence[Sequence[int]],
    forced_list: Sequence[Sequence[bool]],
    bkspc_id: int | None,
) -> TraceStatistics:
    """Backspace and forced-noise counts of action traces (one entry per row).

    Each trace is walked with a stack of ``(token, forced?)`` pairs: a token pushes, a
    ``<bkspc>`` pops one; a forced pair popped by a backspace is a deleted forced token,
    however many steps later that happens. A forced ``<bkspc>`` (only with custom
    ``noise_token_ids``) counts as forced but deletes like any other.
    """
    if len(actions_list) != len(forced_list):
        raise ValueError(f"{len(actions_list)} action traces but {len(forced_list)} forced lists")
    actions = bkspc = forced = forced_deleted = 0
    for row, (trace, flags) in enumerate(zip(actions_list, forced_list, strict=True)):
        if len(trace) != len(flags):
            raise ValueError(f"row {row}: {len(trace)} actions but {len(flags)} forced flags")
        stack: list[bool] = []  # forced? of each visible generated token
        for step, (action, was_forced) in enumerate(zip(trace, flags, strict=True)):
            actions += 1
            forced += bool(was_forced)
            if bkspc_id is not None and action == bkspc_id:
                if not stack:
                    raise ValueError(f"row {row}: the <bkspc> at action {step} deletes nothing")
                bkspc += 1
                forced_deleted += stack.pop()
            else:
                stack.append(bool(was_forced))
    return TraceStatistics(len(actions_list), actions, bkspc, forced, forced_deleted)


def concatenate_outputs(outputs: Sequence[GenerationOutput]) -> GenerationOutput:
    """One :class:`GenerationOutput` holding the rows of several, in order."""
    return GenerationOutput(
        sequences=[row for out in outputs for row in out.sequences],
        actions=[row for out in outputs for row in out.actions],
        logprobs=[row for out in outputs for row in out.logprobs],
        forced=[row for out in outputs for row in out.forced],
        finished=[row for out in outputs for row in out.finished],
        prompts=[row for out in outputs for row in out.prompts],
    )
