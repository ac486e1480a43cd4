"""How many rows the second probe of the ``<bkspc>`` row needs (validation split).

The second probe (``bkspc_reprobe``) fits one output row, ``H`` numbers, to the
noise-augmented rows of the first steps. At ``p_noise`` 0.05 its default 128 rows hold only
a few dozen noise states, few for a 576-wide row. This takes a model an arm of
:mod:`experiments.no_harm` trained (its body as the steps left it), fits the row again on
each number of rows, and measures what the no-harm arms measure (the policy around the
reference answer; greedy at forced noise 0 and 0.1, sampled at temperature 1). Every fit
starts from the same saved model, so the rows are the only difference. Each finished fit
appends one line to ``OUT/reprobe_rows.jsonl``; a rerun skips what is there.

    python -m experiments.reprobe_rows --arm sm-fixed-alpha10-p0.05 --rows 128 512 2048
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from experiments.no_harm import COMMON, POLICY, arm_options  # noqa: E402
from experiments.pretrained_continuation import evaluate  # noqa: E402
from sequencematch.apps.setup import prepare_run, task_file  # noqa: E402
from sequencematch.training.config import TrainConfig  # noqa: E402
from sequencematch.training.trainer import Trainer  # noqa: E402


def fit_and_measure(args: argparse.Namespace, rows: int) -> dict:
    """The arm's trained model, its row probed again on ``rows`` rows, then measured."""
    options = arm_options(args.arm) | {"bkspc_probe_rows": rows, "bkspc_init": "mean"}  # saved row
    model = Path(args.noharm) / args.arm / "model"
    config = TrainConfig(**{**COMMON, **options}, model=str(model), seed=args.seed,
                         output_dir=str(Path(args.out) / f"fit-{args.arm}-{rows}"))  # fmt: skip
    inputs = prepare_run(config)
    trainer = Trainer(config, inputs.model, inputs.tokenizer, inputs.train,
                      model_files=task_file(inputs.task_info),
                      task_noise=inputs.task_noise)  # fmt: skip
    try:
        started = time.perf_counter()
        stats = trainer._probe_bkspc_row()
        seconds = time.perf_counter() - started
        policy = inputs.task.policy(trainer.model, trainer.tokenizer, inputs.valid,
                                    vocab_size=trainer.vocab_size, seed=args.seed)  # fmt: skip
        return {"arm": args.arm, "rows": rows, "probe_seconds": round(seconds, 1),
                "probe": stats, "policy": policy.as_dict(),
                "scores": evaluate(trainer, inputs, args.seed)}  # fmt: skip
    finally:
        trainer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noharm", default="runs/noharm", help="experiments.no_harm's --out")
    parser.add_argument("--arm", default="sm-fixed-alpha10-p0.05")
    parser.add_argument("--rows", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--out", default="runs/reprobe-rows")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "reprobe_rows.jsonl"
    done = set()
    if path.exists():
        done = {(r["arm"], r["rows"]) for r in map(json.loads, path.read_text().splitlines())}
    for rows in args.rows:
        if (args.arm, rows) in done:
            continue
        record = fit_and_measure(args, rows)
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
        policy, scores = record["policy"], record["scores"]
        print(
            f"{args.arm} rows {rows}:",
            " ".join(f"{k} {policy[k]:.3f}" for k in POLICY),
            " ".join(f"{k} {v['accuracy']:.3f}" for k, v in scores.items()),
            f"deleted {scores['greedy-p0.1']['forced_deleted_rate']:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
