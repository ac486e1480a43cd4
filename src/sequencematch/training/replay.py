"""The replay buffer: the model's own samples that the SequenceMatch loss trains on.

Every ``refresh_every`` steps the trainer samples the current model on data prompts and
adds the traces here. The buffer keeps the newest ``capacity`` traces: when it is full the
oldest leave first. Each step then draws its model rows in one of two ways:

- ``uniform``: uniformly over the whole buffer, with replacement (a trace may appear twice
  in one step, and traces stay up to ``capacity / samples_per_refresh`` refills old);
- ``fresh``: without replacement, newest refill first; within a refill the steps after it
  cycle through one fixed shuffle, so every trace of the refill is used about equally
  often. Older refills are only used when the newest holds fewer traces than a step needs.

Every trace remembers the step it was sampled at, so each step can report the mean age of
its model rows (``sample/age`` in ``metrics.jsonl``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .options import REPLAY_DRAWS


@dataclass(frozen=True)
class Trace:
    """One model sample: prompt ids, the action trace after it, the step it was sampled at."""

    prompt: list[int]
    actions: list[int]
    sampled_at: int = 0


class ReplayBuffer:
    """First in, first out store of :class:`Trace` (oldest first)."""

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"replay capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.seed = seed
        self.traces: list[Trace] = []

    def __len__(self) -> int:
        return len(self.traces)

    def __iter__(self) -> Iterator[Trace]:
        return iter(self.traces)

    def add(self, samples: Sequence[tuple[list[int], list[int]]], step: int) -> None:
        """Append ``(prompt, actions)`` samples taken at ``step``; the oldest leave first."""
        self.traces.extend(Trace(list(p), list(a), step) for p, a in samples)
        del self.traces[: max(0, len(self.traces) - self.capacity)]

    def draw(self, count: int, step: int, how: str = "uniform") -> list[Trace]:
        """The ``count`` model rows of ``step`` (a function of the buffer, seed and step)."""
        if not self.traces:
            raise ValueError("the replay buffer is empty: refill it before drawing model rows")
        if how == "uniform":
            rng = random.Random(f"{self.seed}-replay-{step}")
            return [self.traces[rng.randrange(len(self.traces))] for _ in range(count)]
        if how == "fresh":
            return self._fresh(count, step)
        raise ValueError(f"unknown replay draw {how!r}; choose one of {REPLAY_DRAWS}")

    def _fresh(self, count: int, step: int) -> list[Trace]:
        refills: dict[int, list[Trace]] = {}
        for trace in self.traces:
            refills.setdefault(trace.sampled_at, []).append(trace)
        for sampled_at, group in refills.items():
            random.Random(f"{self.seed}-fresh-{sampled_at}").shuffle(group)
        picked: list[Trace] = []
        while len(picked) < count:  # more passes only when the whole buffer is too small
            for sampled_at in sorted(refills, reverse=True):
                group = refills[sampled_at]
                take = min(count - len(picked), len(group))
                offset = max(0, step - sampled_at) * take
                picked += [group[(offset + i) % len(group)] for i in range(take)]
                if len(picked) == count:
                    break
        return picked

    @staticmethod
    def mean_age(traces: Sequence[Trace], step: int) -> float:
        """Mean number of steps since ``traces`` were sampled, seen from ``step``."""
        return sum(step - t.sampled_at for t in traces) / max(1, len(traces))

    def state_dict(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "traces": [(t.prompt, t.actions, t.sampled_at) for t in self.traces],
        }

    def load_state_dict(self, state: dict[str, Any] | list, step: int = 0) -> None:
        """Restore :meth:`state_dict`; a bare list of ``(prompt, actions)`` (the older
        checkpoint format) counts as sampled at ``step``."""
        entries = state["traces"] if isinstance(state, dict) else state
        self.traces = [
            Trace(list(e[0]), list(e[1]), int(e[2]) if len(e) > 2 else step) for e in entries
        ]
