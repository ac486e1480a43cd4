"""How a method comparison on text is measured and shown: MAUVE, diversity, repetition.

Every method samples one continuation per held-out prompt (temperature 1); MAUVE compares
them with the human continuations (mean and spread over k-means seeds), and repetition,
diversity (with a bootstrap interval over prompts), n-gram entropy, perplexity of the human
continuations and ``<bkspc>`` usage complete the table.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..evaluation.text_evaluation import TextEval
from .base import EvalOptions, Pair, Task
from .comparison import Comparison


def bootstrap_interval(
    texts: list[str], statistic: str, resamples: int = 200, seed: int = 0
) -> tuple[float, float]:
    """95% percentile bootstrap interval of one :func:`text_statistics` entry over texts."""
    from ..evaluation.text_metrics import text_statistics

    rng = random.Random(seed)
    values = sorted(
        text_statistics([rng.choice(texts) for _ in texts])[statistic] for _ in range(resamples)
    )
    return values[int(0.025 * (resamples - 1))], values[int(0.975 * (resamples - 1))]


def _cell(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


class TextComparison(Comparison):
    """Sampled continuations against human ones: table of text metrics, MAUVE and
    diversity plot."""

    plot_name = "mauve_and_diversity.png"

    def share(self, options: EvalOptions, workers: int) -> EvalOptions:
        """One sentence encoder for every method when they train in this process."""
        if workers > 1 or not options.with_mauve or options.encoder is not None:
            return options  # each worker loads its own
        from ..evaluation.text_metrics import SentenceEncoder

        return replace(options, encoder=SentenceEncoder())

    def evaluate(
        self,
        task: Task,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        pairs: Sequence[Pair],
        *,
        bkspc_id: int | None,
        max_new_tokens: int,
        options: EvalOptions,
    ) -> TextEval:
        return task.evaluate(
            model, tokenizer, pairs, bkspc_id=bkspc_id, max_new_tokens=max_new_tokens,
            options=options,
        )  # fmt: skip

    def entry(self, result: TextEval, seconds: float) -> dict[str, Any]:
        return {
            "train_seconds": round(seconds, 1),
            "eval": result.as_dict(),
            "diversity_interval": bootstrap_interval(result.completions, "diversity"),
        }

    def row(self, name: str, entry: dict[str, Any]) -> str:
        result = entry["eval"]
        mauve, stats = result["mauve"], result["statistics"]
        mauve_cell = "-" if mauve is None else f"{mauve['mean']:.3f} +- {mauve['std']:.3f}"
        cells = [
            mauve_cell, _cell(stats["diversity"]), _cell(stats["rep_2"]), _cell(stats["rep_4"]),
            _cell(stats["entropy_4"], 2), _cell(result["perplexity"], 2),
            _cell(result["bkspc_rate"]),
        ]  # fmt: skip
        return f"| {name} | " + " | ".join(cells) + " |"

    def table(self, results: dict[str, Any]) -> str:
        """MAUVE (mean +- std over k-means seeds), diversity, repetition, 4-gram entropy,
        perplexity of the human continuations and ``<bkspc>`` rate per method."""
        header = (
            "| method | MAUVE | diversity | rep-2 | rep-4 | entropy-4 | perplexity | <bkspc> rate |"
        )
        lines = [header, "|---" * 8 + "|"]
        lines += [self.row(name, entry) for name, entry in results["methods"].items()]
        first = next(iter(results["methods"].values()), None)
        if first is not None:
            human = first["eval"]["reference_statistics"]
            lines.append(
                f"| human continuations | - | {human['diversity']:.3f} | {human['rep_2']:.3f} | "
                f"{human['rep_4']:.3f} | {human['entropy_4']:.2f} | - | - |"
            )
        return "\n".join(lines)

    def plot(self, results: dict[str, Any], path: Path, plt: Any) -> Path:
        """Two panels: MAUVE (+- std over k-means seeds) and diversity (95% bootstrap
        interval)."""
        names = list(results["methods"])
        evals = [results["methods"][name]["eval"] for name in names]
        figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
        if all(e["mauve"] is not None for e in evals):
            left.bar(names, [e["mauve"]["mean"] for e in evals],
                     yerr=[e["mauve"]["std"] for e in evals], capsize=4)  # fmt: skip
        left.set_ylabel("MAUVE (higher is better)")
        left.set_ylim(0, 1)
        diversity = [e["statistics"]["diversity"] for e in evals]
        intervals = [results["methods"][name].get("diversity_interval") for name in names]
        errors = None
        if all(interval is not None for interval in intervals):
            errors = [
                [d - low for d, (low, _) in zip(diversity, intervals, strict=True)],
                [high - d for d, (_, high) in zip(diversity, intervals, strict=True)],
            ]
        right.bar(names, diversity, yerr=errors, capsize=4)
        if evals:
            human = evals[0]["reference_statistics"]["diversity"]
            right.axhline(human, color="black", linestyle="--", label="human")
            right.legend()
        right.set_ylabel("diversity (higher is better)")
        right.set_ylim(0, 1)
        for axes in (left, right):
            axes.tick_params(axis="x", labelrotation=15)
            axes.grid(alpha=0.3, axis="y")
        figure.tight_layout()
        figure.savefig(path, dpi=120)
        plt.close(figure)
        return path

    def report(self, results: dict[str, Any], table: str, timing: str, plot: Path | None) -> str:
        settings = results["settings"]
        corpus = settings["corpus"] or "the complete works of Shakespeare (split by work)"
        warmup = (
            ", its warm-up trained on MLE plus the chi2 regulariser on data transitions"
            if settings.get("regularise_warmup")
            else ""
        )
        lines = [
            "# SequenceMatch demo: text generation",
            "",
            f"Corpus: {corpus}; a byte-level BPE of {settings['vocab_size']} tokens trained on "
            f"the training works. Windows of {settings['prompt_tokens']} prompt + "
            f"{settings['completion_tokens']} completion tokens; a window cut from the middle "
            "of a work is not an ending (no `<eos>`: its value is bootstrapped), only a "
            "window that ends its work is. Every method trains the same model "
            f"({settings['num_layers']} layers, width {settings['hidden_size']}) for "
            f"{settings['steps']} steps of {settings['batch_size']} windows (seed "
            f"{settings['seed']}); SequenceMatch spends its last {settings['sm_steps']} steps "
            f"on SequenceMatch-chi2 (alpha {settings['alpha']}, gamma {settings['gamma']}, "
            f"lambda_mle {settings['lambda_mle']}{warmup}). Noise-augmented demonstrations: "
            f"p_noise {settings['p_noise']}, source `{settings['noise_source']}`.",
            "",
            f"Evaluation on {settings['n_test']} prompts from held-out works, one sampled "
            "continuation each (temperature 1). MAUVE compares the sampled continuations with "
            "the human ones in all-MiniLM-L6-v2 feature space (mean +- std over "
            f"{settings['mauve_seeds']} k-means seeds); diversity = prod over n=2..4 of "
            "(1 - rep-n) on whitespace words; perplexity is of the human continuations (an "
            "`<eos>` is scored only after a window that ends its work).",
            "",
            table,
            "",
            timing,
        ]
        if plot is not None:
            lines += ["", f"![MAUVE and diversity]({plot.name})"]
        lines += ["", "Models: " + ", ".join(f"`{name}/model`" for name in results["methods"]),
                  ""]  # fmt: skip
        return "\n".join(lines)
