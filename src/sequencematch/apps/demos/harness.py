"""The comparison harness behind both demos: four methods, paired on one warm-up per seed.

The protocol (docs/method.md, "The objective": its three kinds), for each seed:

1. one shared warm-up: plain MLE on the task's data (the paper's BC/MLE warm-up), from
   scratch for a preset model, or fine-tuning a pretrained one (``model``), saved as a
   model folder;
2. four methods continue from that folder for the same number of steps, on the same data
   order and noise draws (same seed): MLE, MLE+``<bkspc>``, the offline (data-only)
   chi2+``<bkspc>`` objective and online SequenceMatch-chi2+``<bkspc>``;
3. every method is evaluated on the same held-out items with the same evaluation seed.

Differences are then paired twice over: within a seed on the same items (the task's test,
e.g. McNemar), and across seeds by the Student-t interval of the per-seed differences
(:mod:`sequencematch.apps.demos.paired_summary`). Jobs run in parallel processes
(:mod:`sequencematch.apps.parallel`); a seed's four methods start as soon as its warm-up is
saved. Each finished job leaves a record in its folder, so ``resume`` skips what is done.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from ...models.loading import model_source
from ...storage.files import atomic_write_text
from ...tasks.arithmetic_task import ArithmeticTask
from ...tasks.base import EvalOptions, Task
from ...tasks.text_task import TextTask
from ...training.config import MAX_SEED, TrainConfig
from ...training.run_folder import RunFolder
from ..parallel import Job, available_cpus, run_jobs, schedule_record, threads_per_worker
from ..setup import config_task, prepare_run, task_file
from .arithmetic_report import ArithmeticComparison
from .demo_folder import DEMO_FILES, claim_demo_folder
from .methods import COMPARED_METHODS, MLE, MLE_BKSPC, OFFLINE, ONLINE, QUEUE_ORDER, WARMUP
from .plotting import pyplot
from .task_report import Comparison
from .text_report import TextComparison

RECORD = "record.json"  # a finished job's record in its run folder
SETTINGS_FILE = "settings.json"
REPORTS: dict[type[Task], type[Comparison]] = {
    ArithmeticTask: ArithmeticComparison,
    TextTask: TextComparison,
}
"""The comparison report of each task that has one (a subclass shares its parent's; a
user's own task adds its :class:`~.task_report.Comparison` here)."""


def task_comparison(task: Task) -> Comparison:
    """The task-specific parts of a comparison of ``task``: its evaluation, paired tests,
    table, plot and report."""
    for kind in type(task).__mro__:
        if kind in REPORTS:
            return REPORTS[kind]()
    raise ValueError(f"the {task.name} task has no comparison report")


@dataclass
class ComparisonSettings:
    """What every comparison sets; a task's demo settings add their own fields and defaults.

    Every training option the protocol relies on is set here (and passed explicitly in each
    configuration), so the comparison does not move when the library's defaults do.

    Class attributes: ``task`` (the task's name), ``default_out`` (output folder), ``replay``
    (the online method's replay sizes).
    """

    task: ClassVar[str] = ""
    default_out: ClassVar[str] = "runs/comparison"
    replay: ClassVar[dict[str, int]] = {
        "samples_per_refresh": 64, "replay_size": 256, "model_batch_size": 16
    }  # fmt: skip
    pretrained_replay: ClassVar[dict[str, int]] = {
        "samples_per_refresh": 32, "replay_size": 64, "model_batch_size": 8
    }  # fmt: skip

    model: str = "tiny_llama"  # a preset (trained from scratch) or a pretrained model
    precision: str = "fp32"
    value_head: str = "none"  # how SequenceMatch reads Q (TrainConfig.value_head)

    seed: int = 0  # the first seed; the others follow (seed, seed + 1, ...)
    seeds: int = 3
    warmup_steps: int = 600  # the shared MLE warm-up, from scratch
    steps: int = 300  # every method's continuation
    batch_size: int = 32
    hidden_size: int = 128
    num_layers: int = 4
    n_train: int = 5000
    n_valid: int = 200
    n_test: int = 200
    warmup_lr: float = 3e-3
    lr: float = 1e-3
    p_noise: float = 0.05
    noise_source: str = "uniform"
    alpha: float = 10.0
    gamma: float = 0.998
    beta: float = 0.5
    lambda_mle: float = 0.5
    refresh_every: int = 25
    lora_r: int = 0  # >0: the methods continue through LoRA adapters of this rank
    lora_alpha: float = 16.0
    bkspc_reprobe: bool = False  # the <bkspc> methods probe their row again at the end

    @classmethod
    def pretrained(cls, model: str) -> ComparisonSettings:
        """A reduced comparison that fine-tunes every weight of the pretrained ``model``
        (bf16 body, a learned value for SequenceMatch: docs/RESULTS.md), three seeds, sized for
        about an hour on 2 CPU cores with a 135M-parameter model. ``lora_r`` continues the methods
        through LoRA adapters instead (docs/RESULTS.md measures both)."""
        return cls(model=model, precision="bf16", value_head="normalised", seeds=3,
                   warmup_steps=40, steps=30, batch_size=16, n_train=2000, n_valid=50,
                   n_test=200, warmup_lr=1e-4, lr=5e-5, refresh_every=10)  # fmt: skip

    def from_scratch(self) -> bool:
        """Whether the warm-up trains a preset model from scratch (else: fine-tuning)."""
        from ...models.loading import PRESETS

        return self.model in PRESETS

    def replay_options(self) -> dict[str, int]:
        """The online method's replay sizes (smaller for a pretrained model's steps)."""
        return dict(self.replay if self.from_scratch() else self.pretrained_replay)

    def seed_list(self) -> list[int]:
        """The seeds of the comparison: ``seed, seed + 1, ..., seed + seeds - 1``."""
        return list(range(self.seed, self.seed + self.seeds))

    def validate(self) -> ComparisonSettings:
        """Raise ``ValueError`` naming the option and what to change; return ``self``."""
        if self.seeds < 1:
            raise ValueError(f"--seeds must be at least 1, got {self.seeds}")
        if self.warmup_steps < 1 or self.steps < 1:
            raise ValueError(
                f"--warmup-steps and --steps must be at least 1, got {self.warmup_steps} and "
                f"{self.steps}"
            )
        if not self.lr > 0 or self.lora_r < 0:
            raise ValueError(
                f"--lr must be > 0 and --lora-r >= 0 (0: every weight), got {self.lr} and "
                f"{self.lora_r}"
            )
        if self.bkspc_reprobe and self.lora_r > 0:
            raise ValueError("--bkspc-reprobe writes the row of a full model: use --lora-r 0")
        if self.n_train < 1 or self.n_test < 1:
            raise ValueError(
                f"--n-train and --n-test must be at least 1, got {self.n_train} and {self.n_test}"
            )
        if not 0 <= self.seed <= self.seed + self.seeds - 1 <= MAX_SEED:
            raise ValueError(f"--seed and the seeds after it must lie in [0, {MAX_SEED}]")
        model_source(self.model)  # a misspelled --model, before any folder is claimed
        # every run's configuration, before the first one trains for minutes
        warmup_config(self, self.seed, Path("warmup")).validate()
        for config in method_configs(self, self.seed, Path("warmup"), Path("seed")).values():
            config.validate()
        return self

    def task_config(self) -> dict[str, Any]:
        """The task's own fields of the training configuration."""
        return {}

    def evaluation_options(self) -> EvalOptions:
        """How every trained method is evaluated (the seed is set per run)."""
        return EvalOptions(seed=self.seed)


def _shared_options(settings: ComparisonSettings, seed: int) -> dict[str, Any]:
    """Options of every run of one seed, set explicitly (the protocol must not follow the
    library's defaults when they change)."""
    return dict(
        overwrite=True,  # an unfinished run of this demo is started again (its own files only)
        task=settings.task, n_train=settings.n_train, n_valid=settings.n_valid,
        n_test=settings.n_test, batch_size=settings.batch_size, seed=seed, log_every=25,
        save_every=0, eval_every=0, weight_decay=0.01, min_lr_ratio=0.1, clip_grad=1.0,
        precision=settings.precision, grad_accum=1, **settings.task_config(),
    )  # fmt: skip


def warmup_config(settings: ComparisonSettings, seed: int, folder: Path) -> TrainConfig:
    """The shared warm-up of ``seed``: plain MLE (from scratch for a preset, fine-tuning a
    pretrained model otherwise), no ``<bkspc>``, no noise."""
    sizes = {}
    if settings.from_scratch():
        sizes = dict(hidden_size=settings.hidden_size, num_layers=settings.num_layers,
                     num_heads=4)  # fmt: skip
    return TrainConfig(
        **_shared_options(settings, seed), model=settings.model, **sizes, method="mle",
        backspace=False, p_noise=0.0, steps=settings.warmup_steps, lr=settings.warmup_lr,
        warmup_steps=min(100, settings.warmup_steps // 10), output_dir=str(folder),
    )  # fmt: skip


def method_configs(
    settings: ComparisonSettings, seed: int, start: Path, out: Path
) -> dict[str, TrainConfig]:
    """The four continuations of ``seed`` from the warm-up model folder ``start``, identical
    but for what defines each method (run folders ``out/<method>``); the objective's options
    are set for all four (the MLE methods do not read them).

    - ``mle``: cross-entropy on the clean data.
    - ``mle-bkspc``: cross-entropy on noise-augmented data (inserted wrong tokens are not
      expert actions), with the ``<bkspc>`` action added to the model.
    - ``offline-chi2-bkspc``: the data-only objective on the same augmented data,
      ``lambda_mle * MLE + (1 - lambda_mle) * L_SM`` with the mixture weight ``beta = 1``
      (data transitions only): method ``offline``, so no step samples the model.
    - ``sequencematch-chi2-bkspc``: the same objective with the model's own samples in the
      mixture (weight ``1 - beta``) from the first step (``mle_warmup_steps`` 0, which the
      other methods do not read), refreshed every ``refresh_every`` steps: it differs from
      the offline method only by the samples.
    """
    common = dict(
        **_shared_options(settings, seed), model=str(start), steps=settings.steps,
        lr=settings.lr, warmup_steps=min(50, settings.steps // 10),
        noise_source=settings.noise_source, max_noise_run=1, noise_in_loss=False,
        divergence="chi2", alpha=settings.alpha, gamma=settings.gamma, beta=settings.beta,
        lambda_mle=settings.lambda_mle, regularise_warmup=True, sm_ramp_steps=0,
        mle_warmup_steps=0,
        refresh_every=settings.refresh_every, sample_temperature=1.0,
        value_head=settings.value_head, lora_r=settings.lora_r, lora_alpha=settings.lora_alpha,
        **settings.replay_options(),
    )  # fmt: skip
    bkspc = dict(backspace=True, p_noise=settings.p_noise, bkspc_reprobe=settings.bkspc_reprobe)
    return {
        MLE: TrainConfig(**common, method="mle", backspace=False, p_noise=0.0,
                         output_dir=str(out / MLE)),
        MLE_BKSPC: TrainConfig(**common, **bkspc, method="mle", output_dir=str(out / MLE_BKSPC)),
        OFFLINE: TrainConfig(**common, **bkspc, method="offline", output_dir=str(out / OFFLINE)),
        ONLINE: TrainConfig(**common, **bkspc, method="sequencematch",
                            output_dir=str(out / ONLINE)),
    }  # fmt: skip


# ---------------------------------------------------------------------- the jobs


def _train(config: TrainConfig, progress: bool) -> tuple[Any, Any, float, float]:
    """Train one run to its end (the model is saved in ``output_dir/model``); return the
    trainer, the run's inputs, and the training's wall-clock and CPU seconds."""
    from ...training.trainer import Trainer

    config = config.replace(progress=progress)
    inputs = prepare_run(config)
    trainer = Trainer(
        config, inputs.model, inputs.tokenizer, inputs.train,
        model_files=task_file(inputs.task_info), task_noise=inputs.task_noise,
    )  # fmt: skip
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
    _drop_checkpoints(Path(config.output_dir))
    return trainer, inputs, seconds, cpu_seconds


def _drop_checkpoints(run_dir: Path) -> None:
    """Delete a finished job's checkpoints (its model folder and record are what the
    comparison keeps; a 135M model's checkpoint with its optimiser state is ~1.6 GB, and a
    five-seed comparison has 25 of them)."""
    from ...training.checkpoints import remove_checkpoints
    from ...training.run_folder import RunFolder
    from ...training.trainer import TRAIN_OUTPUTS

    with RunFolder(run_dir, "train", TRAIN_OUTPUTS) as run:
        if run.marker is not None:
            remove_checkpoints(run)


def train_and_evaluate(
    config: TrainConfig, options: EvalOptions, progress: bool = True, split: str = "test"
) -> tuple[Any, float]:
    """Train one method, save it, and evaluate it on the held-out ``split`` (``"valid"`` for
    tuning, ``"test"`` for reported results) as its task's comparison does; return the
    result and the training time in seconds. ``options.seed`` becomes the run's seed."""
    result, seconds, _, _ = _train_and_evaluate(config, options, progress, split)
    return result, seconds


def _train_and_evaluate(
    config: TrainConfig, options: EvalOptions, progress: bool, split: str
) -> tuple[Any, float, float, dict[str, float]]:
    """Train, then evaluate on ``split``: the task's result, the training's wall-clock and
    CPU seconds, and the policy around the reference completions (docs/method.md)."""
    trainer, inputs, seconds, cpu_seconds = _train(config, progress)
    pairs = inputs.test if split == "test" else inputs.valid

    def evaluate(settings: EvalOptions) -> Any:
        return inputs.task.evaluate(
            trainer.model, trainer.tokenizer, pairs, bkspc_id=trainer.bkspc_id,
            max_new_tokens=inputs.sample_length, options=settings,
        )  # fmt: skip

    comparison = task_comparison(inputs.task)
    result = comparison.evaluate(evaluate, pairs, replace(options, seed=config.seed))
    policy = inputs.task.policy(trainer.model, trainer.tokenizer, pairs,
                                vocab_size=trainer.vocab_size, seed=config.seed)  # fmt: skip
    return result, seconds, cpu_seconds, policy.as_dict()


def warmup_job(config: TrainConfig, progress: bool = False) -> dict[str, float]:
    """Train a seed's shared warm-up; record its cost in the run folder and return it.

    Costs: ``train_seconds`` (wall clock) and ``train_cpu_seconds`` of the training alone,
    ``job_cpu_seconds`` of the whole job (data, model loading and saving included). With one
    thread per job, CPU seconds are a much steadier measure of a job's cost than wall time on
    a shared machine (contention still inflates them somewhat)."""
    started = time.process_time()
    _, _, seconds, cpu_seconds = _train(config, progress)
    record = {"train_seconds": round(seconds, 1), "train_cpu_seconds": round(cpu_seconds, 1),
              "job_cpu_seconds": round(time.process_time() - started, 1)}  # fmt: skip
    _write_record(Path(config.output_dir), record)
    return record


def method_job(
    config: TrainConfig, options: EvalOptions, progress: bool = False, split: str = "test"
) -> dict[str, Any]:
    """Train and evaluate one method of one seed; its comparison entry (with the costs of
    :func:`warmup_job`) is written to the run folder and returned."""
    started = time.process_time()
    result, seconds, cpu_seconds, policy = _train_and_evaluate(config, options, progress, split)
    entry = task_comparison(config_task(config)).entry(result, seconds)
    entry["policy"] = policy
    entry["train_cpu_seconds"] = round(cpu_seconds, 1)
    entry["job_cpu_seconds"] = round(time.process_time() - started, 1)
    _write_record(Path(config.output_dir), entry)
    return entry


def _write_record(run_dir: Path, record: dict[str, Any]) -> None:
    """A finished job's record in its run folder: listed as the run's output (so that
    replacing the demo removes it) and written by rename (a link there is replaced)."""
    from ...training.trainer import TRAIN_OUTPUTS

    with RunFolder(run_dir, "train", TRAIN_OUTPUTS) as run:
        if run.marker is not None:
            run.record(RECORD)
        atomic_write_text(run_dir / RECORD, json.dumps(record, indent=2))


def finished_record(folder: Path) -> dict[str, Any] | None:
    """The record a finished job left in ``folder`` (``None`` when it did not finish; a
    symbolic link is no record: it is never followed)."""
    path = folder / RECORD
    if path.is_symlink() or not path.is_file() or not (folder / "model" / "config.json").exists():
        return None
    return json.loads(path.read_text())


# ---------------------------------------------------------------------- the run


def seed_folder(out: Path, seed: int) -> Path:
    return out / f"seed-{seed}"


def run_comparison(
    out: Path,
    settings: ComparisonSettings,
    progress: bool = True,
    workers: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the paired protocol for every seed; write results.json, report.md and a plot.

    ``workers`` processes run jobs at once (default: one per CPU, one thread each; 1: one
    after the other in this process). With ``resume``, jobs that finished in an earlier
    run of the same settings in ``out`` are read back instead of run again (with more
    ``seeds`` than before, only the new seeds are run). Without it, an earlier demo in
    ``out`` is replaced only with ``overwrite``, and then only what it wrote is deleted.
    """
    from .paired_summary import render, summarise

    settings.validate()
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1 (1: one run at a time), got {workers}")
    started = time.perf_counter()
    comparison = task_comparison(config_task(warmup_config(settings, settings.seed, out)))
    folder = claim_output(out, settings, resume, overwrite)  # held to the end
    try:
        total_jobs = settings.seeds * (1 + len(COMPARED_METHODS))
        schedule = schedule_record(_default_workers() if workers is None else workers, total_jobs)
        workers = schedule["workers"]
        options = comparison.share(settings.evaluation_options(), workers)
        bars = progress and workers <= 1  # parallel runs report through the status line
        records: dict[int, dict[str, Any]] = {s: {"methods": {}} for s in settings.seed_list()}

        read_back = 0  # jobs that finished in an earlier run (--resume)

        def arm_jobs(seed: int) -> dict[str, Job]:
            nonlocal read_back
            folder = seed_folder(out, seed)
            configs = method_configs(settings, seed, folder / WARMUP / "model", folder)
            jobs = {}
            for method in QUEUE_ORDER:
                config = configs[method]
                done = finished_record(Path(config.output_dir))
                if done is not None:
                    records[seed]["methods"][method] = done
                    read_back += 1
                    continue
                jobs[f"seed {seed} {method}"] = _job(method_job, config, options, bars)
            return jobs

        jobs: dict[str, Job] = {}
        for seed in settings.seed_list():
            config = warmup_config(settings, seed, seed_folder(out, seed) / WARMUP)
            done = finished_record(Path(config.output_dir))
            if done is not None:
                records[seed][WARMUP] = done
                read_back += 1
                jobs |= arm_jobs(seed)
            else:
                jobs[f"seed {seed} {WARMUP}"] = _job(warmup_job, config, bars)

        def then(name: str, result: Any) -> dict[str, Job]:
            _, seed_text, what = name.split(" ", 2)
            seed = int(seed_text)
            if what == WARMUP:
                records[seed][WARMUP] = result
                return arm_jobs(seed)
            records[seed]["methods"][what] = result
            print(comparison.row(f"{what} (seed {seed})", result), flush=True)
            return {}

        print(describe_protocol(settings, workers), flush=True)
        for _ in run_jobs(jobs, workers, progress, then=then):
            pass
        results: dict[str, Any] = {
            "settings": asdict(settings),
            "seeds": {
                str(seed): {
                    WARMUP: record[WARMUP],
                    "methods": {m: record["methods"][m] for m in COMPARED_METHODS},
                }
                for seed, record in records.items()
            },  # fmt: skip
            **schedule,
        }
        results["from_scratch"] = settings.from_scratch()
        results["paired"] = summarise(results, comparison)
        results["wall_seconds"] = round(time.perf_counter() - started, 1)
        results["jobs_read_back"] = read_back
        atomic_write_text(out / "results.json", json.dumps(results, indent=1))
        plt = pyplot()
        plot_path = out / comparison.plot_name
        if plot_path.is_symlink():  # matplotlib would write through it
            plot_path.unlink()
        plot = comparison.plot(results, plot_path, plt) if plt else None
        body = render(results, comparison)
        atomic_write_text(out / "report.md", comparison.report(results, body, plot))
        print()
        print(body)
        print(f"\nreport: {out / 'report.md'}")
        return results
    finally:
        folder.release()


def _job(function: Any, config: TrainConfig, *args: Any) -> Job:
    return Job(function, (config, *args), metrics_file=Path(config.output_dir) / "metrics.jsonl",
               total_steps=config.steps)  # fmt: skip


def _default_workers() -> int:
    """One worker per CPU (each single-threaded): the demo's models are too small for
    intra-op threads to pay off."""
    return available_cpus()


def prepare_output(
    out: Path, settings: ComparisonSettings, resume: bool, overwrite: bool = False
) -> None:
    """:func:`claim_output`, the lock released at once."""
    claim_output(out, settings, resume, overwrite).release()


def claim_output(
    out: Path, settings: ComparisonSettings, resume: bool, overwrite: bool = False
) -> RunFolder:
    """Claim ``out`` for this demo (see :class:`~sequencematch.training.run_folder.RunFolder`):
    with ``resume``, the folder of an earlier run of the same settings (refused otherwise;
    only the number of seeds may change, so a finished comparison can be extended by more
    seeds); else a new demo, replacing an earlier one only with ``overwrite`` and deleting
    only what it recorded writing. Files no demo wrote are never deleted.

    Returns the folder still locked: the demo holds it to its end (so that no other demo
    replaces its runs meanwhile) and then releases it."""
    saved = out / SETTINGS_FILE
    current = json.loads(json.dumps(asdict(settings)))
    seeds = [seed_folder(out, seed).name for seed in settings.seed_list()]
    folder = RunFolder(out, "demo", (*DEMO_FILES, SETTINGS_FILE, *seeds)).lock()
    try:
        if not resume:
            claim_demo_folder(folder, overwrite)
        elif folder.marker is None:  # --resume of a folder no demo wrote yet: a new demo
            folder.claim_new(False, "choose another --out")
        elif saved.exists():
            previous = json.loads(saved.read_text())
            # a setting added since that run was written: the run had its default
            defaults = json.loads(json.dumps(asdict(type(settings)())))
            changed = sorted(k for k in current.keys() | previous.keys()
                             if current.get(k) != previous.get(k, defaults.get(k))
                             and k != "seeds")  # fmt: skip
            if changed:
                raise ValueError(
                    f"--resume needs the settings of the run in {out}; these differ: "
                    f"{', '.join(changed)}. Use the same options, or another --out"
                )
            before = previous.get("seeds")
            if isinstance(before, int) and settings.seeds < before:
                raise ValueError(
                    f"--seeds {settings.seeds} is fewer than the {before} seeds of the demo in "
                    f"{out}: --resume adds seeds, never drops them; pass --seeds {before} or "
                    "more (or use another --out for fewer)"
                )
        folder.record(*folder.outputs)
        atomic_write_text(saved, json.dumps(current, indent=2))
    except BaseException:
        folder.release()
        raise
    return folder


def describe_protocol(settings: ComparisonSettings, workers: int) -> str:
    """``== seeds 0-2: a 600-step MLE warm-up each, then 4 methods x 300 steps; ...``."""
    seeds = settings.seed_list()
    named = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"
    how = "one after the other" if workers <= 1 else (
        f"{workers} at a time, {threads_per_worker(workers)} thread(s) each"
    )  # fmt: skip
    start = "" if settings.from_scratch() else f" of {settings.model}"
    return (
        f"== {named}: a {settings.warmup_steps}-step MLE warm-up{start} each, then "
        f"{len(COMPARED_METHODS)} methods x {settings.steps} steps from it "
        f"({', '.join(COMPARED_METHODS)}); {how}"
    )


def with_overrides(settings: ComparisonSettings, **changes: Any) -> ComparisonSettings:
    """``settings`` with the given fields replaced (``None`` values are ignored); an option
    that this task's settings do not have is refused, naming its flag. ``lora_r > 0``
    without ``bkspc_reprobe`` turns the second probe off (it applies to full fine-tunes)."""
    given = {key: value for key, value in changes.items() if value is not None}
    known = {item.name for item in fields(settings)}
    for key in given:
        if key not in known:
            flag = "--" + key.replace("_", "-")
            raise ValueError(f"{flag} does not apply to the {settings.task} demo")
    if given.get("lora_r", 0) > 0 and "bkspc_reprobe" not in given:
        given["bkspc_reprobe"] = False  # the second probe writes a full model's row
    if "difficulty" in given:
        given["difficulty"] = list(given["difficulty"])
    return replace(settings, **given).validate()
