"""Does the ``<bkspc>`` action help or hurt a trained model's own samples?

A model trained with ``<bkspc>`` differs from plain MLE in two ways: its body (what it
writes) and its deletions. Sampling the same model on the same validation questions with the
same seeds, once with ``<bkspc>`` allowed and once with its logit masked, separates them: the
difference is what the deletions do; what is left against plain MLE is the body.

    python -m experiments.backtracking_value --models runs/noharm/mle-bkspc-probe/model \
        --seeds 4 --out runs/noharm/backtracking.json
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
from sequencematch.core.causal_lm import backspace_id  # noqa: E402
from sequencematch.evaluation.statistics import mean_confidence_interval  # noqa: E402
from sequencematch.tasks.exact_match import evaluate_exact_match  # noqa: E402
from sequencematch.training.config import TrainConfig  # noqa: E402


def masked(model: torch.nn.Module, token: int) -> torch.utils.hooks.RemovableHandle:
    """Hook the output head so that ``token`` is never chosen (its logit -inf)."""

    def hook(_module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[..., token] = float("-inf")  # [B, T, V]
        return output

    return model.get_output_embeddings().register_forward_hook(hook)


def sampled(model: Any, inputs: Any, bkspc: int | None, seed: int) -> list[bool]:
    pairs = [(p.prompt, p.completion) for p in inputs.valid]
    result = evaluate_exact_match(
        model, inputs.tokenizer, pairs, bkspc_id=bkspc, batch_size=50, seed=seed,
        max_new_tokens=inputs.sample_length, do_sample=True, num_examples=0,
    )  # fmt: skip
    return list(result.outcomes)


def measure(model_dir: str, seeds: int, first_seed: int) -> dict[str, Any]:
    config = TrainConfig(**{**COMMON, "method": "mle"}, model=model_dir, seed=first_seed,
                         output_dir="/tmp/unused-backtracking")  # fmt: skip
    inputs = prepare_run(config)
    model = inputs.model.eval()
    bkspc = backspace_id(model)
    allowed, without = [], []
    for seed in range(first_seed, first_seed + seeds):
        allowed += sampled(model, inputs, bkspc, seed)
        if bkspc is None:
            without += allowed[-len(inputs.valid) :]
            continue
        handle = masked(model, bkspc)
        try:
            without += sampled(model, inputs, None, seed)
        finally:
            handle.remove()
    return {"model": model_dir, "allowed": allowed, "masked": without}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else []  # a rerun adds the rest
    done = {r["model"] for r in results}
    for model_dir in args.models:
        if model_dir in done:
            continue
        found = measure(model_dir, args.seeds, args.seed)
        a, m = found["allowed"], found["masked"]
        n = len(a) // args.seeds  # questions; outcomes run question-fastest within each seed
        per_question = [  # mean over seeds of (allowed - masked): the questions are the units
            sum(float(a[s * n + q]) - float(m[s * n + q]) for s in range(args.seeds)) / args.seeds
            for q in range(n)
        ]
        diff = mean_confidence_interval(per_question)
        found["difference"] = diff
        results.append(found)
        print(f"{model_dir}: sampled {sum(a) / len(a):.3f} with <bkspc>, "
              f"{sum(m) / len(m):.3f} masked; difference {diff[0]:+.3f} "
              f"[{diff[1]:+.3f}, {diff[2]:+.3f}] over {n} questions", flush=True)  # fmt: skip
        out.write_text(json.dumps(results))


if __name__ == "__main__":
    main()
