"""The comparison harness behind both demos: MLE, MLE+<bkspc> and SequenceMatch, compared.

Every method trains the same model size on the same data batches for the same number of
optimiser steps, and is evaluated on the same held-out split. The harness builds the three
training configurations, trains them (at once, one process each, through
:mod:`sequencematch.apps.parallel`), and writes ``results.json``, ``report.md`` and a plot;
what is measured and how it is shown comes from the task
(:class:`sequencematch.tasks.comparison.Comparison`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from ..tasks.base import EvalOptions
from ..tasks.comparison import Comparison
from ..training.config import TrainConfig
from .parallel import describe_schedule, run_jobs, schedule_note, schedule_record, training_job
from .plotting import clear_previous_runs, pyplot
from .setup import config_task, prepare_run, task_file

METHODS = ("mle", "mle-bkspc", "sequencematch-chi2-bkspc")


@dataclass
class ComparisonSettings:
    """What every comparison sets; a task's demo settings add their own fields and defaults.

    Class attributes: ``task`` (the task's name), ``default_out`` (output folder), ``replay``
    (SequenceMatch's replay sizes).
    """

    task: ClassVar[str] = ""
    default_out: ClassVar[str] = "runs/comparison"
    replay: ClassVar[dict[str, int]] = {
        "samples_per_refresh": 64, "replay_size": 256, "model_batch_size": 16
    }  # fmt: skip

    steps: int = 1000
    sm_steps: int = 400
    batch_size: int = 32
    hidden_size: int = 128
    num_layers: int = 4
    n_train: int = 5000
    n_valid: int = 200
    n_test: int = 200
    lr: float = 1e-3
    p_noise: float = 0.05
    noise_source: str = "uniform"
    alpha: float = 1.0
    gamma: float = 0.998
    lambda_mle: float = 0.5
    sm_ramp_steps: int = 0
    regularise_warmup: bool = True
    refresh_every: int = 25
    seed: int = 0

    def task_config(self) -> dict[str, Any]:
        """The task's own fields of the training configuration."""
        return {}

    def evaluation_options(self) -> EvalOptions:
        """How every trained method is evaluated."""
        return EvalOptions(seed=self.seed)


def method_configs(settings: ComparisonSettings, out: Path) -> dict[str, TrainConfig]:
    """One training configuration per method, identical but for what defines the method."""
    common = dict(
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
    config: TrainConfig, options: EvalOptions, progress: bool = True, split: str = "test"
) -> tuple[Any, float]:
    """Train one method, save it, and evaluate it on the held-out ``split`` (``"valid"`` for
    tuning, ``"test"`` for reported results) as its task's comparison does; return the
    result and the training time in seconds. ``options.seed`` becomes the run's seed."""
    from ..training.trainer import Trainer

    config = config.replace(progress=progress)
    inputs = prepare_run(config)
    trainer = Trainer(
        config, inputs.model, inputs.tokenizer, inputs.train,
        model_files=task_file(inputs.task_info), task_noise=inputs.task_noise,
    )  # fmt: skip
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    pairs = inputs.test if split == "test" else inputs.valid
    result = inputs.task.comparison().evaluate(
        inputs.task, trainer.model, trainer.tokenizer, pairs, bkspc_id=trainer.bkspc_id,
        max_new_tokens=inputs.sample_length, options=replace(options, seed=config.seed),
    )  # fmt: skip
    return result, seconds


def run_comparison(
    out: Path,
    settings: ComparisonSettings,
    progress: bool = True,
    workers: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train and evaluate the three methods; write report.md, the plot and results.json.

    ``workers`` processes train the methods at once (default: all three; 1 = one after
    the other in this process), see :mod:`sequencematch.apps.parallel`. An earlier demo in
    ``out`` is replaced only with ``overwrite``, and then only what it wrote is deleted.
    """
    configs = method_configs(settings, out)
    comparison: Comparison = config_task(next(iter(configs.values()))).comparison()
    out.mkdir(parents=True, exist_ok=True)
    clear_previous_runs(out, METHODS, overwrite)
    schedule = schedule_record(workers, len(configs))
    workers = schedule["workers"]
    options = comparison.share(settings.evaluation_options(), workers)
    results: dict[str, Any] = {"settings": asdict(settings), "methods": {}, **schedule}
    bars = progress and workers <= 1  # parallel runs report through the status line
    jobs = {
        name: training_job(train_and_evaluate, config, options, bars)
        for name, config in configs.items()
    }
    print(describe_schedule(jobs, workers), flush=True)
    finished: dict[str, Any] = {}
    for name, (result, seconds) in run_jobs(jobs, workers, progress):
        finished[name] = comparison.entry(result, seconds)
        print(comparison.row(name, finished[name]), flush=True)
    results["methods"] = {name: finished[name] for name in configs}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    table = comparison.table(results)
    plt = pyplot()
    plot = comparison.plot(results, out / comparison.plot_name, plt) if plt else None
    (out / "report.md").write_text(comparison.report(results, table, timing_line(results), plot))
    print()
    print(table)
    print(f"\nreport: {out / 'report.md'}")
    return results


def timing_line(results: dict[str, Any]) -> str:
    """``Training time: mle 120 s, ... (3 at once, 1 thread(s) each).``"""
    timing = ", ".join(
        f"{name} {entry['train_seconds']:.0f} s" for name, entry in results["methods"].items()
    )
    return f"Training time: {timing}{schedule_note(results)}."


def with_overrides(settings: ComparisonSettings, **changes: Any) -> ComparisonSettings:
    """``settings`` with the given fields replaced (``None`` values are ignored); an option
    that this task's settings do not have is refused, naming its flag."""
    given = {key: value for key, value in changes.items() if value is not None}
    known = {item.name for item in fields(settings)}
    for key in given:
        if key not in known:
            flag = "--" + key.replace("_", "-")
            raise ValueError(f"{flag} does not apply to the {settings.task} demo")
    if "difficulty" in given:
        given["difficulty"] = list(given["difficulty"])
    return replace(settings, **given)
