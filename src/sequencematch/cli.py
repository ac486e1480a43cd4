"""Command-line interface: thin argument parsing over the library."""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Spinning OpenMP threads stall small ops 10-50x when a vCPU is descheduled; sleep instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .config import add_config_arguments, config_from_arguments  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sequencematch",
        description="SequenceMatch: imitation learning with backtracking for causal LMs",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train and compare MLE and SequenceMatch models")
    demo.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    demo.add_argument("--quick", action="store_true", help="a one-minute version")
    train = commands.add_parser(
        "train",
        help="train a model (MLE or SequenceMatch); runs under torchrun too",
        description="Train with MLE or SequenceMatch. Options come from --config FILE.yaml, "
        "then from the flags below (flags win). Launch with torchrun --nproc-per-node N for "
        "data parallel training.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    train.add_argument("--config", default=None, help="YAML file of options")
    add_config_arguments(train)
    return parser


def run_train(args: argparse.Namespace) -> int:
    from .distributed import close_world, init_world
    from .experiment import prepare_run, task_file
    from .trainer import Trainer, resolve_device

    config = config_from_arguments(args)
    world = init_world(str(resolve_device(config.device)))
    try:
        inputs = prepare_run(config)
        trainer = Trainer(
            config, inputs.model, inputs.tokenizer, inputs.train, world=world,
            model_files=task_file(inputs.task_info),
        )  # fmt: skip
        last = trainer.train()
        if world.is_main:
            print({k: v for k, v in last.items() if not isinstance(v, list)})
            print(f"run folder: {config.output_dir}")
    finally:
        close_world(world)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return run_train(args)
        if args.command == "demo":
            print("sequencematch demo: the arithmetic comparison is coming; nothing to run yet.")
            return 0
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
