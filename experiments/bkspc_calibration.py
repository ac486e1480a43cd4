"""Does a model delete right tokens because it doubts them, or regardless of what it believes?

Training rows insert a plausible wrong token before each completion token (and before
``<eos>``: an extra digit) with probability ``p``, followed by ``<bkspc>``. A model that
shows token ``d`` after a prefix cannot know whether the data wrote ``d`` or a mistake; if
it believes ``d`` is right with probability ``q`` (its own renormalised probability of ``d``
at the prefix, ``<bkspc>`` left out), the data's rate of ``<bkspc>`` after ``d`` is

    P(bk | d) = p (1 - q) / k  /  (p (1 - q) / k + (1 - p) q)

where ``k`` is the number of mistakes the task draws from (the digits of the base less the
right one). This script reads, at every right token of the reference answers of the
validation questions, the model's ``P(<bkspc>)`` after it and this Bayes rate from the same
model's belief, and reports both by belief bin. Where measured >> Bayes the model deletes
tokens it itself believes right (a generalisation failure, fixed by training); where they
agree the deletions are the noise rate's price (fixed only by less or more telling noise).

    python -m experiments.bkspc_calibration --models runs/noharm/mle-bkspc-probe/model \
        runs/noharm/sm-fixed-alpha10-data-value/model --out runs/noharm/calibration.json
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

import torch  # noqa: E402

from experiments.no_harm import COMMON  # noqa: E402
from sequencematch.apps.setup import prepare_run  # noqa: E402
from sequencematch.core.causal_lm import backspace_id, valid_vocabulary  # noqa: E402
from sequencematch.core.examples import encode_prompt  # noqa: E402
from sequencematch.evaluation.policy import calibrated_bkspc_rate  # noqa: E402
from sequencematch.tasks import arithmetic  # noqa: E402
from sequencematch.training.config import TrainConfig  # noqa: E402

BINS = (0.0, 0.5, 0.9, 0.99, 1.0001)
NOISE_LEVELS = (0.15, 0.1, 0.05, 0.02)  # the Bayes rate at the answer's end at each


@torch.no_grad()
def measure(model_dir: str, seed: int, p: float) -> dict[str, Any]:
    config = TrainConfig(**{**COMMON, "method": "mle"}, model=model_dir, seed=seed,
                         output_dir="/tmp/unused-calibration")  # fmt: skip
    inputs = prepare_run(config)
    model, tokenizer = inputs.model.eval(), inputs.tokenizer
    bk = backspace_id(model)
    eos = tokenizer.eos_token_id
    vocab = valid_vocabulary(model, tokenizer)
    points: list[dict[str, float]] = []
    for pair in inputs.valid:
        prompt = encode_prompt(tokenizer, pair.prompt)
        answer = [int(t) for t in tokenizer(pair.completion, add_special_tokens=False).input_ids]
        ids = torch.tensor([[*prompt, *answer]])
        logits = model(input_ids=ids).logits[0, :, :vocab].float()  # [T, V]
        probs = logits.softmax(-1)
        base = arithmetic.parse_base(pair.prompt[pair.prompt.find("In base") :])
        k = max(1, base - 1)
        for j, token in enumerate(answer):
            before = probs[len(prompt) - 1 + j].clone()  # the state the token was written at
            if bk is not None:
                before[bk] = 0.0
            q = float(before[token] / before.sum())
            after = probs[len(prompt) + j]  # [V]: the state after the token
            points.append({
                "q": q, "k": k, "bayes": calibrated_bkspc_rate(p, q, k),
                "p_bk": float(after[bk]) if bk is not None else 0.0,
                "p_eos": float(after[eos]), "end": float(j == len(answer) - 1),
            })  # fmt: skip
    return {"model": model_dir, "points": points}


def summarise(points: list[dict[str, float]]) -> list[dict[str, float]]:
    rows = []
    for where in ("end", "inside"):
        chosen = [x for x in points if (x["end"] == 1.0) == (where == "end")]
        for low, high in zip(BINS[:-1], BINS[1:], strict=True):
            part = [x for x in chosen if low <= x["q"] < high]
            if not part:
                continue
            n = len(part)
            rows.append({
                "where": where, "belief": f"[{low:.2f}, {min(high, 1.0):.2f})", "n": n,
                "measured": sum(x["p_bk"] for x in part) / n,
                "bayes": sum(x["bayes"] for x in part) / n,
            })  # fmt: skip
    return rows


def noise_price(points: list[dict[str, float]]) -> dict[str, float]:
    """Mean ``P(<bkspc>)`` after a right answer's last token: measured, and the Bayes rate
    from the model's beliefs at each noise level (the least a calibrated model deletes)."""
    ends = [x for x in points if x["end"] == 1.0]
    price = {"measured": sum(x["p_bk"] for x in ends) / len(ends)}
    for p in NOISE_LEVELS:
        price[f"bayes_p{p}"] = sum(
            calibrated_bkspc_rate(p, x["q"], int(x["k"])) for x in ends
        ) / len(ends)
    return price


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--p-noise", type=float, default=COMMON["p_noise"])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    for model_dir in args.models:
        found = measure(model_dir, args.seed, args.p_noise)
        found["summary"] = summarise(found["points"])
        found["at_end"] = noise_price(found["points"])
        results.append(found)
        print(model_dir)
        for row in found["summary"]:
            print(f"  {row['where']:6} q in {row['belief']:13} n={row['n']:4d} "
                  f"P(bk) measured {row['measured']:.3f}  Bayes {row['bayes']:.3f}")  # fmt: skip
        print("  at the end:", {k: round(v, 3) for k, v in found["at_end"].items()})
        Path(args.out).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
