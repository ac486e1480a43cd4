"""Noise drawn from the model's own next-token distribution (the ``model`` noise source)."""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch


class ModelSampleNoise:
    """Wrong tokens sampled from the model's own next-token distribution (SPEC section 5).

    ``probabilities[t]`` is the model's distribution after element ``t`` of the clean row
    ``prompt + completion`` (one batched forward gives every row's). The state of a noise
    insertion is located by its longest common prefix with the clean row, so inside a run of
    several wrong tokens the distribution at the run's start is reused.
    """

    def __init__(
        self, probabilities: torch.Tensor, clean_row: Sequence[int], exclude: Sequence[int]
    ) -> None:
        weights = probabilities.detach().double().cpu().clone()  # [T, V]
        weights[:, [i for i in exclude if 0 <= i < weights.shape[1]]] = 0.0
        self.weights = weights
        self.clean_row = list(clean_row)

    def __call__(self, prefix: list[int], correct: int, rng: random.Random) -> int:
        shared = 0
        for mine, theirs in zip(prefix, self.clean_row, strict=False):
            if mine != theirs:
                break
            shared += 1
        row = self.weights[max(shared, 1) - 1].clone()  # [V]
        if 0 <= correct < row.shape[0]:
            row[correct] = 0.0
        total = float(row.sum())
        if total <= 0.0:
            raise ValueError("the model puts no probability on any allowed wrong token")
        cumulative = row.cumsum(0)
        return int(
            torch.searchsorted(cumulative, torch.tensor(rng.random() * total)).clamp(
                max=row.shape[0] - 1
            )
        )
