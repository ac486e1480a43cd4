"""Action sequences with ``<bkspc>``: visible tokens, noise augmentation, batching.

Data has no backspaces. :func:`augment_with_noise` teaches recovery: before a data token
it may insert a wrong token followed by ``<bkspc>``. The wrong token is not an expert
action (the expert never takes it) and is flagged so in the returned expert mask; the
``<bkspc>`` that removes it is.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

NoiseSource = Callable[[list[int], int, random.Random], int]
"""``source(visible_prefix, correct_next, rng) -> wrong token id`` (``correct_next`` may be -1
when no data token follows, i.e. the next correct action would end the sequence)."""


def apply_backspaces(actions: Sequence[int], bkspc_id: int | None) -> list[int]:
    """Visible tokens left after applying ``actions`` (``<bkspc>`` deletes the last token).

    Raises:
        ValueError: a ``<bkspc>`` with nothing left to delete.
    """
    visible: list[int] = []
    for step, action in enumerate(actions):
        if bkspc_id is not None and action == bkspc_id:
            if not visible:
                raise ValueError(
                    f"the <bkspc> at action {step} has nothing to delete: backspaces may only "
                    "remove generated tokens, never the prompt"
                )
            visible.pop()
        else:
            visible.append(int(action))
    return visible


class UniformNoise:
    """Wrong tokens drawn uniformly from ``candidates`` (by default every id below
    ``vocab_size`` except ``exclude``)."""

    def __init__(
        self,
        vocab_size: int,
        exclude: Sequence[int] = (),
        candidates: Sequence[int] | None = None,
    ) -> None:
        excluded = set(exclude)
        pool = range(vocab_size) if candidates is None else candidates
        self.candidates = [int(token) for token in pool if token not in excluded]
        if len(self.candidates) < 2:
            raise ValueError("noise needs at least two candidate tokens to pick a wrong one")

    def __call__(self, prefix: list[int], correct: int, rng: random.Random) -> int:
        while True:
            token = self.candidates[rng.randrange(len(self.candidates))]
            if token != correct:
                return token


class UnigramNoise:
    """Wrong tokens drawn in proportion to corpus counts (``counts[i]`` for token ``i``)."""

    def __init__(self, counts: Sequence[float] | torch.Tensor, exclude: Sequence[int] = ()) -> None:
        weights = [float(c) for c in (counts.tolist() if torch.is_tensor(counts) else counts)]
        for token in exclude:
            if 0 <= token < len(weights):
                weights[token] = 0.0
        if any(w < 0 for w in weights):
            raise ValueError("unigram counts must be non-negative")
        if sum(1 for w in weights if w > 0) < 2:
            raise ValueError("unigram noise needs at least two tokens with positive counts")
        self.cumulative = list(itertools.accumulate(weights))

    def __call__(self, prefix: list[int], correct: int, rng: random.Random) -> int:
        total = self.cumulative[-1]
        while True:
            token = bisect.bisect_right(self.cumulative, rng.random() * total)
            token = min(token, len(self.cumulative) - 1)
            if token != correct and self.cumulative[token] > (
                self.cumulative[token - 1] if token else 0.0
            ):
                return token


def augment_with_noise(
    prompt: Sequence[int],
    completion: Sequence[int],
    bkspc_id: int,
    p_noise: float,
    source: NoiseSource,
    rng: random.Random,
    max_run: int = 1,
) -> tuple[list[int], list[bool]]:
    """Insert wrong tokens, each run undone by as many ``<bkspc>``, into a completion.

    Before each completion token, with probability ``p_noise``, a run of wrong tokens is
    inserted (the run grows by one more token with probability ``p_noise``, up to
    ``max_run``), then as many backspaces.

    Returns:
        ``(actions, expert)``: the augmented actions after the prompt, and per action
        whether it is an expert transition (``False`` only for inserted wrong tokens).
    """
    if not 0.0 <= p_noise <= 1.0:
        raise ValueError(f"p_noise must lie in [0, 1], got {p_noise}")
    if max_run < 1:
        raise ValueError(f"max_run must be at least 1, got {max_run}")
    visible = list(prompt)
    actions: list[int] = []
    expert: list[bool] = []
    for token in completion:
        if p_noise > 0 and rng.random() < p_noise:
            run = 1
            while run < max_run and rng.random() < p_noise:
                run += 1
            correct = int(token)
            for _ in range(run):
                wrong = int(source(visible, correct, rng))
                if wrong == bkspc_id:
                    raise ValueError("the noise source returned <bkspc>; it must return tokens")
                actions.append(wrong)
                expert.append(False)
                visible.append(wrong)
                correct = -1  # after a wrong token, no data token is the right next one
            for _ in range(run):
                actions.append(bkspc_id)
                expert.append(True)
                visible.pop()
        actions.append(int(token))
        expert.append(True)
        visible.append(int(token))
    return actions, expert


@dataclass(frozen=True)
class Batch:
    """A right-padded batch of ``[prompt + actions]`` rows.

    Attributes:
        sequences: ``[B, T]`` token ids, padded with ``pad_id``.
        prompt_lengths: ``[B]``.
        lengths: ``[B]`` prompt + actions.
        expert: ``[B, T]`` ``True`` at action elements that are expert transitions.
    """

    sequences: torch.Tensor
    prompt_lengths: torch.Tensor
    lengths: torch.Tensor
    expert: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(tensor.to(device) for tensor in self.__dict__.values()))


def collate(
    prompts: Sequence[Sequence[int]],
    actions: Sequence[Sequence[int]],
    expert: Sequence[Sequence[bool]] | None = None,
    pad_id: int = 0,
) -> Batch:
    """Pad rows of ``prompt + actions`` into a :class:`Batch` (``expert`` defaults to all)."""
    if len(prompts) != len(actions):
        raise ValueError(f"{len(prompts)} prompts but {len(actions)} action sequences")
    if expert is not None and any(len(e) != len(a) for e, a in zip(expert, actions, strict=True)):
        raise ValueError("each expert mask must have one entry per action")
    lengths = [len(p) + len(a) for p, a in zip(prompts, actions, strict=True)]
    width = max(lengths, default=0)
    sequences = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    expert_mask = torch.zeros((len(prompts), width), dtype=torch.bool)
    for row, (prompt, row_actions) in enumerate(zip(prompts, actions, strict=True)):
        sequences[row, : lengths[row]] = torch.tensor([*prompt, *row_actions], dtype=torch.long)
        flags = [True] * len(row_actions) if expert is None else list(expert[row])
        expert_mask[row, len(prompt) : lengths[row]] = torch.tensor(flags, dtype=torch.bool)
    return Batch(
        sequences,
        torch.tensor([len(p) for p in prompts], dtype=torch.long),
        torch.tensor(lengths, dtype=torch.long),
        expert_mask,
    )
