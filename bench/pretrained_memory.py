"""Peak memory of one SequenceMatch step: full ``[B, T, V]`` logits vs logits read a chunk
of states at a time, with and without gradient checkpointing of the blocks, float32 and a
bfloat16 body, full fine-tune and LoRA.

Each variant runs in a fresh process (``tracemalloc`` does not see torch's allocations): it
loads the model, runs one step (the optimiser state now exists), then resets the kernel's
peak-RSS mark (``/proc/self/clear_refs``) and runs a second step. The step's peak is the
peak RSS during that step minus the RSS before it: what the step adds to the resident model
and optimiser state (activations, logits, gradients). glibc is told to return freed memory
to the system at once (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``), so RSS
follows the live tensors. Linux only.
"""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
import time

import torch

from sequencematch.models.memory import set_gradient_checkpointing

from .common import print_summary
from .pretrained_common import Sizes, Step, batches, load, parse_args, with_lora

# name -> (logits, body dtype, block checkpointing, LoRA)
VARIANTS = {
    "dense": ("dense", None, False, False),
    "chunked": ("chunked", None, False, False),
    "chunked_ckpt": ("chunked", None, True, False),
    "chunked_bf16": ("chunked", torch.bfloat16, False, False),
    "chunked_bf16_ckpt": ("chunked", torch.bfloat16, True, False),
    "dense_lora": ("dense", None, False, True),
    "chunked_ckpt_lora": ("chunked", None, True, True),
}


def memory_sizes(quick: bool) -> Sizes:
    """Data and model rows of the measured step (the trainer's 2:1 ratio)."""
    return Sizes(4, 2, 16, 32) if quick else Sizes(16, 8, 32, 64)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.M).group(1))


def measure(variant: str, model_name: str, quick: bool) -> dict[str, float]:
    """One variant, in this process: the second step's peak above the RSS before it."""
    logits, body_dtype, checkpointed, lora = VARIANTS[variant]
    model, tokenizer, bkspc_id = load(model_name, quick)
    if lora:
        model = with_lora(model)
    if checkpointed:
        set_gradient_checkpointing(model)
    data, model_rows = batches(tokenizer, bkspc_id, memory_sizes(quick))
    step = Step(model, bkspc_id, tokenizer.eos_token_id, data, model_rows,
                method="sequencematch", body_dtype=body_dtype, logits=logits)  # fmt: skip
    step()
    gc.collect()
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the peak-RSS mark restarts from the current RSS
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    elements = int(step.batch.sequences.numel())
    return {
        "step_peak_mib": (peak - before) / 1024,
        "process_peak_mib": peak / 1024,
        "resident_mib": before / 1024,
        "seconds": seconds,
        "logits_mib": elements * model.config.vocab_size * 4 / 2**20,
    }


def run_variant(variant: str, args) -> dict[str, float]:
    """:func:`measure` in a fresh Python process."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    command = [sys.executable, "-m", "bench.pretrained_memory", "--variant", variant,
               "--model", args.model] + (["--quick"] if args.quick else [])  # fmt: skip
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"variant {variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    def variant_option(parser) -> None:
        parser.add_argument("--variant", choices=sorted(VARIANTS),
                            help="measure one variant in this process")  # fmt: skip

    args = parse_args(__doc__, variant_option)
    if args.variant:
        print(json.dumps(measure(args.variant, args.model, args.quick)))
        return
    size = memory_sizes(args.quick)
    results = {variant: run_variant(variant, args) for variant in VARIANTS}
    logits_mib = results["dense"]["logits_mib"]
    print(f"model {args.model}; SequenceMatch step of {size.data_rows} data + "
          f"{size.model_rows} model rows; one [B, T, V] float32 logits tensor: "
          f"{logits_mib:.0f} MiB")  # fmt: skip
    print(
        f"{'variant':18s} {'step peak':>10s} {'process peak':>13s} {'resident':>9s} {'step s':>7s}"
    )
    for variant, result in results.items():
        print(f"{variant:18s} {result['step_peak_mib']:8.0f} MiB {result['process_peak_mib']:9.0f} "
              f"MiB {result['resident_mib']:6.0f} MiB {result['seconds']:7.2f}")  # fmt: skip

    def lower(before: str, after: str) -> float:
        return results[before]["step_peak_mib"] / results[after]["step_peak_mib"]

    ratios = {
        "dense_over_chunked": lower("dense", "chunked"),
        "dense_over_chunked_ckpt": lower("dense", "chunked_ckpt"),
        "dense_over_chunked_bf16_ckpt": lower("dense", "chunked_bf16_ckpt"),
        "dense_lora_over_chunked_ckpt_lora": lower("dense_lora", "chunked_ckpt_lora"),
    }
    for name, ratio in ratios.items():
        print(f"step peak {name.replace('_over_', ' / ')}: {ratio:.2f}x (aim >= 2x)")
    peaks = {f"step_peak_mib_{v}": round(r["step_peak_mib"]) for v, r in results.items()}
    rounded = {name: round(ratio, 2) for name, ratio in ratios.items()}
    print_summary({"model": args.model, "quick": args.quick, **rounded, **peaks})


if __name__ == "__main__":
    main()
