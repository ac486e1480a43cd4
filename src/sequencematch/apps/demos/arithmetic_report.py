"""How a method comparison on arithmetic is measured and shown: exact match under forced noise.

Every method is evaluated greedily on the same held-out questions at each forced-noise
level (a random answer character forced with probability p per generated step), with the
same noise seed, and with answers sampled at temperature 1 at the levels asked for (how the
model behaves when nothing is forced: errors it makes itself then compound). Two methods of
one seed are compared on the questions' pairs (McNemar's exact test, Newcombe's interval of
the difference); the table gives the mean accuracy over seeds, the plot the paired greedy
differences against p.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...evaluation.paired import (
    MethodResults,
    PairDifferences,
    mcnemar,
    seed_difference,
)
from ...evaluation.statistics import mean_confidence_interval
from ...tasks.base import EvalOptions, Pair
from ...tasks.exact_match import ExactMatchEval
from .plotting import save_figure
from .task_report import MODELS_LINE, Comparison, Evaluation, Metric, protocol_sentence


def encode_outcomes(outcomes: Sequence[bool]) -> str:
    """``"0110..."``: one character per question, 1 right, 0 wrong (compact in JSON)."""
    return "".join("1" if right else "0" for right in outcomes)


def decode_outcomes(text: str) -> list[bool]:
    """The outcomes that :func:`encode_outcomes` wrote."""
    return [character == "1" for character in text]


def _level(entry: dict[str, Any], level: float, sampled: bool = False) -> dict[str, Any]:
    """The evaluation of ``entry`` at forced-noise ``level``, greedy or ``sampled``."""
    for evaluation in entry["sweep"]:
        is_sampled = evaluation.get("temperature") is not None
        if abs(evaluation["noise_prob"] - level) < 1e-9 and is_sampled == sampled:
            return evaluation
    decoding = "sampled" if sampled else "greedy"
    raise ValueError(f"no {decoding} evaluation at forced-noise level {level} in this entry")


SAMPLED = "sampled"  # metric key prefix of accuracies with sampled answers


def _metric_evaluation(entry: dict[str, Any], key: str) -> dict[str, Any]:
    """The evaluation behind the metric ``key`` (``accuracy@p`` or ``sampled@p``)."""
    kind, level = key.split("@")
    return _level(entry, float(level), sampled=kind == SAMPLED)


def _mean_cell(values: list[float], digits: int = 3) -> str:
    mean, low, high = mean_confidence_interval(values)
    if math.isnan(low):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _sampled_note(settings: dict[str, Any]) -> str:
    """The report's sentence on the sampled evaluations (none when there are none)."""
    levels = settings.get("sampled_levels", ())
    if not levels:
        return ""
    named = " and ".join(f"p={p:g}" for p in levels)
    return (
        f" Columns `sampled`: answers sampled at temperature 1 (at {named}; the same sampling "
        "seed for every method), where a model's own mistakes compound."
    )


class ArithmeticComparison(Comparison):
    """Forced-noise sweep, McNemar per seed, accuracy table and paired-difference plot."""

    plot_name = "accuracy_vs_noise.png"

    def evaluate(
        self, evaluate: Evaluation, pairs: Sequence[Pair], options: EvalOptions
    ) -> list[ExactMatchEval]:
        """The task's greedy evaluation at every level of ``options.levels``, then sampled
        at every level of ``options.sampled_levels`` (same questions and seed)."""
        runs = [(level, False) for level in options.levels]
        runs += [(level, True) for level in options.sampled_levels]
        return [
            evaluate(replace(options, noise_prob=level, sample=sampled)) for level, sampled in runs
        ]

    def entry(self, result: list[ExactMatchEval], seconds: float) -> dict[str, Any]:
        """Per level: the metrics and ``outcomes``, one character per test question."""
        sweep = [e.as_dict() | {"outcomes": encode_outcomes(e.outcomes)} for e in result]
        return {"train_seconds": round(seconds, 1), "sweep": sweep}

    def row(self, name: str, entry: dict[str, Any]) -> str:
        cells = [f"{e['accuracy']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}]"
                 for e in entry["sweep"]]  # fmt: skip
        return f"| {name} | " + " | ".join(cells) + " |"

    def metrics(self, settings: dict[str, Any]) -> list[Metric]:
        """Exact-match accuracy at each forced-noise level, greedy, then sampled at
        temperature 1 at each of ``sampled_levels`` (absent from older results)."""
        greedy = [Metric(f"accuracy@{p:g}", f"p={p:g}") for p in settings["levels"]]
        return greedy + [
            Metric(f"{SAMPLED}@{p:g}", f"p={p:g} sampled")
            for p in settings.get("sampled_levels", ())
        ]  # fmt: skip

    def value(self, entry: dict[str, Any], metric: Metric) -> float:
        return float(_metric_evaluation(entry, metric.key)["accuracy"])

    def within_seed(
        self, entries: MethodResults, pairs: Sequence[tuple[str, str]], settings: dict[str, Any]
    ) -> PairDifferences:
        """McNemar's exact test and Newcombe's interval on the same questions, per level."""
        tested = {}
        for a, b in pairs:
            tested[(a, b)] = {}
            for metric in self.metrics(settings):
                tested[(a, b)][metric.key] = mcnemar(
                    decode_outcomes(_metric_evaluation(entries[a], metric.key)["outcomes"]),
                    decode_outcomes(_metric_evaluation(entries[b], metric.key)["outcomes"]),
                )
        return tested

    def within_seed_note(self, settings: dict[str, Any]) -> str:
        return (
            f"Difference in exact-match accuracy on the seed's {settings['n_test']} test "
            "questions (the same questions and forced-noise seed for every method) [95% "
            "Newcombe interval for paired proportions] (p: McNemar's exact test)."
        )

    def table(self, results: dict[str, Any]) -> str:
        """Mean exact-match accuracy over seeds [95% Student-t interval] per metric (greedy
        per forced-noise level, then sampled), and the mean share of forced tokens deleted
        at p = 0.1 (greedy)."""
        metrics = self.metrics(results["settings"])
        header = (
            "| method | " + " | ".join(m.label for m in metrics) + " | forced tokens "
            "deleted at p=0.1 |"
        )
        lines = [header, "|---" * (len(metrics) + 2) + "|"]
        seeds = list(results["seeds"].values())
        for name in seeds[0]["methods"]:
            entries = [seed["methods"][name] for seed in seeds]
            cells = [_mean_cell([self.value(e, m) for e in entries]) for m in metrics]
            deleted = [
                _level(e, 0.1)["forced_deleted_rate"] for e in entries
                if any(abs(x["noise_prob"] - 0.1) < 1e-9 for x in e["sweep"])
            ]  # fmt: skip
            usable = [d for d in deleted if d is not None]
            rate = f"{sum(usable) / len(usable):.2f}" if usable and name != "mle" else "-"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {rate} |")
        return "\n".join(lines)

    def plot(self, results: dict[str, Any], path: Path, plt: Any) -> Path:
        """Paired accuracy difference (mean over seeds, 95% Student-t interval) against the
        forced-noise level, one line per comparison (shifted sideways a little, so that the
        intervals do not hide each other)."""
        levels = results["settings"]["levels"]
        seeds = list(results["seeds"].values())
        figure, axes = plt.subplots(figsize=(6.5, 4))
        comparisons = results["paired"]["comparisons"]
        shift = 0.06 * (max(levels) - min(levels) or 1.0) / max(1, len(comparisons))
        for index, (a, b) in enumerate(comparisons):
            points = []
            for p in levels:
                values = [
                    _level(s["methods"][b], p)["accuracy"] - _level(s["methods"][a], p)["accuracy"]
                    for s in seeds
                ]
                points.append(seed_difference(values))
            mean = [d.difference for d in points]
            low = [0.0 if math.isnan(d.low) else d.difference - d.low for d in points]
            high = [0.0 if math.isnan(d.high) else d.high - d.difference for d in points]
            shifted = [p + (index - (len(comparisons) - 1) / 2) * shift for p in levels]
            axes.errorbar(shifted, mean, yerr=[low, high], marker="o", capsize=3,
                          label=f"{b} - {a}")  # fmt: skip
        axes.axhline(0.0, color="black", linewidth=0.8)
        axes.set_xlabel("forced-noise probability per generated step")
        axes.set_ylabel(f"paired accuracy difference (mean of {len(seeds)} seeds)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        return save_figure(plt, figure, path)

    def report(self, results: dict[str, Any], body: str, plot: Path | None) -> str:
        settings = results["settings"]
        seeds = list(results["seeds"])
        lines = [
            "# SequenceMatch demo: arithmetic in bases 2-16 under forced noise",
            "",
            f"Task: `add_or_sub_in_base` questions, operand entropy {settings['difficulty']} "
            f"bits, {settings['n_train']} training and {settings['n_test']} held-out test "
            f"questions per seed (the seed also draws the questions). Seeds: "
            f"{', '.join(seeds)}.",
            "",
            protocol_sentence(results, "questions") + ", and is evaluated on the same questions:",
            "",
            "- `mle`: cross-entropy on the clean answers;",
            "- `mle-bkspc`: cross-entropy on noise-augmented answers (p_noise "
            f"{settings['p_noise']}, source `{settings['noise_source']}`; each inserted wrong "
            "token is followed by `<bkspc>` and is not itself a target);",
            f"- `offline-chi2-bkspc`: the data-only objective on the same data, lambda_mle "
            f"{settings['lambda_mle']} x MLE + (1 - lambda_mle) x SequenceMatch-chi2 with data "
            f"transitions only (beta 1; alpha {settings['alpha']}, gamma {settings['gamma']}); "
            "no model samples;",
            "- `sequencematch-chi2-bkspc`: the same objective with the model's own samples in "
            f"the mixture (beta {settings['beta']}), refreshed every "
            f"{settings['refresh_every']} steps.",
            "",
            "Evaluation: greedy answers, exact match; p is the probability that a random answer "
            "character is forced instead of the model's choice at each generated step (the "
            "same noise seed for every method)." + _sampled_note(settings),
            "",
            body,
        ]
        if plot is not None:
            lines += ["", f"![paired accuracy differences against forced noise]({plot.name})"]
        lines += ["", MODELS_LINE]
        return "\n".join(lines) + "\n"
