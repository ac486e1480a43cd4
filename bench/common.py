"""Shared pieces of the benchmarks: the benchmark model, timing, the JSON summary."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Spinning OpenMP threads stall small ops 10-50x when a vCPU is descheduled; sleep instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from sequencematch.models.backspace import add_backspace  # noqa: E402
from sequencematch.models.presets import char_tokenizer, tiny_model  # noqa: E402

ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz +-=?,."


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def benchmark_model(quick: bool, seed: int = 0):
    """A ~5M-parameter Llama-style model with <bkspc> (smaller with ``quick``)."""
    torch.manual_seed(seed)
    tokenizer = char_tokenizer(ALPHABET)
    sizes = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=6)
    if quick:
        sizes = dict(hidden_size=128, intermediate_size=344, num_hidden_layers=2)
    model = tiny_model("tiny_llama", tokenizer, num_attention_heads=8, num_key_value_heads=8,
                       max_position_embeddings=1024, **sizes)  # fmt: skip
    bkspc_id = add_backspace(model, tokenizer)
    return model.eval(), tokenizer, bkspc_id


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, float]:
    """Median times of several functions, timed in alternation so load swings hit all."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def print_summary(summary: dict[str, float | int | str]) -> None:
    """The machine-readable last line."""
    print(json.dumps(summary, sort_keys=True))
