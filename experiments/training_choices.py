"""Two training choices measured on the arithmetic validation split, at a small size.

- the learning-rate schedule: ``cosine`` (one warm-up and one cosine over the whole run, so
  the SequenceMatch phase gets the tail of it) against ``per_phase`` (warm-up and cosine
  restarted when SequenceMatch starts);
- the replay draw: ``uniform`` (the whole buffer, with replacement) against ``fresh``
  (without replacement, newest refill first). Both share the same warm-up (the warm-up is
  a function of the seed alone: the script checks that their warm-up metrics agree).

Every run is SequenceMatch-chi2+<bkspc> with the demo's settings at a small size, one
thread, and appends one line to ``OUT/choices.jsonl`` (an interrupted sweep resumes):

    python -m experiments.training_choices --out runs/choices --seeds 0 1
    python -m experiments.training_choices --out runs/choices --table
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from experiments.from_scratch import ArithmeticSettings as DemoSettings  # noqa: E402
from experiments.from_scratch import method_configs, train_and_evaluate  # noqa: E402
from sequencematch.evaluation.statistics import mean_confidence_interval  # noqa: E402

SM = "sequencematch-chi2-bkspc"
SMALL = dict(steps=450, sm_steps=150, hidden_size=64, num_layers=2, n_train=2000, n_valid=300,
             difficulty=[2.0, 5.0], levels=(0.0, 0.1))  # fmt: skip
# name -> SequenceMatch configuration overrides
VARIANTS = {
    "cosine-uniform": {"lr_schedule": "cosine", "replay_draw": "uniform"},
    "per_phase-uniform": {"lr_schedule": "per_phase", "replay_draw": "uniform"},
    "cosine-fresh": {"lr_schedule": "cosine", "replay_draw": "fresh"},
}


def warmup_metrics(folder: Path, warmup: int) -> list[dict]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [
        {k: v for k, v in r.items() if k != "elapsed_s"}
        for r in records
        if r.get("step", 0) <= warmup and "loss" in r
    ]


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    log = args.out / "choices.jsonl"
    done = set()
    if log.exists():
        done = {(r["variant"], r["seed"]) for r in map(json.loads, log.read_text().splitlines())}
    for seed in args.seeds:
        warmups = {}
        for name in args.variants:
            settings = replace(DemoSettings(), seed=seed, **SMALL)
            folder = args.out / name / f"seed{seed}"
            config = method_configs(settings, folder)[SM].replace(log_every=5, **VARIANTS[name])
            if (name, seed) in done:
                continue
            print(f"== {name} seed {seed}", flush=True)
            sweep, seconds = train_and_evaluate(config, settings.levels, False, split="valid")
            warmups[name] = warmup_metrics(Path(config.output_dir), config.mle_warmup())
            record = {"variant": name, "seed": seed, "n_valid": settings.n_valid,
                      "train_seconds": round(seconds, 1),
                      "sweep": [e.as_dict() for e in sweep]}  # fmt: skip
            with open(log, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            print({e.noise_prob: round(e.accuracy, 3) for e in sweep}, f"{seconds:.0f} s",
                  flush=True)  # fmt: skip
        if "cosine-uniform" in warmups and "cosine-fresh" in warmups:
            same = warmups["cosine-uniform"] == warmups["cosine-fresh"]
            print(f"seed {seed}: uniform and fresh share their warm-up: {same}", flush=True)


def table(out: Path) -> str:
    records = [json.loads(line) for line in (out / "choices.jsonl").read_text().splitlines()]
    levels = sorted({e["noise_prob"] for r in records for e in r["sweep"]})
    head = " | ".join(f"p={p:g}" for p in levels)
    lines = [f"| variant | seeds | {head} | per seed (p=0) |", "|---|---|" + "---|" * len(levels)
             + "---|"]  # fmt: skip
    for name in dict.fromkeys(r["variant"] for r in records):
        runs = sorted((r for r in records if r["variant"] == name), key=lambda r: r["seed"])
        cells = []
        for level in levels:
            values = [e["accuracy"] for r in runs for e in r["sweep"] if e["noise_prob"] == level]
            mean, low, high = mean_confidence_interval(values)
            interval = f" [{low:.3f}, {high:.3f}]" if len(values) > 1 else ""
            cells.append(f"{mean:.3f}{interval}")
        per_seed = ", ".join(f"{r['sweep'][0]['accuracy']:.3f}" for r in runs)
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + f" | {per_seed} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/choices"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--table", action="store_true", help="print the table and stop")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table:
        run(args)
    print(table(args.out))


if __name__ == "__main__":
    main()
