"""The task-specific parts of a method comparison: evaluation, paired tests, table, plot, report.

The comparison harness (:mod:`.harness`) trains every method on every
seed and writes ``results.json``, ``report.md`` and a plot; what is measured on a trained
model, how two methods are tested on the same items, and how it is shown comes from the
task, through one of these objects.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ...evaluation.paired import MethodResults, PairDifferences
from ...tasks.base import EvalOptions, Pair

Evaluation = Callable[[EvalOptions], Any]
"""``evaluate(options) -> result``: the task's evaluation of one trained model on the
comparison's items (:meth:`sequencematch.tasks.base.Task.evaluate`), with ``options``."""

MODELS_LINE = "Models: `seed-<seed>/<method>/model` (warm-ups: `seed-<seed>/warmup/model`)."
"""Where a comparison's models are (a line of its report)."""


def trained_from_scratch(results: dict[str, Any]) -> bool:
    """Whether a comparison's warm-up trained a preset from scratch (results written before
    the harness recorded it: a preset's name starts with ``tiny_``)."""
    return results.get(
        "from_scratch", results["settings"].get("model", "tiny_llama").startswith("tiny_")
    )


def protocol_sentence(results: dict[str, Any], unit: str) -> str:
    """The report's account of one seed's runs: the shared warm-up (a preset trained from
    scratch, or a pretrained model fine-tuned) and the continuations (every weight, or LoRA
    adapters), with their steps and learning rates; ``unit`` is what a batch holds."""
    settings = results["settings"]
    model = settings.get("model", "tiny_llama")
    batch = f"{settings['warmup_steps']} steps of {settings['batch_size']} {unit}"
    if trained_from_scratch(results):
        warmup = (
            f"plain MLE from scratch, {batch}, a `{model}` model with {settings['num_layers']} "
            f"layers of width {settings['hidden_size']}"
        )
    else:
        warmup = f"plain MLE fine-tuning every weight of `{model}`, {batch}"
    warmup += f", {settings.get('precision', 'fp32')}, peak learning rate {settings['warmup_lr']}"
    lora = settings.get("lora_r", 0)
    adapters = (
        f" through LoRA adapters (r {lora}, alpha {settings['lora_alpha']:g}, every block "
        "linear; merged into the saved model)"
        if lora
        else ""
    )  # fmt: skip
    reprobe = (
        " (the `<bkspc>` methods' output row then fitted again as a linear probe on the "
        "trained features, body frozen)"
        if settings.get("bkspc_reprobe")
        else ""
    )  # fmt: skip
    return (
        f"Protocol, per seed: one shared warm-up ({warmup}), saved; then every method "
        f"continues from it for {settings['steps']} steps{adapters} (peak learning rate "
        f"{settings['lr']}) on the same data order and noise draws{reprobe}"
    )


@dataclass(frozen=True)
class Metric:
    """One number a comparison reports per method and seed, and compares between methods.

    Attributes:
        key: its name in ``results.json`` (e.g. ``accuracy@0.1``).
        label: its column heading (e.g. ``p=0.1``).
        higher_is_better: which direction is an improvement.
        digits: decimals shown.
    """

    key: str
    label: str
    higher_is_better: bool = True
    digits: int = 3


class Comparison(ABC):
    """How one task evaluates and reports a comparison of training methods.

    ``results`` below is the harness's record: ``{"settings": {...}, "seeds": {seed:
    {"warmup": {...}, "methods": {name: entry}}}, "paired": {...}, "workers": ...,
    "threads_per_worker": ...}``, with each entry made by :meth:`entry`; ``entries`` are
    the entries of one seed's methods, all evaluated on the same items.
    """

    plot_name: ClassVar[str] = "comparison.png"

    def share(self, options: EvalOptions, workers: int) -> EvalOptions:
        """``options`` with anything the evaluations of one process can share (e.g. a model
        that is slow to load), when the methods train one after the other (``workers`` 1)."""
        return options

    @abstractmethod
    def evaluate(self, evaluate: Evaluation, pairs: Sequence[Pair], options: EvalOptions) -> Any:
        """What a comparison measures on one trained model, from the task's evaluations of
        it on ``pairs`` (``evaluate(options)``, as often as needed); picklable: it may come
        back from a worker process."""

    @abstractmethod
    def entry(self, result: Any, seconds: float) -> dict[str, Any]:
        """One method's JSON-ready record of one seed in ``results.json``, with every
        per-item outcome that its paired tests need (so they can be recomputed)."""

    @abstractmethod
    def row(self, name: str, entry: dict[str, Any]) -> str:
        """One method's line on one seed (printed as each method finishes)."""

    @abstractmethod
    def metrics(self, settings: dict[str, Any]) -> list[Metric]:
        """The numbers compared between methods."""

    @abstractmethod
    def value(self, entry: dict[str, Any], metric: Metric) -> float:
        """``metric`` of one method on one seed."""

    @abstractmethod
    def within_seed(
        self, entries: MethodResults, pairs: Sequence[tuple[str, str]], settings: dict[str, Any]
    ) -> PairDifferences:
        """For each ``(a, b)`` of ``pairs``, the difference ``b - a`` of each metric on this
        seed's items, with an interval from a paired test on those items. A metric the task
        cannot test within a seed is left out."""

    @abstractmethod
    def within_seed_note(self, settings: dict[str, Any]) -> str:
        """One paragraph: how :meth:`within_seed` tests each metric."""

    @abstractmethod
    def table(self, results: dict[str, Any]) -> str:
        """The markdown table of every method (mean over seeds with intervals)."""

    @abstractmethod
    def plot(self, results: dict[str, Any], path: Path, plt: Any) -> Path:
        """Draw the comparison with matplotlib's ``plt`` into ``path``; return it."""

    @abstractmethod
    def report(self, results: dict[str, Any], body: str, plot: Path | None) -> str:
        """``report.md``: what was compared and how, then ``body`` (the tables, the paired
        differences and what they support, the timing) and the plot (when one was drawn)."""
