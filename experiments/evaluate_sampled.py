"""Sampled (temperature 1) accuracy of a finished arithmetic demo's models, paired.

Demos from before the comparison evaluated sampled answers report greedy accuracy only.
This loads every ``seed-<s>/<method>/model`` of a demo folder, evaluates it on the seed's
test questions with answers sampled at temperature 1 (the seed as sampling seed, as the
demo itself now does), first checks that a greedy evaluation of the loaded model
reproduces the outcomes the demo stored (same questions, same answers), and writes the
demo's results with the sampled evaluations added, summarised by the demo's own paired
statistics, into ``--out`` (the demo folder is only read). Each finished evaluation is
appended to ``OUT/evaluations.jsonl``; a rerun skips what is there.

    python -m experiments.evaluate_sampled runs/demo-smol --out runs/demo-smol-sampled
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

from sequencematch.apps.demos.arithmetic_report import (  # noqa: E402
    ArithmeticComparison,
    encode_outcomes,
)
from sequencematch.apps.demos.methods import COMPARED_METHODS  # noqa: E402
from sequencematch.apps.demos.paired_summary import render, summarise  # noqa: E402
from sequencematch.apps.setup import load_trained  # noqa: E402
from sequencematch.tasks.base import EvalOptions  # noqa: E402


def evaluate(model_folder: Path, seed: int, levels: list[float]) -> dict[str, Any]:
    """Greedy at p=0 (the reproduction check) and sampled at T=1 at each level."""
    trained = load_trained(model_folder)
    pairs = trained.prompts_as_trained(trained.task.held_out(trained.tokenizer, None))
    runs = [(0.0, False)] + [(level, True) for level in levels]
    evaluations = []
    for level, sampled in runs:
        options = EvalOptions(seed=seed, noise_prob=level, sample=sampled, temperature=1.0)
        result = trained.task.evaluate(
            trained.model, trained.tokenizer, pairs, bkspc_id=trained.bkspc_id,
            max_new_tokens=trained.sample_length, options=options,
        )  # fmt: skip
        evaluations.append(result.as_dict() | {"outcomes": encode_outcomes(result.outcomes)})
    return {"greedy": evaluations[0], "sampled": evaluations[1:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("demo", type=Path, help="a finished arithmetic demo folder")
    parser.add_argument("--out", type=Path, required=True, help="where results go (new folder)")
    parser.add_argument("--levels", type=float, nargs="+", default=[0.0])
    args = parser.parse_args()
    results = json.loads((args.demo / "results.json").read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "evaluations.jsonl"
    done = {}
    if log.exists():
        for line in log.read_text().splitlines():
            record = json.loads(line)
            done[(record["seed"], record["method"])] = record
    for seed, record in results["seeds"].items():
        for method in COMPARED_METHODS:
            if (seed, method) in done:
                continue
            found = evaluate(args.demo / f"seed-{seed}" / method / "model", int(seed), args.levels)
            stored = next(e for e in record["methods"][method]["sweep"]
                          if e["noise_prob"] == 0.0 and e.get("temperature") is None)  # fmt: skip
            found["greedy_reproduced"] = found["greedy"]["outcomes"] == stored["outcomes"]
            entry = {"seed": seed, "method": method, **found}
            with log.open("a") as handle:
                handle.write(json.dumps(entry) + "\n")
            done[(seed, method)] = entry
            print(f"seed {seed} {method}: greedy reproduced {found['greedy_reproduced']}, "
                  f"sampled {[e['accuracy'] for e in found['sampled']]}", flush=True)  # fmt: skip
    for seed, record in results["seeds"].items():
        for method in COMPARED_METHODS:
            record["methods"][method]["sweep"] += done[(seed, method)]["sampled"]
    results["settings"]["sampled_levels"] = list(args.levels)
    comparison = ArithmeticComparison()
    results["paired"] = summarise(results, comparison)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    reproduced = sum(entry["greedy_reproduced"] for entry in done.values())
    body = (
        f"Greedy outcomes at p=0 reproduced from the loaded models: {reproduced} of {len(done)}."
        f"\n\n{comparison.table(results)}\n\n{render(results, comparison)}"
    )
    (args.out / "report.md").write_text(body + "\n")
    print(body)


if __name__ == "__main__":
    main()
