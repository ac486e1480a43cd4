"""Cost of the one-pass backspace layout against a plain causal forward.

``state_logits`` on rows with 10% backspaces versus ``model(input_ids)`` over the same
number of elements, same model, same batch: forward only, and forward + backward.
"""

from __future__ import annotations

import random

import torch

from sequencematch.core.forward import state_logits

from .common import benchmark_model, interleaved_medians, parameter_count, parse_args, print_summary


def rows_with_backspaces(batch: int, width: int, prompt: int, bkspc_id: int, rate: float):
    """``[B, T]`` random rows whose actions are ``rate`` backspaces (never into the prompt)."""
    rng = random.Random(0)
    rows = []
    for _ in range(batch):
        row = [rng.randrange(4, bkspc_id) for _ in range(prompt)]
        depth = 0
        while len(row) < width:
            if depth > 0 and rng.random() < rate:
                row.append(bkspc_id)
                depth -= 1
            else:
                row.append(rng.randrange(4, bkspc_id))
                depth += 1
        rows.append(row)
    return torch.tensor(rows)


def main() -> None:
    args = parse_args(__doc__)
    model, _, bkspc_id = benchmark_model(args.quick)
    batch, width, prompt = (8, 128, 16) if args.quick else (16, 256, 16)
    repeats = 3 if args.quick else 7
    sequences = rows_with_backspaces(batch, width, prompt, bkspc_id, rate=0.10)
    prompts = torch.full((batch,), prompt)
    lengths = torch.full((batch,), width)
    share = (sequences[:, prompt:] == bkspc_id).float().mean().item()

    def ours_forward():
        with torch.no_grad():
            state_logits(model, sequences, prompts, lengths, bkspc_id)

    def plain_forward():
        with torch.no_grad():
            return model(input_ids=sequences).logits

    def ours_train():
        state_logits(model, sequences, prompts, lengths, bkspc_id).float().mean().backward()

    def plain_train():
        model(input_ids=sequences).logits.float().mean().backward()

    times = interleaved_medians(
        {"ours_f": ours_forward, "plain_f": plain_forward, "ours_t": ours_train,
         "plain_t": plain_train},
        repeats,
    )  # fmt: skip
    forward_ratio = times["ours_f"] / times["plain_f"]
    train_ratio = times["ours_t"] / times["plain_t"]
    print(f"model: {parameter_count(model) / 1e6:.2f}M parameters, batch {batch} x {width} "
          f"tokens, {share:.1%} backspaces among actions")  # fmt: skip
    print(f"forward:            state_logits {times['ours_f'] * 1e3:8.1f} ms, "
          f"plain {times['plain_f'] * 1e3:8.1f} ms, ratio {forward_ratio:.3f}")  # fmt: skip
    print(f"forward + backward: state_logits {times['ours_t'] * 1e3:8.1f} ms, "
          f"plain {times['plain_t'] * 1e3:8.1f} ms, ratio {train_ratio:.3f}")  # fmt: skip
    print_summary(
        {"state_logits_overhead": round(forward_ratio, 3),
         "state_logits_train_overhead": round(train_ratio, 3), "quick": args.quick}
    )  # fmt: skip


if __name__ == "__main__":
    main()
