"""Throughput of ``generate`` with backspace against Hugging Face ``generate``.

Same model, batch, prompt and sampling settings; both run a fixed number of steps (no
early stop). Throughput counts model steps (actions, backspaces included) per second.
"""

from __future__ import annotations

import torch

from sequencematch.core.sampling import generate

from .common import benchmark_model, interleaved_medians, parameter_count, parse_args, print_summary


def main() -> None:
    args = parse_args(__doc__)
    model, _, bkspc_id = benchmark_model(args.quick)
    batch, prompt, new_tokens = (8, 16, 64) if args.quick else (16, 16, 240)
    repeats = 2 if args.quick else 3
    prompts = torch.randint(
        4, bkspc_id, (batch, prompt), generator=torch.Generator().manual_seed(0)
    )
    steps = {}

    def ours():
        out = generate(model, prompts, bkspc_id=bkspc_id, max_new_tokens=new_tokens,
                       max_steps=new_tokens, eos_token_id=[],
                       generator=torch.Generator().manual_seed(1))  # fmt: skip
        steps["ours"] = sum(len(a) for a in out.actions)

    def hf():
        with torch.no_grad():
            out = model.generate(prompts, do_sample=True, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, pad_token_id=0, top_k=0)  # fmt: skip
        steps["hf"] = (out.shape[1] - prompt) * batch

    times = interleaved_medians({"ours": ours, "hf": hf}, repeats)
    ours_rate = steps["ours"] / times["ours"]
    hf_rate = steps["hf"] / times["hf"]
    ratio = ours_rate / hf_rate
    print(f"model: {parameter_count(model) / 1e6:.2f}M parameters, batch {batch}, prompt "
          f"{prompt}, {new_tokens} steps")  # fmt: skip
    print(f"sequencematch.generate (with <bkspc>): {ours_rate:8.0f} steps/s")
    print(f"transformers generate:                  {hf_rate:8.0f} steps/s")
    print(f"ratio: {ratio:.3f}")
    print_summary({"generate_speed_ratio": round(ratio, 3), "quick": args.quick})


if __name__ == "__main__":
    main()
