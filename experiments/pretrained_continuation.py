"""What the SequenceMatch phase does to a pretrained model, measured on the validation split.

One shared MLE+<bkspc> warm-up of SmolLM2-135M on arithmetic (full fine-tuning, bf16 body),
then short continuations from that same model folder, each on the same data order (same
seed): MLE+<bkspc>, and SequenceMatch-chi2+<bkspc> under the variants below. Every
continuation logs its MLE term at every step (metrics.jsonl) and is scored on the same
held-out validation questions: greedy at forced noise 0 and 0.1, and sampled at temperature 1.
Each finished arm appends one line to ``OUT/arms.jsonl``; a rerun skips what is there.

    python -m experiments.pretrained_continuation --out runs/pretrained-continuation
    python -m experiments.pretrained_continuation --out runs/pretrained-continuation \
        --arms mle sm-alpha1 --table
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from sequencematch.apps.setup import prepare_run, task_file  # noqa: E402
from sequencematch.tasks.arithmetic_task import answer_token_ids  # noqa: E402
from sequencematch.tasks.exact_match import evaluate_exact_match  # noqa: E402
from sequencematch.training.config import TrainConfig  # noqa: E402
from sequencematch.training.trainer import Trainer  # noqa: E402

COMMON = dict(
    task="arithmetic", n_train=5000, n_valid=300, n_test=50, batch_size=16, precision="bf16",
    backspace=True, p_noise=0.05, noise_source="task", log_every=1, save_every=0,
    eval_every=0, progress=False, overwrite=True, weight_decay=0.01, clip_grad=1.0,
)  # fmt: skip
WARMUP = dict(model="smollm2-135m", method="mle", steps=60, lr=1e-4, warmup_steps=6,
              min_lr_ratio=1.0)  # fmt: skip
CONTINUATION = dict(steps=40, lr=5e-5, warmup_steps=0, min_lr_ratio=1.0, mle_warmup_steps=0,
                    sm_ramp_steps=10, refresh_every=10, samples_per_refresh=32,
                    model_batch_size=8, replay_size=64, alpha=1.0, lambda_mle=0.5,
                    regularise_warmup=True, sample_temperature=1.0)  # fmt: skip
# arm -> the continuation's overrides
ARMS: dict[str, dict[str, Any]] = {
    "mle": {"method": "mle"},
    "sm-alpha1": {"method": "sequencematch", "value_head": "none"},  # the paper's reading
    "sm-normalised": {"method": "sequencematch", "value_head": "normalised"},
    "sm-offset": {"method": "sequencematch", "value_head": "offset"},
    "sm-alpha10": {
        "method": "sequencematch",
        "value_head": "none",
        "alpha": 10.0,
        "sm_ramp_steps": 20,
    },
    # noise sources with a 49k vocabulary, at p_noise 0.15: which teach deleting what
    # sampling reaches (0.05 taught no <bkspc> at all in 40 steps)
    "mle-task-p15": {"method": "mle", "p_noise": 0.15},
    "mle-uniform-p15": {"method": "mle", "p_noise": 0.15, "noise_source": "uniform"},
    "mle-task+uniform-p15": {"method": "mle", "p_noise": 0.15, "noise_source": "task+uniform"},
    "mle-model-p15": {"method": "mle", "p_noise": 0.15, "noise_source": "model"},
    # LoRA (r 64, alpha 16, every block linear: the paper's adapters) instead of full
    # fine-tuning, at 10x the full fine-tune's lr (the adapters' updates are scaled by 1/4)
    "mle-lora64": {"method": "mle", "lora_r": 64, "lora_alpha": 16.0, "lr": 5e-4},
    "sm-normalised-lora64": {
        "method": "sequencematch",
        "value_head": "normalised",
        "lora_r": 64,
        "lora_alpha": 16.0,
        "lr": 5e-4,
    },
    "sm-normalised-task+uniform-p15": {
        "method": "sequencematch",
        "value_head": "normalised",
        "p_noise": 0.15,
        "noise_source": "task+uniform",
    },
}


def train(config: TrainConfig) -> tuple[Trainer, Any, float]:
    inputs = prepare_run(config)
    trainer = Trainer(
        config, inputs.model, inputs.tokenizer, inputs.train,
        model_files=task_file(inputs.task_info), task_noise=inputs.task_noise,
    )  # fmt: skip
    started = time.perf_counter()
    trainer.train()
    return trainer, inputs, time.perf_counter() - started


def evaluate(trainer: Trainer, inputs: Any, seed: int) -> dict[str, Any]:
    """Greedy at forced noise 0 and 0.1, sampled at temperature 1, on the validation split."""
    pairs = [(p.prompt, p.completion) for p in inputs.valid]
    noise_ids = answer_token_ids(trainer.tokenizer)
    scores = {}
    for name, noise, sample in (("greedy", 0.0, False), ("greedy-p0.1", 0.1, False),
                                ("sampled", 0.0, True)):  # fmt: skip
        result = evaluate_exact_match(
            trainer.model, trainer.tokenizer, pairs, bkspc_id=trainer.bkspc_id,
            noise_prob=noise, noise_token_ids=noise_ids if noise else None, batch_size=50,
            max_new_tokens=inputs.sample_length, seed=seed, do_sample=sample, num_examples=3,
        )  # fmt: skip
        scores[name] = {
            "accuracy": result.accuracy, "bkspc_rate": result.bkspc_rate,
            "forced_deleted_rate": result.forced_deleted_rate,
            "finished_rate": result.finished_rate, "outcomes": result.outcomes,
            "examples": [str(e) for e in result.examples],
        }  # fmt: skip
    return scores


def metric_trace(folder: Path) -> list[dict[str, float]]:
    keep = ("step", "mle", "loss", "regulariser", "value", "r_mean", "r_std", "v_mean")
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in keep if k in r} for r in rows if "mle" in r]


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    warm = out / "warmup"
    if not (warm / "model" / "config.json").exists():
        config = TrainConfig(**COMMON, **WARMUP, seed=args.seed, output_dir=str(warm))
        trainer, inputs, seconds = train(config)
        record = {"arm": "warmup", "seconds": round(seconds, 1), "trace": metric_trace(warm),
                  "scores": evaluate(trainer, inputs, args.seed)}  # fmt: skip
        with open(out / "arms.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"warmup: {seconds:.0f} s, {summary(record)}", flush=True)
    done = {r["arm"] for r in read(out)}
    for arm in args.arms:
        if arm in done:
            continue
        settings = {**COMMON, **CONTINUATION, **ARMS[arm]}
        config = TrainConfig(**settings, model=str(warm / "model"), seed=args.seed,
                             output_dir=str(out / arm))  # fmt: skip
        trainer, inputs, seconds = train(config)
        record = {"arm": arm, "settings": ARMS[arm], "seconds": round(seconds, 1),
                  "trace": metric_trace(out / arm),
                  "scores": evaluate(trainer, inputs, args.seed)}  # fmt: skip
        with open(out / "arms.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"{arm}: {seconds:.0f} s, {summary(record)}", flush=True)


def read(out: Path) -> list[dict[str, Any]]:
    path = out / "arms.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def summary(record: dict[str, Any]) -> str:
    trace = record["trace"]
    mle = [t["mle"] for t in trace]
    scores = record["scores"]
    peak = max(mle) if mle else float("nan")
    return (f"MLE term first {mle[0]:.3f} peak {peak:.3f} last5 {sum(mle[-5:]) / 5:.3f}; "
            + ", ".join(f"{k} {v['accuracy']:.3f} (bkspc {v['bkspc_rate']:.3f})"
                        for k, v in scores.items()))  # fmt: skip


def table(out: Path) -> None:
    """One row per arm: the MLE term (peak, mean of the last 10 steps, and the mean per-step
    ratio to the MLE arm on the same batches), then the validation accuracies."""
    records = {r["arm"]: r for r in read(out)}
    reference = {t["step"]: t["mle"] for t in records.get("mle", {}).get("trace", [])}
    warm = [t["mle"] for t in records.get("warmup", {}).get("trace", [])][-10:]
    print(f"warm-up: MLE term over its last 10 steps {sum(warm) / max(1, len(warm)):.3f}")
    print(
        "| arm | MLE peak | MLE last 10 | / MLE arm (same batches) | greedy | greedy p=0.1 "
        "| sampled T=1 | forced deleted p=0.1 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for arm, record in records.items():
        trace = record["trace"]
        mle = [t["mle"] for t in trace]
        last = trace[-10:]
        ratios = [t["mle"] / reference[t["step"]] for t in last if t["step"] in reference]
        ratio = f"{sum(ratios) / len(ratios):.2f}" if ratios and arm != "mle" else "-"
        scores = record["scores"]
        print(f"| {arm} | {max(mle):.2f} | {sum(t['mle'] for t in last) / len(last):.3f} | "
              f"{ratio} | {scores['greedy']['accuracy']:.3f} | "
              f"{scores['greedy-p0.1']['accuracy']:.3f} | {scores['sampled']['accuracy']:.3f} | "
              f"{scores['greedy-p0.1']['forced_deleted_rate']:.2f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/pretrained-continuation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--table", action="store_true", help="print the table and stop")
    args = parser.parse_args()
    if args.table:
        table(Path(args.out))
    else:
        run(args)


if __name__ == "__main__":
    main()
