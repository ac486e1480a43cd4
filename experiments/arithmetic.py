"""The paper's arithmetic comparison at CPU scale: several methods, seeds and difficulties.

The earlier, unpaired protocol (every method from scratch, :mod:`experiments.from_scratch`);
``sequencematch demo`` runs the paired one. Each (difficulty, method, seed) run trains one
model with the previous demo settings and records
its forced-noise sweep on the held-out test split in ``OUT/runs.jsonl`` (one line per run,
so an interrupted sweep resumes where it stopped). ``--table`` prints the markdown table
(mean over seeds with a 95% Student-t interval) and writes the plot.

    python -m experiments.arithmetic --out runs/exp --seeds 0 1 2
    python -m experiments.arithmetic --out runs/exp --table
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from experiments.from_scratch import ArithmeticSettings as DemoSettings  # noqa: E402
from experiments.from_scratch import method_configs, train_and_evaluate  # noqa: E402
from sequencematch.apps.parallel import describe_schedule, run_jobs, training_job  # noqa: E402
from sequencematch.evaluation.statistics import mean_confidence_interval  # noqa: E402

DIFFICULTIES = {"easy": [2.0, 8.0], "hard": [6.0, 12.0]}


def experiment_configs(settings: DemoSettings, out: Path) -> dict:
    """The demo's three methods plus the ablations: SequenceMatch without <bkspc>, with kl,
    and its data-only objective for the whole run (no model samples)."""
    configs = method_configs(settings, out)
    sm = configs["sequencematch-chi2-bkspc"]
    configs["sequencematch-chi2"] = sm.replace(
        backspace=False, p_noise=0.0, output_dir=str(out / "sequencematch-chi2")
    )
    configs["sequencematch-kl-bkspc"] = sm.replace(
        divergence="kl", output_dir=str(out / "sequencematch-kl-bkspc")
    )
    # the regularised warm-up for the whole run: MLE + chi2 regulariser on data, no samples
    configs["data-only-chi2-bkspc"] = sm.replace(
        mle_warmup_steps=sm.steps, output_dir=str(out / "data-only-chi2-bkspc")
    )
    return configs


def import_demo(results_file: Path, log: Path) -> None:
    """Record the runs of a ``sequencematch demo`` (the easy range with the demo's settings)
    as that seed's runs, so the demo's models need not be trained twice. Refuses a demo run
    with other settings than :class:`DemoSettings` at its seed."""
    results = json.loads(results_file.read_text())
    seed = results["settings"]["seed"]
    expected = json.loads(json.dumps(asdict(replace(DemoSettings(), seed=seed))))
    if results["settings"] != expected:
        raise SystemExit(f"{results_file}: not run with the demo's default settings")
    with open(log, "a") as handle:
        for method, entry in results["methods"].items():
            record = {"difficulty": "easy", "method": method, "seed": seed,
                      "train_seconds": entry["train_seconds"], "sweep": entry["sweep"],
                      "source": str(results_file)}  # fmt: skip
            handle.write(json.dumps(record) + "\n")


def run(args: argparse.Namespace) -> None:
    log = args.out / "runs.jsonl"
    if args.from_demo is not None:
        import_demo(args.from_demo, log)
    done = set()
    if log.exists():
        for line in log.read_text().splitlines():
            record = json.loads(line)
            done.add((record["difficulty"], record["method"], record["seed"]))
    jobs, records = {}, {}
    for difficulty in args.difficulties:
        for seed in args.seeds:
            settings = replace(DemoSettings(), seed=seed, difficulty=DIFFICULTIES[difficulty])
            if args.steps:
                settings = replace(settings, steps=args.steps, sm_steps=args.steps // 3)
            folder = args.out / difficulty / f"seed{seed}"
            for method, config in experiment_configs(settings, folder).items():
                if method not in args.methods or (difficulty, method, seed) in done:
                    continue
                name = f"{difficulty}/{method}/seed{seed}"
                jobs[name] = training_job(train_and_evaluate, config, settings.levels, False)
                records[name] = {"difficulty": difficulty, "method": method, "seed": seed}
    print(describe_schedule(jobs, args.workers), flush=True)
    for name, (sweep, seconds) in run_jobs(jobs, args.workers):
        record = {**records[name], "train_seconds": round(seconds, 1),
                  "sweep": [e.as_dict() for e in sweep]}  # fmt: skip
        with open(log, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(name, {e.noise_prob: round(e.accuracy, 3) for e in sweep}, flush=True)


def table(out: Path) -> str:
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    levels = sorted({e["noise_prob"] for r in records for e in r["sweep"]})
    lines = []
    for difficulty in DIFFICULTIES:
        rows = [r for r in records if r["difficulty"] == difficulty]
        if not rows:
            continue
        lines += [f"### {difficulty} ({DIFFICULTIES[difficulty]} bits)", "",
                  "| method | seeds | " + " | ".join(f"p={p:g}" for p in levels) + " |",
                  "|---|---|" + "---|" * len(levels)]  # fmt: skip
        for method in dict.fromkeys(r["method"] for r in rows):
            runs = [r for r in rows if r["method"] == method]
            cells = []
            for level in levels:
                values = [
                    e["accuracy"] for r in runs for e in r["sweep"] if e["noise_prob"] == level
                ]
                mean, low, high = mean_confidence_interval(values)
                cells.append(f"{mean:.3f} [{low:.3f}, {high:.3f}]")
            lines.append(f"| {method} | {len(runs)} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(out: Path) -> Path | None:
    """Mean accuracy over seeds against forced noise, one line per method (95% t-intervals),
    one panel per difficulty range: ``OUT/accuracy_vs_noise_seeds.png``."""
    from sequencematch.apps.demos.plotting import pyplot

    plt = pyplot()
    if plt is None:
        return None
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    ranges = [d for d in DIFFICULTIES if any(r["difficulty"] == d for r in records)]
    figure, axes_list = plt.subplots(1, len(ranges), figsize=(6 * len(ranges), 4), squeeze=False)
    for axes, difficulty in zip(axes_list[0], ranges, strict=True):
        rows = [r for r in records if r["difficulty"] == difficulty]
        levels = sorted({e["noise_prob"] for r in rows for e in r["sweep"]})
        for method in dict.fromkeys(r["method"] for r in rows):
            runs = [r for r in rows if r["method"] == method]
            stats = [
                mean_confidence_interval(
                    [e["accuracy"] for r in runs for e in r["sweep"] if e["noise_prob"] == p]
                )
                for p in levels
            ]
            means = [m for m, _, _ in stats]
            errors = [0.0 if len(runs) < 2 else m - low for m, low, _ in stats]
            axes.errorbar(levels, means, yerr=errors, marker="o", capsize=3,
                          label=f"{method} ({len(runs)} seeds)")  # fmt: skip
        axes.set_title(f"{difficulty} ({DIFFICULTIES[difficulty]} bits)")
        axes.set_xlabel("forced-noise probability per generated step")
        axes.set_ylabel("exact-match accuracy (test split)")
        axes.set_ylim(0, 1)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    figure.tight_layout()
    path = out / "accuracy_vs_noise_seeds.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/experiments"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--difficulties", nargs="+", default=list(DIFFICULTIES))
    parser.add_argument("--methods", nargs="+", default=[
        "mle", "mle-bkspc", "sequencematch-chi2-bkspc", "sequencematch-chi2",
        "sequencematch-kl-bkspc", "data-only-chi2-bkspc"])  # fmt: skip
    parser.add_argument("--steps", type=int, default=None, help="override the demo's steps")
    parser.add_argument("--from-demo", type=Path, default=None,
                        help="results.json of a default `sequencematch demo` run to record as "
                        "its seed's easy-range runs")  # fmt: skip
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="runs trained at once, one process each (1: one after the other)",
    )
    parser.add_argument("--table", action="store_true", help="print the table and stop")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table:
        run(args)
    print(table(args.out))
    print(f"plot: {plot(args.out)}")


if __name__ == "__main__":
    main()
