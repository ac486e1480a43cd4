"""Training speed on a pretrained model: float32 vs a bfloat16 body, full fine-tune vs LoRA,
SequenceMatch step vs MLE step, and what the bfloat16 body changes in the loss.

One process, every variant timed in alternation (interleaved medians), so the ratios share
the machine's load. Steps are built from the core functions (``chunked_state_logits``, the
objectives, backward, AdamW). Utilisation is model FLOPs per second over a bfloat16 matmul
peak measured in the same run.
"""

from __future__ import annotations

import torch

from .common import interleaved_medians, print_summary
from .pretrained_common import (
    Step,
    batches,
    load,
    matmul_peak,
    parse_args,
    sizes,
    training_flops,
    with_lora,
)


def loss_differences(model, bkspc_id, eos_id, data, model_rows) -> dict[str, float]:
    """The step loss and its MLE term on one fixed batch, no gradients: float32 body, bfloat16
    body with the float32 head, and the whole model under bfloat16 autocast (bf16 logits
    up-cast afterwards, the way a plain autocast would give them)."""
    variants = {
        "fp32": (None, "chunked"),
        "bf16_body": (torch.bfloat16, "chunked"),
        "autocast_all": (torch.bfloat16, "dense"),
    }
    values = {}
    with torch.no_grad():
        for name, (body_dtype, logits) in variants.items():
            for method, suffix in (("sequencematch", ""), ("mle", "_mle")):
                step = Step(model, bkspc_id, eos_id, data, model_rows, method=method,
                            body_dtype=body_dtype, logits=logits)  # fmt: skip
                values[name + suffix] = step.loss()[1]
    return values


def main() -> None:
    args = parse_args(__doc__)
    model, tokenizer, bkspc_id = load(args.model, args.quick)
    eos_id = tokenizer.eos_token_id
    lora = with_lora(model)
    size = sizes(args.quick)
    data, model_rows = batches(tokenizer, bkspc_id, size)
    bf16 = torch.bfloat16

    def step(network, method, body_dtype, logits="chunked"):
        return Step(network, bkspc_id, eos_id, data, model_rows, method=method,
                    body_dtype=body_dtype, logits=logits)  # fmt: skip

    steps = {
        "mle_fp32_full": step(model, "mle", None),
        "mle_bf16_full": step(model, "mle", bf16),
        "mle_fp32_lora": step(lora, "mle", None),
        "mle_bf16_lora": step(lora, "mle", bf16),
        "sm_fp32_full": step(model, "sequencematch", None),
        "sm_bf16_full": step(model, "sequencematch", bf16),
        "sm_fp32_dense": step(model, "sequencematch", None, "dense"),
    }
    differences = loss_differences(model, bkspc_id, eos_id, data, model_rows)
    repeats = 3 if args.quick else 5
    times = interleaved_medians(steps, repeats)
    peak = matmul_peak(bf16, 2048 if args.quick else 4096, 10 if args.quick else 5)

    width = data.sequences.shape[1]
    tokens = steps["mle_fp32_full"].tokens()
    rate = {name: tokens / times[name] for name in steps if name.startswith("mle")}
    utilisation = {
        kind: training_flops(network, tokens, width) / times[f"mle_bf16_{kind}"] / peak
        for kind, network in (("full", model), ("lora", lora))
    }
    speedup = {k: rate[f"mle_bf16_{k}"] / rate[f"mle_fp32_{k}"] for k in ("full", "lora")}
    sm_over_mle = {p: times[f"sm_{p}_full"] / times[f"mle_{p}_full"] for p in ("fp32", "bf16")}
    sm_tokens = steps["sm_fp32_full"].tokens()
    chunked_over_dense = times["sm_fp32_full"] / times["sm_fp32_dense"]

    parameters = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    vocab = model.config.vocab_size
    print(f"model {args.model}: {parameters / 1e6:.1f}M parameters, vocabulary {vocab}; "
          f"LoRA r 64 alpha 16: {trainable / 1e6:.2f}M trainable")  # fmt: skip
    print(f"MLE batch: {size.data_rows} rows, {tokens} tokens (padded width {width}); "
          f"SequenceMatch adds {size.model_rows} model rows: {sm_tokens} tokens")  # fmt: skip
    for name in rate:
        print(f"  {name:14s} {times[name]:7.3f} s/step  {rate[name]:8.1f} tokens/s")
    print(f"bf16 body / float32, MLE tokens/s: full {speedup['full']:.2f}x, "
          f"LoRA {speedup['lora']:.2f}x (aim >= 1.6x)")  # fmt: skip
    print(f"bf16 matmul peak {peak / 1e9:.0f} GFLOP/s; utilisation of bf16 MLE training: full "
          f"{utilisation['full']:.1%}, LoRA {utilisation['lora']:.1%} (aim >= 45%)")  # fmt: skip
    for p in ("fp32", "bf16"):
        print(f"SequenceMatch step / MLE step ({p}): {times[f'sm_{p}_full']:.3f} / "
              f"{times[f'mle_{p}_full']:.3f} s = {sm_over_mle[p]:.2f}x (aim <= 2.0x; "
              f"tokens {sm_tokens / tokens:.2f}x)")  # fmt: skip
    print(f"SequenceMatch step (fp32), chunked logits / full logits: {chunked_over_dense:.2f}x")
    fp32 = differences["fp32"]
    relative = {
        name: abs(differences[name] - fp32) / abs(fp32) for name in ("bf16_body", "autocast_all")
    }
    mle_relative = abs(differences["bf16_body_mle"] - differences["fp32_mle"]) / abs(
        differences["fp32_mle"]
    )
    print(f"step loss (0.5 MLE + 0.5 SequenceMatch chi2, alpha 1) on one batch: float32 "
          f"{fp32:.5f}, bf16 body + float32 head {differences['bf16_body']:.5f} "
          f"(relative {relative['bf16_body']:.1e}), whole model under bf16 autocast "
          f"{differences['autocast_all']:.5f} "
          f"(relative {relative['autocast_all']:.1e})")  # fmt: skip
    print(f"MLE term: float32 {differences['fp32_mle']:.5f}, bf16 body "
          f"{differences['bf16_body_mle']:.5f} (relative {mle_relative:.1e})")  # fmt: skip
    print_summary({
        "model": args.model, "quick": args.quick,
        "bf16_over_fp32_full": round(speedup["full"], 3),
        "bf16_over_fp32_lora": round(speedup["lora"], 3),
        "utilisation_bf16_full": round(utilisation["full"], 3),
        "utilisation_bf16_lora": round(utilisation["lora"], 3),
        "sm_over_mle_fp32": round(sm_over_mle["fp32"], 3),
        "sm_over_mle_bf16": round(sm_over_mle["bf16"], 3),
        "sm_chunked_over_dense_fp32": round(chunked_over_dense, 3),
        "loss_relative_difference_bf16_body": float(f"{relative['bf16_body']:.2e}"),
        "loss_relative_difference_autocast_all": float(f"{relative['autocast_all']:.2e}"),
        "mle_relative_difference_bf16_body": float(f"{mle_relative:.2e}"),
    })  # fmt: skip


if __name__ == "__main__":
    main()
