"""The paper's text comparison at CPU scale: several methods and seeds on Shakespeare.

The earlier, unpaired protocol (every method from scratch, :mod:`experiments.from_scratch`);
``sequencematch demo --task text`` runs the paired one. Each (method, seed) run trains one
model with the previous text demo settings (or ``--size large``) and records its evaluation
on the held-out works (``--split test``) or on the validation works (``--split valid``, for
tuning) in ``OUT/runs.jsonl``, one line per run, so an interrupted sweep resumes.
``--table`` prints the markdown table: each metric's mean over seeds with a 95% Student-t
interval.

    python -m experiments.text --out runs/exp-text --seeds 0 1 2
    python -m experiments.text --out runs/exp-text --table
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from experiments.from_scratch import TextSettings as TextDemoSettings  # noqa: E402
from experiments.from_scratch import method_configs, train_and_evaluate_text  # noqa: E402
from sequencematch.apps.parallel import describe_schedule, run_jobs, training_job  # noqa: E402
from sequencematch.evaluation.statistics import mean_confidence_interval  # noqa: E402

SIZES = {
    "demo": {},
    # 5.2 M parameters: MLE 54 min, SequenceMatch 74 min, side by side on 2 cores (sharing
    # them with two other runs for 55 min); width 256 x 6 layers at batch 32: ~3.5 hours
    "large": {"hidden_size": 256, "num_layers": 4, "steps": 2400, "sm_steps": 800,
              "batch_size": 16, "vocab_size": 4096, "lr": 1e-3},
}  # fmt: skip
METRICS = (("MAUVE", ("mauve", "mean")), ("diversity", ("statistics", "diversity")),
           ("rep-2", ("statistics", "rep_2")), ("entropy-4", ("statistics", "entropy_4")),
           ("perplexity", ("perplexity",)), ("<bkspc> rate", ("bkspc_rate",)))  # fmt: skip


def experiment_configs(settings: TextDemoSettings, out: Path) -> dict:
    """The demo's three methods plus the ablations: SequenceMatch without <bkspc>, and kl."""
    configs = method_configs(settings, out)
    sm = configs["sequencematch-chi2-bkspc"]
    configs["sequencematch-chi2"] = sm.replace(
        backspace=False, p_noise=0.0, output_dir=str(out / "sequencematch-chi2")
    )
    configs["sequencematch-kl-bkspc"] = sm.replace(
        divergence="kl", output_dir=str(out / "sequencematch-kl-bkspc")
    )
    return configs


def import_demo(results_file: Path, log: Path) -> None:
    """Record the runs of a default ``sequencematch demo --task text`` as that seed's runs
    (demo size, test split), so its models need not be trained twice."""
    results = json.loads(results_file.read_text())
    seed = results["settings"]["seed"]
    if results["settings"] != asdict(replace(TextDemoSettings(), seed=seed)):
        raise SystemExit(f"{results_file}: not run with the text demo's default settings")
    with open(log, "a") as handle:
        for method, entry in results["methods"].items():
            record = {"method": method, "seed": seed, "size": "demo", "split": "test",
                      "train_seconds": entry["train_seconds"], "eval": entry["eval"],
                      "source": str(results_file)}  # fmt: skip
            handle.write(json.dumps(record) + "\n")


def run(args: argparse.Namespace) -> None:
    from sequencematch.evaluation.text_metrics import SentenceEncoder

    log = args.out / "runs.jsonl"
    if args.from_demo is not None:
        import_demo(args.from_demo, log)
    done = set()
    if log.exists():
        done = {(r["method"], r["seed"]) for r in map(json.loads, log.read_text().splitlines())}
    encoder = SentenceEncoder() if args.workers <= 1 else None  # else each worker loads one
    jobs, records = {}, {}
    for seed in args.seeds:
        settings = replace(TextDemoSettings(), seed=seed, **SIZES[args.size])
        folder = args.out / f"seed{seed}"
        for method, config in experiment_configs(settings, folder).items():
            if method not in args.methods or (method, seed) in done:
                continue
            name = f"{method}/seed{seed}"
            jobs[name] = training_job(train_and_evaluate_text, config, settings, False,
                                      args.split, encoder=encoder)  # fmt: skip
            records[name] = {"method": method, "seed": seed, "size": args.size,
                             "split": args.split}  # fmt: skip
    print(describe_schedule(jobs, args.workers), flush=True)
    for name, (result, seconds) in run_jobs(jobs, args.workers):
        record = {**records[name], "train_seconds": round(seconds, 1), "eval": result.as_dict()}
        with open(log, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(f"{name}: MAUVE {result.mauve['mean']:.3f}, diversity "
              f"{result.statistics['diversity']:.3f}", flush=True)  # fmt: skip


def _metric(record: dict, path: tuple[str, ...]) -> float:
    value = record["eval"]
    for key in path:
        value = value[key]
    return float(value)


def table(out: Path) -> str:
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    lines = ["| method | seeds | " + " | ".join(name for name, _ in METRICS) + " |",
             "|---|---|" + "---|" * len(METRICS)]  # fmt: skip
    for method in dict.fromkeys(r["method"] for r in records):
        runs = [r for r in records if r["method"] == method]
        cells = []
        for _, path in METRICS:
            mean, low, high = mean_confidence_interval([_metric(r, path) for r in runs])
            interval = f" [{low:.3f}, {high:.3f}]" if len(runs) > 1 else ""
            cells.append(f"{mean:.3f}{interval}")
        lines.append(f"| {method} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(out: Path) -> Path | None:
    """MAUVE and diversity per method: mean over seeds with 95% t-intervals, and each seed's
    value as a dot: ``OUT/mauve_and_diversity_seeds.png``."""
    from sequencematch.apps.demos.plotting import pyplot

    plt = pyplot()
    if plt is None:
        return None
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    methods = list(dict.fromkeys(r["method"] for r in records))
    figure, panels = plt.subplots(1, 2, figsize=(10, 4))
    for axes, (name, path) in zip(panels, METRICS[:2], strict=True):
        for index, method in enumerate(methods):
            values = [_metric(r, path) for r in records if r["method"] == method]
            mean, low, _ = mean_confidence_interval(values)
            error = 0.0 if len(values) < 2 else mean - low
            axes.bar(index, mean, yerr=error, capsize=4, alpha=0.7)
            axes.plot([index] * len(values), values, "k.", markersize=5)
        axes.set_xticks(range(len(methods)), methods, rotation=15, fontsize=7)
        axes.set_ylabel(f"{name} (higher is better)")
        axes.set_ylim(0, 1)
        axes.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    target = out / "mauve_and_diversity_seeds.png"
    figure.savefig(target, dpi=120)
    plt.close(figure)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/exp-text"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size", choices=list(SIZES), default="demo")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="runs trained at once, one process each (1: one after the other)",
    )
    parser.add_argument("--split", choices=("test", "valid"), default="test")
    parser.add_argument("--methods", nargs="+", default=[
        "mle", "mle-bkspc", "sequencematch-chi2-bkspc", "sequencematch-chi2",
        "sequencematch-kl-bkspc"])  # fmt: skip
    parser.add_argument("--from-demo", type=Path, default=None,
                        help="results.json of a default `sequencematch demo --task text` run "
                        "to record as its seed's runs")  # fmt: skip
    parser.add_argument("--table", action="store_true", help="print the table and stop")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table:
        run(args)
    print(table(args.out))
    print(f"plot: {plot(args.out)}")


if __name__ == "__main__":
    main()
