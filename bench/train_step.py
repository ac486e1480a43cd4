"""Cost of a SequenceMatch step against an MLE step, sampling cost, and FLOP utilisation.

Same model, same data batch: one SequenceMatch step (data batch + model batch from the
replay buffer, one forward and backward, excluding sampling) versus one MLE step; the
cost of one replay refill amortised over ``refresh_every`` steps; the training
throughput in FLOP/s as a fraction of the float32 matmul peak measured in the same run;
and the trainer's fused AdamW step against torch's unfused one on the same parameters.
"""

from __future__ import annotations

import copy
import tempfile
import time

import torch

from sequencematch.apps.setup import prepare_run
from sequencematch.training.config import TrainConfig
from sequencematch.training.optimizer import build_adamw, is_fused
from sequencematch.training.trainer import Trainer

from .common import interleaved_medians, parse_args, print_summary


def matmul_peak(size: int, repeats: int) -> float:
    """Float32 FLOP/s of a square matmul (the machine's practical peak)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def optimiser_step_seconds(model: torch.nn.Module, repeats: int) -> dict[str, float]:
    """Median seconds of one AdamW step over ``model``'s parameters: the trainer's fused one
    and torch's unfused one, each on its own copy (same gradients), timed in alternation."""
    generator = torch.Generator().manual_seed(0)
    steps = {}
    for name in ("fused", "unfused"):
        params = list(copy.deepcopy(model).parameters())
        for parameter in params:
            parameter.grad = 1e-3 * torch.randn(parameter.shape, generator=generator)
        groups = [{"params": params, "weight_decay": 0.01}]
        optimiser = (build_adamw(groups, lr=1e-4) if name == "fused"
                     else torch.optim.AdamW(groups, lr=1e-4, fused=False))  # fmt: skip
        assert is_fused(optimiser) == (name == "fused")
        steps[name] = optimiser.step
    return interleaved_medians(steps, repeats)


def make_trainer(config: TrainConfig) -> Trainer:
    inputs = prepare_run(config)
    return Trainer(config, inputs.model, inputs.tokenizer, inputs.train)


def main() -> None:
    args = parse_args(__doc__)
    sizes = (
        dict(hidden_size=128, num_layers=2) if args.quick else dict(hidden_size=256, num_layers=6)
    )
    # batch sizes are the trainer's defaults (32 data, 16 model sequences per step)
    base = dict(n_train=512, n_valid=8, n_test=8, samples_per_refresh=16, refresh_every=50,
                progress=False, steps=1000, max_new_tokens=24, num_heads=8, **sizes)  # fmt: skip
    repeats = 3 if args.quick else 7
    with tempfile.TemporaryDirectory() as folder:
        mle = make_trainer(TrainConfig(output_dir=f"{folder}/mle", method="mle", **base))
        # no warm-up: every step of the SequenceMatch trainer trains on model rows
        sm_config = TrainConfig(output_dir=f"{folder}/sm", method="sequencematch",
                                mle_warmup_steps=0, **base)  # fmt: skip
        sm = make_trainer(sm_config)
        start = time.perf_counter()
        sm._refresh(1)
        refresh_seconds = time.perf_counter() - start
        counter = {"step": 1}

        def mle_step():
            counter["step"] += 1
            mle._train_step(counter["step"])

        def sm_step():
            sm._train_step(counter["step"])

        times = interleaved_medians({"mle": mle_step, "sm": sm_step}, repeats)
        parameters = sum(p.numel() for p in mle.model.parameters())
        prompts, actions, _ = mle._data_rows(2)
        tokens = sum(len(p) + len(a) for p, a in zip(prompts, actions, strict=True))
        mle_elements = sum(b.sequences.numel() for b, *_ in mle._micro_batches(2, "mle"))
        sm_elements = sum(b.sequences.numel() for b, *_ in sm._micro_batches(2, "sequencematch"))
    optimiser = optimiser_step_seconds(mle.model, repeats)
    fused_ratio = optimiser["fused"] / optimiser["unfused"]
    peak = matmul_peak(1024 if args.quick else 2048, 5 if args.quick else 10)
    model_flops = 6 * parameters * tokens  # forward + backward, dense part
    mfu = model_flops / times["mle"] / peak
    ratio = times["sm"] / times["mle"]
    amortised = refresh_seconds / base["refresh_every"] / times["mle"]
    config = mle.config
    print(f"model: {parameters / 1e6:.2f}M parameters; {config.batch_size} data + "
          f"{config.model_batch_size} model sequences; {tokens} data tokens per step")  # fmt: skip
    print(f"padded elements per step: MLE {mle_elements}, SequenceMatch {sm_elements} "
          f"(ratio {sm_elements / mle_elements:.2f})")  # fmt: skip
    print(f"MLE step {times['mle'] * 1e3:.1f} ms, SequenceMatch step {times['sm'] * 1e3:.1f} ms:"
          f" ratio {ratio:.3f}")  # fmt: skip
    print(
        f"one refill ({base['samples_per_refresh']} samples) {refresh_seconds * 1e3:.0f} ms,"
        f" amortised over {base['refresh_every']} steps: {amortised:.3f} MLE steps per step"
    )
    print(f"float32 matmul peak {peak / 1e9:.1f} GFLOP/s; MLE training "
          f"{model_flops / times['mle'] / 1e9:.1f} GFLOP/s: utilisation {mfu:.1%}")  # fmt: skip
    print(f"AdamW step ({parameters / 1e6:.2f}M parameters): fused "
          f"{optimiser['fused'] * 1e3:.2f} ms, unfused {optimiser['unfused'] * 1e3:.2f} ms: "
          f"ratio fused/unfused {fused_ratio:.3f}")  # fmt: skip
    print_summary({"sm_step_over_mle_step": round(ratio, 3),
                   "fused_over_unfused_optimiser_step": round(fused_ratio, 3),
                   "sm_elements_over_mle_elements": round(sm_elements / mle_elements, 3),
                   "sampling_per_step_over_mle_step": round(amortised, 3),
                   "mfu": round(mfu, 3), "quick": args.quick})  # fmt: skip


if __name__ == "__main__":
    main()
