"""How a method comparison on text is measured and shown: MAUVE, diversity, repetition.

Every method samples one continuation per held-out prompt (temperature 1, the same sampling
seed); MAUVE compares them with the human continuations (mean and spread over k-means
seeds), and repetition, diversity (with a bootstrap interval over prompts), n-gram entropy,
perplexity of the human continuations and ``<bkspc>`` usage complete the table. Two methods
of one seed are compared by a paired bootstrap over prompts: each resample draws the same
prompts for both, MAUVE is recomputed on it (one k-means seed per resample) and diversity
is recomputed over the drawn continuations; perplexity has no per-prompt values here, so it
is compared over seeds only.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ...evaluation.paired import (
    MethodResults,
    PairDifferences,
    bootstrap_difference,
    bootstrap_indices,
    seed_difference,
)
from ...evaluation.statistics import mean_confidence_interval
from ...evaluation.text_evaluation import TextEval
from ...tasks.base import EvalOptions, Pair
from .plotting import save_figure
from .task_report import (
    MODELS_LINE,
    Comparison,
    Evaluation,
    Metric,
    protocol_sentence,
    trained_from_scratch,
)


def bootstrap_interval(
    texts: list[str], statistic: str, resamples: int = 200, seed: int = 0
) -> tuple[float, float]:
    """95% percentile bootstrap interval of one :func:`text_statistics` entry over texts.

    Resamples where the statistic is undefined (NaN, e.g. diversity when no drawn text has
    four words) are left out; NaN bounds when none is defined."""
    from ...evaluation.text_metrics import text_statistics

    rng = random.Random(seed)
    drawn = (
        text_statistics([rng.choice(texts) for _ in texts])[statistic] for _ in range(resamples)
    )
    values = sorted(value for value in drawn if not math.isnan(value))
    if not values:
        return math.nan, math.nan
    return values[int(0.025 * (len(values) - 1))], values[int(0.975 * (len(values) - 1))]


def _cell(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mean_cell(values: list[float], digits: int = 3) -> str:
    if any(v is None or math.isnan(v) for v in values):
        return "-"
    mean, low, high = mean_confidence_interval(values)
    if math.isnan(low):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


@dataclass
class TextResult:
    """One method's evaluation and the human continuations of the same prompts."""

    eval: TextEval
    references: list[str] = field(default_factory=list, repr=False)


METRICS = (
    Metric("mauve", "MAUVE"),
    Metric("diversity", "diversity"),
    Metric("perplexity", "perplexity", higher_is_better=False, digits=2),
)


class TextComparison(Comparison):
    """Sampled continuations against human ones: MAUVE, diversity and perplexity, compared
    per seed by a bootstrap over prompts; table of text metrics; plot of paired differences."""

    plot_name = "mauve_and_diversity.png"

    def __init__(self) -> None:
        self._encoder: Any = None

    def share(self, options: EvalOptions, workers: int) -> EvalOptions:
        """One sentence encoder for every method when they train in this process."""
        if workers > 1 or not options.with_mauve or options.encoder is not None:
            return options  # each worker loads its own
        return replace(options, encoder=self.encoder())

    def encoder(self) -> Any:
        """The sentence encoder of MAUVE, loaded once."""
        if self._encoder is None:
            from ...evaluation.text_metrics import SentenceEncoder

            self._encoder = SentenceEncoder()
        return self._encoder

    def evaluate(
        self, evaluate: Evaluation, pairs: Sequence[Pair], options: EvalOptions
    ) -> TextResult:
        return TextResult(evaluate(options), [pair.completion for pair in pairs])

    def entry(self, result: TextResult, seconds: float) -> dict[str, Any]:
        """The evaluation (with every sampled continuation), the human continuations and a
        bootstrap interval of diversity."""
        return {
            "train_seconds": round(seconds, 1),
            "eval": result.eval.as_dict(),
            "references": result.references,
            "diversity_interval": bootstrap_interval(result.eval.completions, "diversity"),
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

    def metrics(self, settings: dict[str, Any]) -> list[Metric]:
        """MAUVE, diversity and perplexity of the human continuations."""
        return list(METRICS)

    def value(self, entry: dict[str, Any], metric: Metric) -> float:
        result = entry["eval"]
        if metric.key == "mauve":
            return math.nan if result["mauve"] is None else float(result["mauve"]["mean"])
        if metric.key == "diversity":
            return float(result["statistics"]["diversity"])
        return float(result["perplexity"])

    def within_seed(
        self, entries: MethodResults, pairs: Sequence[tuple[str, str]], settings: dict[str, Any]
    ) -> PairDifferences:
        """Paired bootstrap over prompts: the same resampled prompts for every method; MAUVE
        recomputed on each resample (features encoded once), diversity recomputed over the
        resampled continuations. Perplexity is left out (no per-prompt values)."""
        from ...evaluation.text_metrics import text_statistics

        names = sorted({name for pair in pairs for name in pair})
        completions = {name: entries[name]["eval"]["completions"] for name in names}
        n = len(completions[names[0]])
        resamples = int(settings.get("bootstrap_resamples", 100))
        picks = bootstrap_indices(n, resamples, seed=0)
        resampled: dict[str, dict[str, list[float]]] = {"diversity": {}, "mauve": {}}
        for name in names:
            texts = completions[name]
            resampled["diversity"][name] = [
                text_statistics([texts[i] for i in pick])["diversity"] for pick in picks
            ]
        with_mauve = all(entries[name]["eval"]["mauve"] is not None for name in names)
        if with_mauve:
            resampled["mauve"] = self._resampled_mauve(entries, names, picks)
        tested: PairDifferences = {}
        for a, b in pairs:
            tested[(a, b)] = {}
            for metric in METRICS[:2]:
                if metric.key == "mauve" and not with_mauve:
                    continue
                observed = self.value(entries[b], metric) - self.value(entries[a], metric)
                if math.isnan(observed):
                    continue
                tested[(a, b)][metric.key] = bootstrap_difference(
                    observed, resampled[metric.key][a], resampled[metric.key][b], n
                )
        return tested

    def _resampled_mauve(
        self, entries: dict[str, dict[str, Any]], names: list[str], picks: Any
    ) -> dict[str, list[float]]:
        """MAUVE of each method on each resample of prompts (k-means seed = resample)."""
        from ...evaluation.text_metrics import mauve_score

        references = entries[names[0]]["references"]
        encoder = self.encoder()
        human = encoder.encode(references)
        features = {name: encoder.encode(entries[name]["eval"]["completions"]) for name in names}
        return {
            name: [
                mauve_score(
                    p_features=human[pick], q_features=features[name][pick], seeds=(index,)
                ).mean
                for index, pick in enumerate(picks)
            ]  # fmt: skip
            for name in names
        }

    def within_seed_note(self, settings: dict[str, Any]) -> str:
        return (
            f"Difference on the seed's {settings['n_test']} held-out prompts (the same prompts "
            "and sampling seed for every method) [95% paired bootstrap interval over prompts, "
            f"{settings.get('bootstrap_resamples', 100)} resamples: each draws the same prompts "
            "for both methods; MAUVE is recomputed on each resample with one k-means seed, "
            "diversity over the drawn continuations] (p: the bootstrap's two-sided p-value). "
            "The difference shown is that of the full evaluation (MAUVE: mean over "
            f"{settings['mauve_seeds']} k-means seeds). Perplexity has no per-prompt values "
            "here: its difference is shown alone and tested over seeds only."
        )

    def table(self, results: dict[str, Any]) -> str:
        """Mean over seeds [95% Student-t interval] of MAUVE, diversity and perplexity, and
        the mean rep-2, 4-gram entropy and ``<bkspc>`` rate, per method."""
        seeds = list(results["seeds"].values())
        header = "| method | MAUVE | diversity | perplexity | rep-2 | entropy-4 | <bkspc> rate |"
        lines = [header, "|---" * 7 + "|"]
        for name in seeds[0]["methods"]:
            entries = [seed["methods"][name] for seed in seeds]
            cells = [_mean_cell([self.value(e, m) for e in entries], m.digits) for m in METRICS]
            evals = [e["eval"] for e in entries]
            cells += [
                _mean_cell([e["statistics"]["rep_2"] for e in evals]).split(" [")[0],
                _mean_cell([e["statistics"]["entropy_4"] for e in evals], 2).split(" [")[0],
                _mean_cell([e["bkspc_rate"] for e in evals]).split(" [")[0],
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        human = [s["methods"][next(iter(s["methods"]))]["eval"]["reference_statistics"]
                 for s in seeds]  # fmt: skip
        lines.append(
            f"| human continuations | - | {_mean_cell([h['diversity'] for h in human])} | - | "
            f"{_mean_cell([h['rep_2'] for h in human]).split(' [')[0]} | "
            f"{_mean_cell([h['entropy_4'] for h in human], 2).split(' [')[0]} | - |"
        )
        return "\n".join(lines)

    def plot(self, results: dict[str, Any], path: Path, plt: Any) -> Path:
        """Two panels: the paired differences in MAUVE and in diversity (mean over seeds,
        95% Student-t interval), one bar per comparison."""
        seeds = list(results["seeds"].values())
        comparisons = results["paired"]["comparisons"]
        names = [f"{b}\n- {a}" for a, b in comparisons]
        figure, panels = plt.subplots(1, 2, figsize=(10, 4))
        for axes, metric in zip(panels, METRICS[:2], strict=True):
            points = []
            for a, b in comparisons:
                values = [self.value(s["methods"][b], metric) - self.value(s["methods"][a], metric)
                          for s in seeds]  # fmt: skip
                points.append(seed_difference(values) if not any(map(math.isnan, values))
                              else None)  # fmt: skip
            heights = [0.0 if d is None else d.difference for d in points]
            errors = [
                [0.0 if d is None or math.isnan(d.low) else d.difference - d.low for d in points],
                [0.0 if d is None or math.isnan(d.high) else d.high - d.difference
                 for d in points],
            ]  # fmt: skip
            axes.bar(range(len(names)), heights, yerr=errors, capsize=4)
            axes.set_xticks(range(len(names)), names, fontsize=7)
            axes.axhline(0.0, color="black", linewidth=0.8)
            axes.set_ylabel(f"paired difference in {metric.label} (mean of {len(seeds)} seeds)")
            axes.grid(alpha=0.3, axis="y")
        return save_figure(plt, figure, path)

    def report(self, results: dict[str, Any], body: str, plot: Path | None) -> str:
        settings = results["settings"]
        corpus = settings["corpus"] or "the complete works of Shakespeare (split by work)"
        tokens = (
            f"a byte-level BPE of {settings['vocab_size']} tokens trained on the training works"
            if trained_from_scratch(results)
            else f"the tokenizer of `{settings['model']}`"
        )  # fmt: skip
        lines = [
            "# SequenceMatch demo: text generation",
            "",
            f"Corpus: {corpus}; {tokens}. Windows of {settings['prompt_tokens']} prompt + "
            f"{settings['completion_tokens']} completion tokens; a window cut from the middle "
            "of a work is not an ending (no `<eos>`: its value is bootstrapped), only a "
            f"window that ends its work is. Seeds: {', '.join(results['seeds'])}.",
            "",
            protocol_sentence(results, "windows")
            + ": `mle`; `mle-bkspc` (noise-augmented windows, "
            f"p_noise {settings['p_noise']}, source `{settings['noise_source']}`); "
            "`offline-chi2-bkspc` (the data-only objective: lambda_mle "
            f"{settings['lambda_mle']} x MLE + the SequenceMatch-chi2 terms on data transitions "
            f"only, alpha {settings['alpha']}, gamma {settings['gamma']}); "
            "`sequencematch-chi2-bkspc` (the same with the model's own samples in the mixture, "
            f"beta {settings['beta']}, refreshed every {settings['refresh_every']} steps).",
            "",
            f"Evaluation on {settings['n_test']} prompts from held-out works, one sampled "
            "continuation each (temperature 1, the same sampling seed for every method). MAUVE "
            "compares the sampled continuations with the human ones in all-MiniLM-L6-v2 "
            f"feature space (mean over {settings['mauve_seeds']} k-means seeds); diversity = "
            "prod over n=2..4 of (1 - rep-n) on whitespace words; perplexity is of the human "
            "continuations (an `<eos>` is scored only after a window that ends its work).",
            "",
            body,
        ]
        if plot is not None:
            lines += ["", f"![paired differences in MAUVE and diversity]({plot.name})"]
        lines += ["", MODELS_LINE,
                  ""]  # fmt: skip
        return "\n".join(lines)
