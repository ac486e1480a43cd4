"""``generate`` with ``<bkspc>`` against Hugging Face ``generate`` on a pretrained model.

Same model (float32), batch 16, prompt and sampling settings (temperature 1, no top-k/top-p);
both run a fixed number of steps (no early stop). Throughput counts model steps (actions,
backspaces included) per second; timed in alternation in one process.
"""

from __future__ import annotations

import torch

from sequencematch.core.sampling import generate

from .common import interleaved_medians, print_summary
from .pretrained_common import load, parse_args


def main() -> None:
    args = parse_args(__doc__)
    model, _, bkspc_id = load(args.model, args.quick)
    model.eval()
    batch, prompt, new_tokens = (16, 16, 16) if args.quick else (16, 32, 64)
    repeats = 2 if args.quick else 3
    prompts = torch.randint(
        4, bkspc_id, (batch, prompt), generator=torch.Generator().manual_seed(0)
    )
    steps = {}

    def ours():
        out = generate(model, prompts, bkspc_id=bkspc_id, max_new_tokens=new_tokens,
                       max_steps=new_tokens, eos_token_id=[], top_k=None, top_p=None,
                       generator=torch.Generator().manual_seed(1))  # fmt: skip
        steps["ours"] = sum(len(a) for a in out.actions)

    def hf():
        with torch.no_grad():
            out = model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True,
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 temperature=1.0, top_k=0, top_p=1.0,
                                 pad_token_id=0)  # fmt: skip
        steps["hf"] = (out.shape[1] - prompt) * batch

    times = interleaved_medians({"ours": ours, "hf": hf}, repeats)
    ours_rate = steps["ours"] / times["ours"]
    hf_rate = steps["hf"] / times["hf"]
    ratio = ours_rate / hf_rate
    parameters = sum(p.numel() for p in model.parameters())
    vocab = model.config.vocab_size
    print(f"model {args.model}: {parameters / 1e6:.1f}M parameters, vocabulary {vocab}; "
          f"batch {batch}, prompt {prompt}, {new_tokens} steps")  # fmt: skip
    print(f"sequencematch.generate (with <bkspc>): {ours_rate:8.1f} steps/s")
    print(f"transformers generate:                  {hf_rate:8.1f} steps/s")
    print(f"ratio: {ratio:.3f} (aim >= 1.0)")
    print_summary({"model": args.model, "quick": args.quick,
                   "generate_speed_ratio": round(ratio, 3)})  # fmt: skip


if __name__ == "__main__":
    main()
