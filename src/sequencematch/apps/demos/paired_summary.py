"""Paired differences of a comparison's record, the tables that show them, and the words
their intervals support.

``results`` is the harness's record (:func:`sequencematch.apps.demos.harness.run_comparison`):
``{"settings": {...}, "seeds": {seed: {"warmup": {...}, "methods": {name: entry}}}}``.
Every method of a seed started from the same warm-up and was evaluated on the same items, so

* within a seed, each comparison ``(a, b)`` is tested on the items' pairs, as the task says
  (:meth:`sequencematch.apps.demos.task_report.Comparison.within_seed`: McNemar for right/wrong
  answers, a bootstrap over prompts for text metrics);
* across seeds, the per-seed differences ``b - a`` get the Student-t interval of their
  mean, which also covers what the seed (and the machine's floating point) does to a run.

Claims rest on the second: :func:`conclusion` says "better" or "worse" only where that
interval excludes zero, and "no significant difference" everywhere else.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from ...evaluation.paired import (
    MIN_SEEDS_FOR_A_CLAIM,
    PairedDifference,
    seed_difference,
    verdict,
)
from ..parallel import schedule_note
from .methods import COMPARED_METHODS, COMPARISONS, OFFLINE, ONLINE, WARMUP
from .task_report import Comparison, Metric

NONE = "none"
"""The ``method`` of a per-seed difference that has no within-seed interval."""


def label(a: str, b: str) -> str:
    """``"mle-bkspc vs mle"``: the name of comparison ``(a, b)`` (differences are ``b - a``)."""
    return f"{b} vs {a}"


def summarise(results: dict[str, Any], comparison: Comparison) -> dict[str, Any]:
    """The JSON-ready paired statistics of ``results``: per seed (within-seed intervals;
    method ``"none"``, the difference alone, where the task has no within-seed test of a
    metric), over seeds (Student-t
    intervals of the mean per-seed difference), and the training cost of each method."""
    settings = results["settings"]
    metrics = comparison.metrics(settings)
    per_seed: dict[str, dict[str, dict[str, Any]]] = {}
    differences: dict[str, dict[str, list[float]]] = {
        label(a, b): {m.key: [] for m in metrics} for a, b in COMPARISONS
    }
    for seed, record in results["seeds"].items():
        methods = record["methods"]
        within = comparison.within_seed(methods, COMPARISONS, settings)
        per_seed[seed] = {}
        for a, b in COMPARISONS:
            name = label(a, b)
            per_seed[seed][name] = {}
            for metric in metrics:
                difference = comparison.value(methods[b], metric) - comparison.value(
                    methods[a], metric
                )
                found = within.get((a, b), {}).get(metric.key)
                if found is None:  # the task has no within-seed test of this metric
                    found = PairedDifference(difference, math.nan, math.nan, None, 1, 0.95, NONE)
                per_seed[seed][name][metric.key] = found.as_dict()
                differences[name][metric.key].append(difference)
    over_seeds = {
        name: {
            key: None if any(math.isnan(v) for v in values) else seed_difference(values).as_dict()
            for key, values in by_metric.items()
        }
        for name, by_metric in differences.items()
    }
    return {
        "comparisons": [list(pair) for pair in COMPARISONS],
        "metrics": [asdict(m) for m in metrics],
        "per_seed": per_seed,
        "over_seeds": over_seeds,
        "cost": training_cost(results),
    }


def training_cost(results: dict[str, Any]) -> dict[str, Any]:
    """Mean training CPU seconds per seed of the warm-up and each method, how many times the
    offline method's the online one costs (what the model samples cost), and the CPU seconds
    of every job together (``all_jobs_cpu``: divided by the cores, about what the whole
    comparison takes on an idle machine)."""
    seeds = list(results["seeds"].values())

    def mean_cpu(records: list[dict[str, Any]]) -> float:
        return sum(r.get("train_cpu_seconds", r["train_seconds"]) for r in records) / len(records)

    cost = {WARMUP: mean_cpu([s[WARMUP] for s in seeds])}
    cost |= {m: mean_cpu([s["methods"][m] for s in seeds]) for m in COMPARED_METHODS}
    cost["online_over_offline"] = cost[ONLINE] / cost[OFFLINE] if cost[OFFLINE] else math.nan
    jobs = [s[WARMUP] for s in seeds] + [e for s in seeds for e in s["methods"].values()]
    if all("job_cpu_seconds" in job for job in jobs):  # every job, loading and evaluation too
        cost["all_jobs_cpu"] = sum(job["job_cpu_seconds"] for job in jobs)
    return {key: round(value, 2) for key, value in cost.items()}


def _metrics(summary: dict[str, Any]) -> list[Metric]:
    return [Metric(**m) for m in summary["metrics"]]


def _difference(values: dict[str, Any] | None) -> PairedDifference | None:
    return None if values is None else PairedDifference.from_dict(values)


def _verdict(difference: PairedDifference, metric: Metric) -> str:
    """:func:`verdict` of the interval; a within-seed test must also have a p-value below
    ``1 - confidence`` (Newcombe's interval can exclude zero where McNemar's exact test,
    with few discordant items, does not reject: then neither is taken as a difference)."""
    word = verdict(difference, metric.higher_is_better)
    p_value = difference.p_value
    within = difference.method != "t" and p_value is not None
    if word in ("better", "worse") and within and p_value >= 1.0 - difference.confidence:
        return "no significant difference"
    return word


def over_seed_table(results: dict[str, Any]) -> str:
    """Rows: comparisons; cells: mean per-seed difference [95% Student-t interval] and what
    it supports."""
    summary = results["paired"]
    metrics = _metrics(summary)
    lines = _table_head(["comparison", *(m.label for m in metrics)])
    for name, by_metric in summary["over_seeds"].items():
        cells = []
        for metric in metrics:
            difference = _difference(by_metric[metric.key])
            if difference is None:
                cells.append("-")
                continue
            word = _verdict(difference, metric)
            shown = "n.s." if word.startswith("no significant") else f"**{word}**"
            cells.append(f"{_interval(difference, metric)} {shown}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_seed_table(results: dict[str, Any]) -> str:
    """Rows: (seed, comparison); cells: the difference on that seed's items with its
    within-seed interval and p-value (the difference alone where the task has no test)."""
    summary = results["paired"]
    metrics = _metrics(summary)
    lines = _table_head(["seed", "comparison", *(m.label for m in metrics)])
    for seed, comparisons in summary["per_seed"].items():
        for a, b in summary["comparisons"]:
            name = label(a, b)
            cells = []
            for metric in metrics:
                difference = PairedDifference.from_dict(comparisons[name][metric.key])
                cell = _interval(difference, metric)
                if difference.p_value is not None:
                    cell += f" (p {difference.p_value:.2g})"
                cells.append(cell)
            lines.append(f"| {seed} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _table_head(columns: list[str]) -> list[str]:
    """A markdown table's heading and rule lines."""
    return ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]


def _interval(difference: PairedDifference, metric: Metric) -> str:
    digits = metric.digits
    if math.isnan(difference.low):
        return f"{difference.difference:+.{digits}f}"
    return (
        f"{difference.difference:+.{digits}f} "
        f"[{difference.low:+.{digits}f}, {difference.high:+.{digits}f}]"
    )


def conclusion(results: dict[str, Any]) -> list[str]:
    """What the intervals support, in words: one bullet per comparison, the cost of the
    model samples, and how many intervals were looked at."""
    summary = results["paired"]
    metrics = _metrics(summary)
    seeds = len(summary["per_seed"])
    bullets = []
    for a, b in summary["comparisons"]:
        name = label(a, b)
        groups: dict[str, list[str]] = {"better": [], "worse": [], "no significant": []}
        for metric in metrics:
            difference = _difference(summary["over_seeds"][name][metric.key])
            if difference is None:
                continue
            word = _verdict(difference, metric)
            key = "no significant" if word.startswith("no significant") else word
            shown = metric.label if key == "no significant" else (
                f"{metric.label} ({_interval(difference, metric)})"
            )  # fmt: skip
            groups[key].append(shown)
        parts = [f"{word} at {_and(groups[word])}" for word in ("better", "worse") if groups[word]]
        if groups["no significant"]:
            parts.append(f"no significant difference at {_and(groups['no significant'])}")
        within = _within_seed_counts(summary, name, metrics)
        text = f"- **{b}** vs {a}: " + "; ".join(parts) + "."
        if within:
            text += f" Within single seeds, on the same items: {within}."
        bullets.append(text)
    lines = []
    if seeds < 2:
        lines.append(
            "One seed: there is no interval over seeds, so nothing below is a claim beyond "
            "this seed's warm-up and data; the verdicts are those of the one seed's paired "
            "tests on its items."
        )
        bullets = [_one_seed_bullet(summary, a, b, metrics) for a, b in summary["comparisons"]]
    else:
        lines.append(
            f"Over {seeds} seeds (95% Student-t intervals of the mean paired difference; "
            "a method is called better or worse only where its interval excludes zero):"
        )
        if seeds < MIN_SEEDS_FOR_A_CLAIM:
            lines[-1] = (
                f"Over {seeds} seeds: too few for a claim over seeds (at least "
                f"{MIN_SEEDS_FOR_A_CLAIM} are needed; `--seeds` adds more), so no method is "
                "called better or worse below; the within-seed tests are the evidence:"
            )
    lines += ["", *bullets, ""]
    cost = summary["cost"]
    ratio = cost.get("online_over_offline")
    if ratio is not None and not math.isnan(ratio):
        lines.append(
            f"The model samples cost {ratio:.2f}x the offline objective's training: "
            f"{cost[ONLINE]:.0f} vs {cost[OFFLINE]:.0f} CPU seconds per seed (mean)."
        )
    count = len(metrics) * len(summary["comparisons"])
    lines.append(
        f"Each interval is at 95% on its own: of the {count} intervals above, about "
        f"{count / 20:.1f} would exclude zero by chance alone if no method differed."
    )
    return lines


def _within_seed_counts(summary: dict[str, Any], name: str, metrics: list[Metric]) -> str:
    """``"better at p=0.2 on 2 of 3 seeds, worse at p=0 on 1 of 3"``: the seeds whose own
    paired test excludes zero, per metric (empty when none does)."""
    seeds = list(summary["per_seed"].values())
    parts = []
    for metric in metrics:
        counts = {"better": 0, "worse": 0}
        for comparisons in seeds:
            difference = PairedDifference.from_dict(comparisons[name][metric.key])
            if difference.method == NONE:
                continue
            word = _verdict(difference, metric)
            if word in counts:
                counts[word] += 1
        parts += [f"{word} at {metric.label} on {count} of {len(seeds)}"
                  for word, count in counts.items() if count]  # fmt: skip
    return ", ".join(parts)


def _one_seed_bullet(summary: dict[str, Any], a: str, b: str, metrics: list[Metric]) -> str:
    name = label(a, b)
    (comparisons,) = summary["per_seed"].values()
    parts = []
    for metric in metrics:
        difference = PairedDifference.from_dict(comparisons[name][metric.key])
        if difference.method == NONE:
            continue
        parts.append(
            f"{metric.label}: {_verdict(difference, metric)} ({_interval(difference, metric)})"
        )
    return f"- **{b}** vs {a} (this seed's items): " + ("; ".join(parts) or "no paired test") + "."


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


POLICY_COLUMNS = (
    ("p_eos", "P(eos \\| answer)"), ("tail_at_end", "mass on neither at answer"),
    ("p_bkspc_after_wrong", "P(bkspc \\| answer + wrong token)"),
    ("p_bkspc_at_end", "P(bkspc \\| answer)"), ("first_token_entropy", "first-token entropy"),
    ("outside_top10", "first token outside top 10"),
)  # fmt: skip


def policy_section(results: dict[str, Any]) -> list[str]:
    """Markdown lines: each method's policy around the reference completions (docs/method.md,
    "Policy diagnostics"), mean over seeds [lowest, highest seed]; none for results written
    before it was measured."""
    seeds = list(results["seeds"].values())
    methods = list(seeds[0]["methods"])
    if not all("policy" in seed["methods"][m] for seed in seeds for m in methods):
        return []
    lines = [
        f"### The policy around the reference answer (mean over {len(seeds)} seed(s) "
        "[lowest, highest])",
        "",
        *_table_head(["method", *(label for _, label in POLICY_COLUMNS)]),
    ]
    for method in methods:
        cells = []
        for key, _ in POLICY_COLUMNS:
            values = [seed["methods"][method]["policy"][key] for seed in seeds]
            values = [v for v in values if v == v]  # NaN: no row of that kind
            cells.append(f"{sum(values) / len(values):.3f} [{min(values):.3f}, "
                         f"{max(values):.3f}]" if values else "-")  # fmt: skip
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def timing_line(results: dict[str, Any]) -> str:
    """Mean training time per seed of the warm-up and of each method, and the wall time."""
    seeds = list(results["seeds"].values())

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    warmup = mean([s[WARMUP]["train_seconds"] for s in seeds])
    parts = [f"warm-up {warmup:.0f} s"] + [
        f"{m} {mean([s['methods'][m]['train_seconds'] for s in seeds]):.0f} s"
        for m in COMPARED_METHODS
    ]
    wall, read_back = results.get("wall_seconds"), results.get("jobs_read_back", 0)
    total = f"; the whole comparison took {wall / 60:.1f} min" if wall else ""
    if wall and read_back:
        jobs = len(seeds) * (1 + len(COMPARED_METHODS))
        total = (
            f"; this invocation took {wall / 60:.1f} min ({read_back} of {jobs} runs were read "
            "back from an earlier one)"
        )
    cpu = results.get("paired", {}).get("cost", {}).get("all_jobs_cpu")
    idle = (
        f" Every job together (data, models, training, evaluation) used {cpu / 60:.1f} CPU "
        f"minutes, {cpu / 60 / max(1, results['workers']):.1f} min per worker."
        if cpu else ""
    )  # fmt: skip
    return (
        f"Training time per seed (wall clock, mean over {len(seeds)} seed(s)): "
        f"{', '.join(parts)}{schedule_note(results)}{total}.{idle}"
    )


def render(results: dict[str, Any], comparison: Comparison) -> str:
    """The tables and the conclusion, as markdown (printed, and the body of report.md)."""
    settings = results["settings"]
    seeds = len(results["seeds"])
    return "\n".join(
        [
            f"### Each method: mean over {seeds} seed(s) [95% Student-t interval]",
            "",
            comparison.table(results),
            "",
            "### Paired differences over seeds (first method minus second)",
            "",
            "Mean of the per-seed differences [95% Student-t interval, degrees of freedom: "
            f"{seeds - 1}]; **better**/**worse** where the interval excludes zero, n.s. (no "
            "significant difference) otherwise.",
            "",
            over_seed_table(results),
            "",
            "### Per seed, paired on the same items",
            "",
            comparison.within_seed_note(settings),
            "",
            per_seed_table(results),
            "",
            *policy_section(results),
            "### What the intervals support",
            "",
            *conclusion(results),
            "",
            timing_line(results),
        ]
    )
