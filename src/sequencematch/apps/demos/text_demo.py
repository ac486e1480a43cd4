"""The text demo: MLE, MLE+<bkspc>, offline chi2+<bkspc> and SequenceMatch on Shakespeare, paired.

The settings below are the text demo's sizes; the harness
(:mod:`.harness`) trains one shared MLE warm-up per seed and the four
methods from it, and the text task evaluates them on the same prompts cut from held-out
works: MAUVE against the human continuations (mean and spread over k-means seeds),
repetition, diversity and n-gram entropy of the sampled continuations, perplexity and
``<bkspc>`` usage; two methods of one seed are compared by a bootstrap over prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from ...tasks.base import EvalOptions
from ...training.config import TrainConfig
from . import harness
from .harness import ComparisonSettings
from .methods import COMPARED_METHODS

__all__ = ["COMPARED_METHODS", "TextDemoSettings", "method_configs", "train_and_evaluate_text"]


@dataclass
class TextDemoSettings(ComparisonSettings):
    """Sizes of the text demo; :meth:`quick` is the short version used by the tests."""

    task: ClassVar[str] = "text"
    default_out: ClassVar[str] = "runs/demo-text"
    replay: ClassVar[dict[str, int]] = {
        "samples_per_refresh": 32, "replay_size": 128, "model_batch_size": 8
    }  # fmt: skip

    corpus: str | None = None  # None: Shakespeare; else a text file, folder or JSONL
    seeds: int = 3
    warmup_steps: int = 800
    steps: int = 400
    batch_size: int = 16
    vocab_size: int = 2048
    prompt_tokens: int = 32
    completion_tokens: int = 64
    n_train: int = 0  # 0: every training window
    n_valid: int = 200
    n_test: int = 300
    warmup_lr: float = 2e-3
    lr: float = 1e-3
    noise_source: str = "uniform"
    mauve_seeds: int = 5
    bootstrap_resamples: int = 100  # per seed, over prompts (MAUVE recomputed on each)

    @classmethod
    def quick(cls, corpus: str | None = None) -> TextDemoSettings:
        return cls(corpus=corpus, seeds=2, warmup_steps=20, steps=10, batch_size=8,
                   hidden_size=32, num_layers=1, vocab_size=300, prompt_tokens=8,
                   completion_tokens=12, n_train=200, n_valid=16, n_test=24, refresh_every=5,
                   mauve_seeds=2)  # fmt: skip

    @classmethod
    def pretrained(cls, model: str) -> TextDemoSettings:
        """The reduced comparison for a pretrained model: continuations of 128 of its tokens
        (compounding errors need room), a short full fine-tune, 100 test prompts, 3 seeds.
        No second probe of the ``<bkspc>`` row: on text it raised the perplexity of every
        ``<bkspc>`` method (docs/RESULTS.md, "on text with a second probe")."""
        return replace(super().pretrained(model), seeds=3, warmup_steps=30, steps=20,
                       batch_size=8, n_train=2000, n_valid=50, n_test=100, warmup_lr=1e-4,
                       lr=5e-5, lora_r=0, prompt_tokens=32, completion_tokens=128,
                       mauve_seeds=3, refresh_every=10)  # fmt: skip

    def task_config(self) -> dict[str, Any]:
        return {"train_file": self.corpus, "vocab_size": self.vocab_size,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens}  # fmt: skip

    def evaluation_options(self, encoder: Any = None) -> EvalOptions:
        return EvalOptions(seed=self.seed, mauve_seeds=tuple(range(self.mauve_seeds)),
                           encoder=encoder)  # fmt: skip


def method_configs(
    settings: TextDemoSettings, seed: int, start: Path, out: Path
) -> dict[str, TrainConfig]:
    """The four continuations of one seed (see :func:`.harness.method_configs`)."""
    return harness.method_configs(settings, seed, start, out)


def train_and_evaluate_text(
    config: TrainConfig,
    settings: TextDemoSettings,
    progress: bool = True,
    split: str = "test",
    encoder: Any = None,
) -> tuple[Any, float]:
    """Train one method, save it, and evaluate its samples on the held-out ``split``."""
    return harness.train_and_evaluate(config, settings.evaluation_options(encoder), progress, split)
