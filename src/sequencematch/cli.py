"""Command-line interface: thin argument parsing over the library."""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sequencematch",
        description="SequenceMatch: imitation learning with backtracking for causal LMs",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train and compare MLE and SequenceMatch models")
    demo.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    demo.add_argument("--quick", action="store_true", help="a one-minute version")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        print("sequencematch demo: the arithmetic comparison is coming; nothing to run yet.")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
