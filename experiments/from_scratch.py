"""The earlier, unpaired protocol behind the older tables of docs/RESULTS.md.

Every method trains its own model from scratch (no shared warm-up) for the same number of
steps; SequenceMatch spends its first ``steps - sm_steps`` steps on the data-only objective
and its last ``sm_steps`` with model samples. ``sequencematch demo`` now runs the paired
protocol (:mod:`sequencematch.apps.demos.harness`); these settings keep the experiment scripts
reproducing the numbers recorded with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sequencematch.apps.demos import harness
from sequencematch.evaluation.text_evaluation import TextEval
from sequencematch.tasks.base import EvalOptions
from sequencematch.tasks.exact_match import ExactMatchEval
from sequencematch.training.config import TrainConfig

NOISE_LEVELS = (0.0, 0.05, 0.1, 0.2)


@dataclass
class ArithmeticSettings:
    """The arithmetic demo's sizes before the paired protocol."""

    task = "arithmetic"
    replay = {"samples_per_refresh": 64, "replay_size": 256, "model_batch_size": 16}

    steps: int = 1250
    sm_steps: int = 420
    batch_size: int = 32
    hidden_size: int = 128
    num_layers: int = 4
    n_train: int = 5000
    n_valid: int = 400
    n_test: int = 1000
    lr: float = 3e-3
    p_noise: float = 0.05
    noise_source: str = "task"
    alpha: float = 1.0
    gamma: float = 0.998
    lambda_mle: float = 0.5
    sm_ramp_steps: int = 0
    regularise_warmup: bool = True
    refresh_every: int = 25
    seed: int = 0
    difficulty: list[float] = field(default_factory=lambda: [2.0, 8.0])
    levels: tuple[float, ...] = NOISE_LEVELS

    def task_config(self) -> dict[str, Any]:
        return {"difficulty": list(self.difficulty), "max_new_tokens": 16}


@dataclass
class TextSettings:
    """The text demo's sizes before the paired protocol."""

    task = "text"
    replay = {"samples_per_refresh": 32, "replay_size": 128, "model_batch_size": 8}

    corpus: str | None = None
    steps: int = 1200
    sm_steps: int = 400
    batch_size: int = 16
    hidden_size: int = 128
    num_layers: int = 4
    vocab_size: int = 2048
    prompt_tokens: int = 32
    completion_tokens: int = 64
    n_train: int = 0
    n_valid: int = 200
    n_test: int = 300
    lr: float = 2e-3
    p_noise: float = 0.05
    noise_source: str = "uniform"
    alpha: float = 1.0
    gamma: float = 0.998
    lambda_mle: float = 0.5
    sm_ramp_steps: int = 0
    regularise_warmup: bool = True
    refresh_every: int = 25
    seed: int = 0
    mauve_seeds: int = 5

    def task_config(self) -> dict[str, Any]:
        return {"train_file": self.corpus, "vocab_size": self.vocab_size,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens}  # fmt: skip

    def evaluation_options(self, encoder: Any = None) -> EvalOptions:
        return EvalOptions(seed=self.seed, mauve_seeds=tuple(range(self.mauve_seeds)),
                           encoder=encoder)  # fmt: skip


def method_configs(settings: Any, out: Path) -> dict[str, TrainConfig]:
    """MLE, MLE+<bkspc> and SequenceMatch-chi2+<bkspc>, each from scratch. A run folder is
    replaced only where its marker proves an earlier run wrote it (``overwrite``: an
    unfinished run starts again; a folder holding anything else is refused, untouched)."""
    common = dict(
        overwrite=True,
        task=settings.task, model="tiny_llama", hidden_size=settings.hidden_size,
        num_layers=settings.num_layers, num_heads=4, n_train=settings.n_train,
        n_valid=settings.n_valid, n_test=settings.n_test, steps=settings.steps,
        batch_size=settings.batch_size, lr=settings.lr,
        warmup_steps=min(100, settings.steps // 10), seed=settings.seed, log_every=25,
        save_every=0, noise_source=settings.noise_source, **settings.task_config(),
    )  # fmt: skip
    return {
        "mle": TrainConfig(**common, method="mle", backspace=False, p_noise=0.0,
                           output_dir=str(out / "mle")),
        "mle-bkspc": TrainConfig(**common, method="mle", backspace=True,
                                 p_noise=settings.p_noise, output_dir=str(out / "mle-bkspc")),
        "sequencematch-chi2-bkspc": TrainConfig(
            **common, method="sequencematch", backspace=True, p_noise=settings.p_noise,
            divergence="chi2", alpha=settings.alpha, gamma=settings.gamma,
            lambda_mle=settings.lambda_mle, mle_warmup_steps=settings.steps - settings.sm_steps,
            sm_ramp_steps=settings.sm_ramp_steps, regularise_warmup=settings.regularise_warmup,
            refresh_every=settings.refresh_every, **settings.replay,
            output_dir=str(out / "sequencematch-chi2-bkspc"),
        ),
    }  # fmt: skip


def train_and_evaluate(
    config: TrainConfig, levels: tuple[float, ...], progress: bool = True, split: str = "test"
) -> tuple[list[ExactMatchEval], float]:
    """Train one arithmetic run and evaluate it at every forced-noise level."""
    return harness.train_and_evaluate(config, EvalOptions(levels=tuple(levels)), progress,
                                         split)  # fmt: skip


def train_and_evaluate_text(
    config: TrainConfig,
    settings: TextSettings,
    progress: bool = True,
    split: str = "test",
    encoder: Any = None,
) -> tuple[TextEval, float]:
    """Train one text run and evaluate its samples on the held-out ``split``."""
    result, seconds = harness.train_and_evaluate(
        config, settings.evaluation_options(encoder), progress, split
    )
    return result.eval, seconds
