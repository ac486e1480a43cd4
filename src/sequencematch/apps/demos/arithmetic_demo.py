"""The main job: MLE, MLE+<bkspc>, offline chi2+<bkspc> and SequenceMatch on arithmetic, paired.

The settings below are the demo's sizes (docs/RESULTS.md says how they were measured to fit
about 12 minutes on 2 cores); the harness (:mod:`.harness`) trains one
shared MLE warm-up per seed and the four methods from it, and the arithmetic task evaluates
them on the held-out test split under the forced-noise protocol (a random answer character
forced with probability p per generated step).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from ...tasks.base import EvalOptions
from ...tasks.exact_match import ExactMatchEval
from ...training.config import TrainConfig
from . import harness
from .harness import ComparisonSettings
from .methods import COMPARED_METHODS

NOISE_LEVELS = (0.0, 0.05, 0.1, 0.2)

__all__ = [
    "COMPARED_METHODS",
    "NOISE_LEVELS",
    "DemoSettings",
    "method_configs",
    "train_and_evaluate",
]


@dataclass
class DemoSettings(ComparisonSettings):
    """Sizes of the arithmetic demo; :meth:`quick` is the one-minute version used by tests.

    Three seeds of a 600-step warm-up and four 250-step continuations fit about 12 minutes
    on 2 idle cores (docs/RESULTS.md: CPU seconds measured per job). p_noise 0.15 and the
    continuation's learning rate were chosen on the validation split (seeds 100 and 101):
    at p_noise 0.05, 250 steps from an MLE warm-up teach ``<bkspc>`` almost nothing (1-6%
    of forced tokens deleted by MLE+``<bkspc>``)."""

    task: ClassVar[str] = "arithmetic"
    default_out: ClassVar[str] = "runs/demo"

    seeds: int = 3
    warmup_steps: int = 600
    steps: int = 250
    batch_size: int = 32
    n_train: int = 5000
    n_test: int = 500
    n_valid: int = 200
    difficulty: list[float] = field(default_factory=lambda: [2.0, 8.0])
    warmup_lr: float = 3e-3
    lr: float = 1e-3
    p_noise: float = 0.15
    noise_source: str = "task"
    levels: tuple[float, ...] = NOISE_LEVELS
    sampled_levels: tuple[float, ...] = (0.0,)  # also evaluated with answers sampled at T=1

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(seeds=2, warmup_steps=40, steps=16, n_train=400, n_test=60, n_valid=20,
                   hidden_size=48, num_layers=2, refresh_every=8)  # fmt: skip

    @classmethod
    def pretrained(cls, model: str) -> DemoSettings:
        """The reduced comparison for a pretrained model, at forced noise 0 and 0.1. Task
        noise 0.05 with the second probe: at 0.15 the fine-tuned row deletes about a tenth of
        right answers' last digits (docs/RESULTS.md, "noise 0.05 and a second probe")."""
        return replace(super().pretrained(model), levels=(0.0, 0.1), p_noise=0.05,
                       bkspc_reprobe=True)  # fmt: skip

    def task_config(self) -> dict[str, Any]:
        # Samples may show 16 tokens, more than the longest answer with its <eos> (9 tokens
        # at 2-8 bits, 13 at 6-12): a token forced at the end of a long answer can still be
        # deleted.
        return {"difficulty": list(self.difficulty), "max_new_tokens": 16}

    def evaluation_options(self) -> EvalOptions:
        return EvalOptions(seed=self.seed, levels=tuple(self.levels),
                           sampled_levels=tuple(self.sampled_levels), temperature=1.0)  # fmt: skip


def method_configs(
    settings: DemoSettings, seed: int, start: Path, out: Path
) -> dict[str, TrainConfig]:
    """The four continuations of one seed (see :func:`.harness.method_configs`)."""
    return harness.method_configs(settings, seed, start, out)


def train_and_evaluate(
    config: TrainConfig, levels: Sequence[float], progress: bool = True, split: str = "test"
) -> tuple[list[ExactMatchEval], float]:
    """Train one method, save it, and evaluate it at every forced-noise level on the
    held-out ``split`` (``"valid"`` for tuning, ``"test"`` for reported results)."""
    options = EvalOptions(levels=tuple(levels))
    return harness.train_and_evaluate(config, options, progress, split)
