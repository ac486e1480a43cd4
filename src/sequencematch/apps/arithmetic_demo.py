"""The main job: MLE, MLE+<bkspc> and SequenceMatch-chi2+<bkspc> on arithmetic, compared.

All three models have the same size, see the same data batches for the same number of
optimiser steps, and are evaluated on the held-out test split under the forced-noise
protocol (a random answer character forced with probability p per generated step).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..tasks.arithmetic import PROMPT_SEPARATOR, ArithmeticQuestion
from ..tasks.arithmetic_eval import ArithmeticEval, noise_sweep
from ..training.config import TrainConfig
from .parallel import (
    describe_schedule,
    run_jobs,
    schedule_note,
    schedule_record,
    training_job,
)
from .plotting import clear_previous_runs, pyplot
from .setup import prepare_run, task_file

NOISE_LEVELS = (0.0, 0.05, 0.1, 0.2)
METHODS = ("mle", "mle-bkspc", "sequencematch-chi2-bkspc")


@dataclass
class DemoSettings:
    """Sizes of the demo; :meth:`quick` is the one-minute version used by the tests."""

    steps: int = 1250
    sm_steps: int = 420
    batch_size: int = 32
    hidden_size: int = 128
    num_layers: int = 4
    n_train: int = 5000
    n_test: int = 1000
    n_valid: int = 400
    difficulty: list[float] = field(default_factory=lambda: [2.0, 8.0])
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
    levels: tuple[float, ...] = NOISE_LEVELS

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(steps=60, sm_steps=20, n_train=400, n_test=60, n_valid=20, hidden_size=48,
                   num_layers=2, refresh_every=10, sm_ramp_steps=5)  # fmt: skip


def method_configs(settings: DemoSettings, out: Path) -> dict[str, TrainConfig]:
    """One training configuration per method, identical but for what defines the method."""
    common = dict(
        task="arithmetic", model="tiny_llama", hidden_size=settings.hidden_size,
        num_layers=settings.num_layers, num_heads=4, n_train=settings.n_train,
        n_valid=settings.n_valid, n_test=settings.n_test, difficulty=list(settings.difficulty),
        steps=settings.steps,
        batch_size=settings.batch_size, lr=settings.lr, warmup_steps=min(100, settings.steps // 10),
        seed=settings.seed, log_every=25, save_every=0, max_new_tokens=16,
        noise_source=settings.noise_source,
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
            refresh_every=settings.refresh_every, samples_per_refresh=64, replay_size=256,
            model_batch_size=16, output_dir=str(out / "sequencematch-chi2-bkspc"),
        ),
    }  # fmt: skip


def train_and_evaluate(
    config: TrainConfig, levels: Sequence[float], progress: bool = True, split: str = "test"
) -> tuple[list[ArithmeticEval], float]:
    """Train one method, save it, and evaluate it at every noise level on the held-out
    ``split`` (``"valid"`` for tuning, ``"test"`` for reported results)."""
    from ..training.trainer import Trainer

    inputs = prepare_run(config.replace(progress=progress))
    trainer = Trainer(
        config.replace(progress=progress), inputs.model, inputs.tokenizer, inputs.train,
        model_files=task_file(inputs.task_info), task_noise=inputs.task_noise,
    )  # fmt: skip
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    pairs = inputs.test_pairs if split == "test" else inputs.valid_pairs
    questions = [ArithmeticQuestion(p.removesuffix(PROMPT_SEPARATOR), c) for p, c in pairs]
    results = noise_sweep(
        trainer.model, trainer.tokenizer, questions, bkspc_id=trainer.bkspc_id, levels=levels,
        seed=config.seed, max_new_tokens=config.sample_length(),
    )  # fmt: skip
    return results, seconds


def run_demo(
    out: Path,
    settings: DemoSettings,
    progress: bool = True,
    workers: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train and evaluate the three methods; write report.md, the plot and results.json.

    ``workers`` processes train the methods at once (default: all three; 1 = one after
    the other in this process), see :mod:`sequencematch.apps.parallel`. An earlier demo in
    ``out`` is replaced only with ``overwrite`` (see :func:`clear_previous_runs`).
    """
    out.mkdir(parents=True, exist_ok=True)
    clear_previous_runs(out, METHODS, overwrite)
    configs = method_configs(settings, out)
    schedule = schedule_record(workers, len(configs))
    workers = schedule["workers"]
    results: dict[str, Any] = {"settings": asdict(settings), "methods": {}, **schedule}
    bars = progress and workers <= 1  # parallel runs report through the status line
    jobs = {
        name: training_job(train_and_evaluate, config, settings.levels, bars)
        for name, config in configs.items()
    }
    print(describe_schedule(jobs, workers), flush=True)
    finished: dict[str, Any] = {}
    for name, (evaluations, seconds) in run_jobs(jobs, workers, progress):
        finished[name] = {
            "train_seconds": round(seconds, 1),
            "sweep": [e.as_dict() for e in evaluations],
        }
        print(format_row(name, evaluations), flush=True)
    results["methods"] = {name: finished[name] for name in configs}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    table = format_table(results)
    plot_path = plot_sweep(results, out / "accuracy_vs_noise.png")
    (out / "report.md").write_text(report_text(results, table, plot_path))
    print()
    print(table)
    print(f"\nreport: {out / 'report.md'}")
    return results


def format_row(name: str, evaluations: Sequence[ArithmeticEval]) -> str:
    cells = [f"{e.accuracy:.3f} [{e.ci_low:.3f}, {e.ci_high:.3f}]" for e in evaluations]
    return f"| {name} | " + " | ".join(cells) + " |"


def format_table(results: dict[str, Any]) -> str:
    """Markdown table: exact-match accuracy [95% Wilson interval] per forced-noise level."""
    levels = results["settings"]["levels"]
    header = "| method | " + " | ".join(f"p={p:g}" for p in levels) + " | <bkspc> rate at p=0.1 |"
    lines = [header, "|---" * (len(levels) + 2) + "|"]
    for name, entry in results["methods"].items():
        cells = [
            f"{e['accuracy']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}]" for e in entry["sweep"]
        ]
        at_01 = [e for e in entry["sweep"] if abs(e["noise_prob"] - 0.1) < 1e-9]
        rate = f"{at_01[0]['bkspc_rate']:.3f}" if at_01 else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {rate} |")
    return "\n".join(lines)


def plot_sweep(results: dict[str, Any], path: Path) -> Path | None:
    """Accuracy against forced-noise level, one line per method, with 95% intervals."""
    plt = pyplot()
    if plt is None:
        return None
    figure, axes = plt.subplots(figsize=(6, 4))
    for name, entry in results["methods"].items():
        levels = [e["noise_prob"] for e in entry["sweep"]]
        accuracy = [e["accuracy"] for e in entry["sweep"]]
        low = [a - e["ci_low"] for a, e in zip(accuracy, entry["sweep"], strict=True)]
        high = [e["ci_high"] - a for a, e in zip(accuracy, entry["sweep"], strict=True)]
        axes.errorbar(levels, accuracy, yerr=[low, high], marker="o", capsize=3, label=name)
    axes.set_xlabel("forced-noise probability per generated step")
    axes.set_ylabel("exact-match accuracy (test split)")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _warmup_text(settings: dict[str, Any]) -> str:
    if settings.get("regularise_warmup"):
        return "its warm-up trained on MLE plus the chi2 regulariser on data transitions"
    return f"its weight ramped in over {settings['sm_ramp_steps']} steps"


def report_text(results: dict[str, Any], table: str, plot: Path | None) -> str:
    settings = results["settings"]
    timing = ", ".join(
        f"{name} {entry['train_seconds']:.0f} s" for name, entry in results["methods"].items()
    )
    lines = [
        "# SequenceMatch demo: arithmetic in bases 2-16 under forced noise",
        "",
        f"Task: `add_or_sub_in_base` questions, operand entropy {settings['difficulty']} bits, "
        f"{settings['n_train']} training and {settings['n_test']} held-out test questions "
        f"(seed {settings['seed']}). Every method trains the same model size "
        f"({settings['num_layers']} layers, width {settings['hidden_size']}) for "
        f"{settings['steps']} steps of {settings['batch_size']} sequences; SequenceMatch "
        f"spends its last {settings['sm_steps']} steps on the SequenceMatch-chi2 objective "
        f"(alpha {settings['alpha']}, gamma {settings['gamma']}, lambda_mle "
        f"{settings['lambda_mle']}, {_warmup_text(settings)}) with model samples refreshed "
        f"every {settings['refresh_every']} steps. Noise-augmented demonstrations: p_noise "
        f"{settings['p_noise']}, source `{settings['noise_source']}`.",
        "",
        "Exact-match accuracy on the test split, greedy decoding, with 95% Wilson intervals; "
        "p is the probability that a random answer character is forced instead of the "
        "model's choice at each generated step:",
        "",
        table,
        "",
        f"Training time: {timing}{schedule_note(results)}.",
    ]
    if plot is not None:
        lines += ["", f"![accuracy against forced noise]({plot.name})"]
    return "\n".join(lines) + "\n"
