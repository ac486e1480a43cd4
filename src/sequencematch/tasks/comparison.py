"""The task-specific parts of a method comparison: evaluation, table, plot and report.

The comparison harness (:mod:`sequencematch.apps.comparison`) trains every method and
writes ``results.json``, ``report.md`` and a plot; what is measured on a trained model and
how it is shown comes from the task, through one of these objects.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .base import EvalOptions, Pair

if TYPE_CHECKING:
    from .base import Task


class Comparison(ABC):
    """How one task evaluates and reports a comparison of training methods.

    ``results`` below is the harness's record: ``{"settings": {...}, "methods": {name:
    entry}, "workers": ..., "threads_per_worker": ...}``, with each entry made by
    :meth:`entry`.
    """

    plot_name: ClassVar[str] = "comparison.png"

    def share(self, options: EvalOptions, workers: int) -> EvalOptions:
        """``options`` with anything the evaluations of one process can share (e.g. a model
        that is slow to load), when the methods train one after the other (``workers`` 1)."""
        return options

    @abstractmethod
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
    ) -> Any:
        """What a comparison measures on one trained model (picklable: it may come back
        from a worker process)."""

    @abstractmethod
    def entry(self, result: Any, seconds: float) -> dict[str, Any]:
        """One method's JSON-ready record in ``results.json``."""

    @abstractmethod
    def row(self, name: str, entry: dict[str, Any]) -> str:
        """One method's line of the markdown table (printed as each method finishes)."""

    @abstractmethod
    def table(self, results: dict[str, Any]) -> str:
        """The markdown table of every method."""

    @abstractmethod
    def plot(self, results: dict[str, Any], path: Path, plt: Any) -> Path:
        """Draw the comparison with matplotlib's ``plt`` into ``path``; return it."""

    @abstractmethod
    def report(self, results: dict[str, Any], table: str, timing: str, plot: Path | None) -> str:
        """``report.md``: what was compared and how, the table, the ``timing`` sentence and
        the plot (when one was drawn)."""
