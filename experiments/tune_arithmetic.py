"""Tuning SequenceMatch on the arithmetic task, on the validation split only.

Each variant is a set of overrides of the previous demo settings (every method from scratch,
:mod:`experiments.from_scratch`; and, for SequenceMatch, of its training configuration).
Every run appends one line to ``OUT/tuning.jsonl`` with its forced-noise sweep on the
validation questions, so an interrupted sweep resumes.

    python -m experiments.tune_arithmetic --out runs/tune --seeds 0 --n-valid 400
    python -m experiments.tune_arithmetic --out runs/tune --table
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from experiments.from_scratch import ArithmeticSettings as DemoSettings  # noqa: E402
from experiments.from_scratch import method_configs, train_and_evaluate  # noqa: E402
from sequencematch.evaluation.statistics import mean_confidence_interval  # noqa: E402
from sequencematch.training.run_folder import remove_run_folder  # noqa: E402

SM = "sequencematch-chi2-bkspc"

# name -> (method, demo-setting overrides, SequenceMatch config overrides)
VARIANTS: dict[str, tuple[str, dict, dict]] = {
    "mle": ("mle", {}, {}),
    "mle-bkspc": ("mle-bkspc", {}, {}),
    "sm": (SM, {}, {}),
    "sm-lambda0.8": (SM, {"lambda_mle": 0.8}, {}),
    "sm-alpha10": (SM, {"alpha": 10.0}, {}),
    "sm-uniform-noise": (SM, {"noise_source": "uniform"}, {}),
    "sm-model-noise": (SM, {"noise_source": "model"}, {}),
    "sm-beta0.8": (SM, {}, {"beta": 0.8}),
    "sm-refresh10": (SM, {"refresh_every": 10}, {}),
    "sm-gamma0.9": (SM, {"gamma": 0.9}, {}),
    "sm-half": (SM, {"sm_steps": 625}, {}),
    "sm-lambda0.8-alpha10": (SM, {"lambda_mle": 0.8, "alpha": 10.0}, {}),
    "sm-regwarm": (SM, {"sm_ramp_steps": 0}, {"regularise_warmup": True}),
    "sm-regwarm-alpha10": (SM, {"sm_ramp_steps": 0, "alpha": 10.0}, {"regularise_warmup": True}),
    "sm-regwarm-alpha0.1": (SM, {"sm_ramp_steps": 0, "alpha": 0.1}, {"regularise_warmup": True}),
}


def run(args: argparse.Namespace) -> None:
    log = args.out / "tuning.jsonl"
    done = set()
    if log.exists():
        for line in log.read_text().splitlines():
            record = json.loads(line)
            done.add((record["variant"], record["seed"]))
    for seed in args.seeds:
        for name in args.variants:
            if (name, seed) in done:
                continue
            method, setting_overrides, config_overrides = VARIANTS[name]
            settings = replace(DemoSettings(), seed=seed, n_valid=args.n_valid, **setting_overrides)
            folder = args.out / name / f"seed{seed}"
            config = method_configs(settings, folder)[method].replace(**config_overrides)
            print(f"== {name} seed {seed}", flush=True)
            sweep, seconds = train_and_evaluate(config, settings.levels, False, split="valid")
            record = {"variant": name, "seed": seed, "n_valid": args.n_valid,
                      "train_seconds": round(seconds, 1),
                      "sweep": [e.as_dict() for e in sweep]}  # fmt: skip
            with open(log, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            print({e.noise_prob: round(e.accuracy, 3) for e in sweep}, flush=True)
            remove_run_folder(config.output_dir)  # what the run wrote, nothing else


def table(out: Path) -> str:
    records = [json.loads(line) for line in (out / "tuning.jsonl").read_text().splitlines()]
    levels = sorted({e["noise_prob"] for r in records for e in r["sweep"]})
    lines = ["| variant | seeds | " + " | ".join(f"p={p:g}" for p in levels) + " |",
             "|---|---|" + "---|" * len(levels)]  # fmt: skip
    for name in dict.fromkeys(r["variant"] for r in records):
        runs = [r for r in records if r["variant"] == name]
        cells = []
        for level in levels:
            values = [e["accuracy"] for r in runs for e in r["sweep"] if e["noise_prob"] == level]
            mean, low, high = mean_confidence_interval(values)
            cells.append(
                f"{mean:.3f}" if len(values) < 2 else f"{mean:.3f} [{low:.3f}, {high:.3f}]"
            )
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/tune"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--n-valid", type=int, default=400)
    parser.add_argument("--table", action="store_true", help="print the table and stop")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table:
        run(args)
    print(table(args.out))


if __name__ == "__main__":
    main()
