"""Which fix keeps a pretrained policy intact when ``<bkspc>`` is added (validation split).

From one plain-MLE warm-up of SmolLM2-135M on arithmetic (no ``<bkspc>``), each arm continues
for the same steps on the same data order and noise draws, then is measured on the same
validation questions: the policy around the reference answer (P(<eos> | answer), the mass it
leaks to the tail, P(<bkspc> | answer + a wrong digit), P(<bkspc> | answer)), greedy accuracy
at forced noise 0 and 0.1 (and the share of forced tokens deleted), and sampled accuracy at
temperature 1. Arms differ by the ``<bkspc>`` row's start (mean embedding or linear probe),
its learning rate, whether it is probed again after the steps (the policy before that is
recorded too), and the objective's bookkeeping (terminal value, noise rows). Each finished
arm appends one line to ``OUT/arms.jsonl``; a rerun skips what is there.

    python -m experiments.no_harm --warmup runs/noharm/warmup/model --out runs/noharm
    python -m experiments.no_harm --out runs/noharm --table

``--setting tiny`` runs the same measurement on the from-scratch demo's own settings (the
continuations of ``make demo``, from one of its warm-ups, with ``--arms`` from ``TINY_ARMS``):
the demo's tiny model shows the same flattening, at a fraction of the cost.

    python -m experiments.no_harm --setting tiny --warmup runs/demo/seed-0/warmup/model \
        --out runs/noharm-tiny --arms mle-bkspc sm sm-pinned offline offline-pinned
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from experiments.pretrained_continuation import evaluate, metric_trace, train  # noqa: E402
from sequencematch.apps.demos.arithmetic_demo import DemoSettings, method_configs  # noqa: E402
from sequencematch.training.config import TrainConfig  # noqa: E402

COMMON = dict(
    task="arithmetic", n_train=2000, n_valid=100, n_test=10, difficulty=[2.0, 8.0],
    max_new_tokens=16, batch_size=16, precision="fp32", backspace=True, p_noise=0.15,
    noise_source="task", max_noise_run=1, log_every=1, save_every=0, eval_every=0,
    progress=False, overwrite=True, weight_decay=0.01, clip_grad=1.0, steps=20, lr=5e-5,
    warmup_steps=2, min_lr_ratio=0.1, mle_warmup_steps=0, regularise_warmup=True,
    sm_ramp_steps=0, refresh_every=10, samples_per_refresh=32, model_batch_size=8,
    replay_size=64, alpha=1.0, beta=0.5, lambda_mle=0.5, gamma=0.998,
    sample_temperature=1.0, value_head="normalised",
)  # fmt: skip
BEFORE = dict(bkspc_init="mean", terminal_value="zero", balance_noise=False)  # earlier code
FIXED = dict(bkspc_init="probe", terminal_value="learned", balance_noise=True)
OFFLINE = dict(method="sequencematch", mle_warmup_steps=20)  # data-only: no model samples
ONLINE = dict(method="sequencematch", mle_warmup_steps=0)
ARMS: dict[str, dict[str, Any]] = {
    "mle": dict(method="mle", backspace=False, p_noise=0.0),
    "mle-bkspc-mean": dict(method="mle", bkspc_init="mean"),
    "mle-bkspc-probe": dict(method="mle", bkspc_init="probe"),
    "sm-before": dict(**ONLINE, **BEFORE),
    "sm-fixed": dict(**ONLINE, **FIXED),
    "offline-fixed": dict(**OFFLINE, **FIXED),
    "sm-probe-only": {**ONLINE, **BEFORE, "bkspc_init": "probe"},
    "mle-bkspc-probe-rowlr": dict(method="mle", bkspc_init="probe", bkspc_row_lr=1e-3),
    "sm-fixed-rowlr": dict(**ONLINE, **FIXED, bkspc_row_lr=1e-3),
    "sm-fixed-alpha10": dict(**ONLINE, **FIXED, alpha=10.0),
    "sm-fixed-value-lr": dict(**ONLINE, **FIXED, value_head_lr=1e-2),
    "sm-fixed-data-value": dict(**ONLINE, **FIXED, data_regulariser="value"),
    "offline-fixed-data-value": dict(**OFFLINE, **FIXED, data_regulariser="value"),
    "sm-fixed-alpha10-data-value": dict(**ONLINE, **FIXED, alpha=10.0, data_regulariser="value"),
    "mle-bkspc-probe-rowlr1e-2": dict(method="mle", bkspc_init="probe", bkspc_row_lr=1e-2),
    "sm-fixed-alpha10-rowlr": dict(**ONLINE, **FIXED, alpha=10.0, bkspc_row_lr=1e-3),
    "sm-fixed-alpha10-p0.05": dict(**ONLINE, **FIXED, alpha=10.0, p_noise=0.05),
    "sm-fixed-alpha10-p0.02": dict(**ONLINE, **FIXED, alpha=10.0, p_noise=0.02),
    "mle-bkspc-probe-p0.02": dict(method="mle", bkspc_init="probe", p_noise=0.02),
    # the probe alone (one step at a vanishing rate), and arms whose <bkspc> row is probed
    # again on the trained features after their steps (REPROBE: not a training option)
    "probe-only": dict(method="mle", bkspc_init="probe", steps=1, lr=1e-12, warmup_steps=0),
    "mle-bkspc-probe-reprobe": dict(method="mle", bkspc_init="probe", reprobe=True),
    "sm-fixed-alpha10-reprobe": dict(**ONLINE, **FIXED, alpha=10.0, reprobe=True),
    "sm-fixed-alpha10-p0.1-reprobe": dict(**ONLINE, **FIXED, alpha=10.0, p_noise=0.1, reprobe=True),
    "sm-fixed-alpha10-p0.08-reprobe": dict(
        **ONLINE, **FIXED, alpha=10.0, p_noise=0.08, reprobe=True
    ),
    "sm-fixed-alpha10-p0.05-reprobe": dict(
        **ONLINE, **FIXED, alpha=10.0, p_noise=0.05, reprobe=True
    ),
}
REPROBE = "reprobe"
# Arms on the from-scratch demo's settings: each is one of the demo's continuations (its
# method) with options changed; alpha is set explicitly (the measured arms ran at 1).
PINNED = dict(terminal_value="zero")
ONE = dict(alpha=1.0)
TINY_ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "mle": ("mle", {}),
    "mle-bkspc": ("mle-bkspc", {}),
    "sm": ("sequencematch-chi2-bkspc", ONE),
    "sm-pinned": ("sequencematch-chi2-bkspc", {**ONE, **PINNED}),
    "offline": ("offline-chi2-bkspc", ONE),
    "offline-pinned": ("offline-chi2-bkspc", {**ONE, **PINNED}),
    "sm-normalised": ("sequencematch-chi2-bkspc", dict(**ONE, value_head="normalised")),
    "sm-value": ("sequencematch-chi2-bkspc", dict(**ONE, data_regulariser="value")),
    "offline-value": ("offline-chi2-bkspc", dict(**ONE, data_regulariser="value")),
    "sm-alpha3": ("sequencematch-chi2-bkspc", dict(alpha=3.0)),
    "sm-alpha10": ("sequencematch-chi2-bkspc", dict(alpha=10.0)),
    "offline-alpha10": ("offline-chi2-bkspc", dict(alpha=10.0)),
    # the <bkspc> row probed again after the steps (bkspc_reprobe), at the current defaults
    "mle-bkspc-reprobe": ("mle-bkspc", dict(bkspc_reprobe=True)),
    "offline-alpha10-reprobe": ("offline-chi2-bkspc", dict(alpha=10.0, bkspc_reprobe=True)),
    "sm-alpha10-reprobe": ("sequencematch-chi2-bkspc", dict(alpha=10.0, bkspc_reprobe=True)),
}
POLICY = ("p_eos", "tail_at_end", "p_bkspc_after_wrong", "p_bkspc_at_end",
          "first_token_entropy", "outside_top10")  # fmt: skip


def arm_options(arm: str) -> dict[str, Any]:
    """The training options of the SmolLM2 arm ``arm`` (its ``REPROBE`` mark left out)."""
    return {k: v for k, v in ARMS[arm].items() if k != REPROBE}


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = {r["arm"] for r in read(out)}
    arms = ["start", *args.arms]
    for arm in arms:
        if arm in done:
            continue
        if args.setting == "tiny":
            config = tiny_config(args, arm, out)
        elif arm == "start":  # the warm-up itself, measured the same way
            config = start_config(args, out)
        else:
            config = TrainConfig(**{**COMMON, **arm_options(arm)}, model=args.warmup,
                                 seed=args.seed, output_dir=str(out / arm))  # fmt: skip
        trainer, inputs, seconds = train(config)
        reprobe = {}
        if args.setting != "tiny" and ARMS.get(arm, {}).get(REPROBE):
            before = inputs.task.policy(trainer.model, trainer.tokenizer, inputs.valid,
                                        vocab_size=trainer.vocab_size, seed=args.seed)  # fmt: skip
            # the same probe as at the start, on the features the steps left
            reprobe = {**trainer._probe_bkspc_row(), "policy_before": before.as_dict()}
        policy = inputs.task.policy(trainer.model, trainer.tokenizer, inputs.valid,
                                    vocab_size=trainer.vocab_size, seed=args.seed)  # fmt: skip
        settings = (TINY_ARMS if args.setting == "tiny" else ARMS).get(arm, {})
        record = {"arm": arm, "settings": settings, "seconds": round(seconds, 1),
                  "trace": metric_trace(out / arm), "policy": policy.as_dict(),
                  "probe": trainer.probe_stats, "reprobe": reprobe,
                  "scores": evaluate(trainer, inputs, args.seed)}  # fmt: skip
        with open(out / "arms.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        print(arm, f"{seconds:.0f} s", row(record), flush=True)


def start_config(args: argparse.Namespace, out: Path) -> TrainConfig:
    """The warm-up itself, measured the same way (one step at a vanishing learning rate)."""
    settings = {**COMMON, "method": "mle", "backspace": False, "p_noise": 0.0, "steps": 1,
                "lr": 1e-12, "warmup_steps": 0}  # fmt: skip
    return TrainConfig(**settings, model=args.warmup, seed=args.seed,
                       output_dir=str(out / "start"))  # fmt: skip


def tiny_config(args: argparse.Namespace, arm: str, out: Path) -> TrainConfig:
    """The demo's continuation behind ``arm`` from the warm-up ``args.warmup``, with the
    arm's options (``start``: the warm-up, one step at a vanishing learning rate)."""
    configs = method_configs(DemoSettings(), args.seed, Path(args.warmup), out)
    if arm == "start":
        return configs["mle"].replace(steps=1, lr=1e-12, warmup_steps=0,
                                      output_dir=str(out / "start"))  # fmt: skip
    method, options = TINY_ARMS[arm]
    return configs[method].replace(**options, output_dir=str(out / arm))


def read(out: Path) -> list[dict[str, Any]]:
    path = out / "arms.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def row(record: dict[str, Any]) -> str:
    policy, scores = record["policy"], record["scores"]
    cells = [f"{policy[k]:.3f}" for k in POLICY]
    cells += [f"{scores[k]['accuracy']:.3f}" for k in ("greedy", "greedy-p0.1", "sampled")]
    cells.append(f"{scores['greedy-p0.1']['forced_deleted_rate']:.2f}")
    return "| " + record["arm"] + " | " + " | ".join(cells) + " |"


def table(out: Path) -> None:
    print("| arm | P(eos\\|answer) | tail at answer | P(bk\\|answer+wrong) | P(bk\\|answer) | "
          "first-token entropy | outside top 10 | greedy | greedy p=0.1 | sampled T=1 | "
          "forced deleted p=0.1 |")  # fmt: skip
    print("|---" * 11 + "|")
    for record in read(out):
        print(row(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/noharm")
    parser.add_argument("--warmup", help="the warm-up model folder (plain MLE, no <bkspc>)")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--setting", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--arms", nargs="+", default=list(ARMS),
                        choices=sorted({*ARMS, *TINY_ARMS}))  # fmt: skip
    parser.add_argument("--table", action="store_true", help="print the table and stop")
    args = parser.parse_args()
    if args.table:
        table(Path(args.out))
    else:
        run(args)


if __name__ == "__main__":
    main()
