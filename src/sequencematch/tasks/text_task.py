"""The text task: a language model of a corpus, trained on windows, judged on continuations.

The corpus (``train_file``: a text file, a folder or ``{"text"}`` JSONL; without it the
complete works of Shakespeare) is split by document with a fixed seed, so every training
seed is evaluated on the same held-out text. Windows of ``prompt_tokens`` +
``completion_tokens`` tokens are cut from each split (:func:`text.cut_windows`): training
windows are the completions to imitate, held-out windows the prompts to continue. A window
from the middle of a document has no ``<eos>`` (its row bootstraps, like a model sample cut
at the same length); only a window that ends its document is terminal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.examples import make_example
from ..evaluation.text_evaluation import TextEval, evaluate_text
from . import text
from .base import EvalOptions, Pair, Task, TaskData, TaskOptions
from .jsonl import read_pair_file

MIN_DOCUMENTS = 3
"""Fewer documents than this are cut into parts so that train/valid/test all get text."""
PARTS_PER_DOCUMENT = 10
EVAL_WINDOWS = 200
"""Held-out windows ``eval`` scores by default."""


def text_splits(corpus: str | None) -> dict[str, dict[str, str]]:
    """Train/valid/test documents of the text task, split by document with a fixed seed (0),
    so that every training seed is evaluated on the same held-out text.

    ``corpus`` is a text file, a folder of them or ``{"text"}`` JSONL; ``None`` or
    ``"shakespeare"`` is the Shakespeare corpus. A corpus of fewer than three documents is cut
    into consecutive parts at line breaks first.
    """
    if corpus in (None, "shakespeare"):
        documents = text.shakespeare_works()
    else:
        documents = text.read_documents(corpus)
    if len(documents) < MIN_DOCUMENTS:
        documents = {
            f"{name}#{index}": part
            for name, body in documents.items()
            for index, part in enumerate(_cut_lines(body, PARTS_PER_DOCUMENT))
        }
    return text.split_documents(documents, seed=0)


def _cut_lines(body: str, parts: int) -> list[str]:
    """``body`` cut into up to ``parts`` consecutive pieces of about equal length at line breaks."""
    lines = body.splitlines(keepends=True)
    size = max(1, math.ceil(len(lines) / parts))
    pieces = ["".join(lines[start : start + size]) for start in range(0, len(lines), size)]
    return [piece for piece in pieces if piece.strip()]


class TextTask(Task):
    """Language modelling of a corpus, evaluated by sampling continuations of held-out text."""

    name = "text"
    option_names = (
        "train_file", "valid_file", "n_train", "n_valid", "n_test", "vocab_size",
        "prompt_tokens", "completion_tokens", "max_completion_tokens", "seed",
    )  # fmt: skip

    @cached_property
    def documents(self) -> dict[str, dict[str, str]]:
        """Train/valid/test documents (:func:`text_splits`); ``valid_file`` replaces the
        validation documents."""
        splits = text_splits(self.options.train_file)
        if self.options.valid_file:
            splits["valid"] = text.read_documents(self.options.valid_file)
        return splits

    def preset_tokenizer(self) -> PreTrainedTokenizerBase:
        """A byte-level BPE of ``vocab_size`` tokens trained on the training documents."""
        return text.train_bpe_tokenizer(
            self.documents["train"].values(), vocab_size=self.options.vocab_size
        )

    def windows(
        self, tokenizer: PreTrainedTokenizerBase, documents: dict[str, str], n: int, seed: int
    ) -> list[text.Window]:
        """``n`` windows (0: all) of ``documents``, chosen with ``seed``."""
        return text.cut_windows(
            tokenizer, documents.values(), prompt_tokens=self.options.prompt_tokens,
            completion_tokens=self.options.completion_tokens, n=n or None, seed=seed,
        )  # fmt: skip

    def data(self, tokenizer: PreTrainedTokenizerBase) -> TaskData:
        """Training windows drawn with the run's seed (``n_train``, 0 for all), encoded from
        their token ids; held-out windows with seed 0."""
        options = self.options
        train = [
            make_example(
                tokenizer,
                window.prompt,
                window.completion,
                final=window.final,
                max_completion_tokens=options.max_completion_tokens,
            )  # fmt: skip
            for window in self.windows(
                tokenizer, self.documents["train"], options.n_train, options.seed
            )  # fmt: skip
        ]
        return TaskData(
            train,
            self._pairs(
                tokenizer, self.windows(tokenizer, self.documents["valid"], options.n_valid, 0)
            ),  # fmt: skip
            self._pairs(
                tokenizer, self.windows(tokenizer, self.documents["test"], options.n_test, 0)
            ),  # fmt: skip
        )

    @staticmethod
    def _pairs(tokenizer: PreTrainedTokenizerBase, windows: list[text.Window]) -> list[Pair]:
        return [Pair(*window.texts(tokenizer), final=window.final) for window in windows]

    def evaluate(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        pairs: Sequence[Pair],
        *,
        bkspc_id: int | None,
        max_new_tokens: int,
        options: EvalOptions,
    ) -> TextEval:
        """One sampled continuation per prompt, measured against the human ones."""
        return evaluate_text(
            model, tokenizer, [(p.prompt, p.completion) for p in pairs], bkspc_id=bkspc_id,
            final=[p.final for p in pairs], max_new_tokens=max_new_tokens, seed=options.seed,
            temperature=options.temperature, batch_size=options.batch_size,
            with_mauve=options.with_mauve, mauve_seeds=options.mauve_seeds,
            encoder=options.encoder,
        )  # fmt: skip

    def metrics(self, result: TextEval) -> dict[str, float]:
        numbers = {
            "perplexity": result.perplexity,
            "diversity": result.statistics["diversity"],
            "rep_2": result.statistics["rep_2"],
            "bkspc_rate": result.bkspc_rate,
        }
        if result.mauve is not None:
            numbers["mauve"] = result.mauve["mean"]
        return numbers

    def record(self, result: TextEval) -> dict[str, Any]:
        record = result.as_dict()
        record.pop("completions")
        return record

    def summary(self, result: TextEval) -> str:
        lines = []
        if result.mauve is not None:
            mauve = result.mauve
            lines.append(
                f"MAUVE {mauve['mean']:.3f} +- {mauve['std']:.3f} over {len(mauve['seeds'])} "
                "k-means seeds"
            )
        stats, human = result.statistics, result.reference_statistics["diversity"]
        lines.append(
            f"diversity {stats['diversity']:.3f} (human {human:.3f}), rep-2 {stats['rep_2']:.3f}, "
            f"rep-4 {stats['rep_4']:.3f}, entropy-4 {stats['entropy_4']:.2f}; perplexity "
            f"{result.perplexity:.2f}; <bkspc> rate {result.bkspc_rate:.3f}; on {result.n} "
            "prompts"
        )
        for example in result.examples[:1]:
            lines.append(f"\nprompt: {example['prompt']!r}\nmodel:  {example['completion']!r}")
        return "\n".join(lines)

    def held_out(
        self,
        tokenizer: PreTrainedTokenizerBase,
        data: str | None,
        *,
        n: int | None = None,
        seed: int = 0,
    ) -> list[Pair]:
        """``data`` as ``{"prompt", "completion"}`` JSONL (continuations, not text ends), or a
        text file / folder / ``{"text"}`` JSONL cut into windows; without ``data``, the
        held-out test documents of the corpus the model was trained on (the same windows as
        training's test split for the same ``n``). ``n`` defaults to :data:`EVAL_WINDOWS`."""
        n = EVAL_WINDOWS if n is None else n
        if data is not None and _holds_pairs(data):
            pairs = [Pair(p.prompt, p.completion, final=False) for p in read_pair_file(data)]
            return pairs[:n] if n else pairs
        documents = self.documents["test"] if data is None else text.read_documents(data)
        return self._pairs(tokenizer, self.windows(tokenizer, documents, n, seed))

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> TextTask:
        """Also reads the ``corpus`` entry that older ``task.json`` files hold."""
        values = dict(info)
        if "corpus" in values and "train_file" not in values:
            corpus = values["corpus"]
            values["train_file"] = None if corpus == "shakespeare" else corpus
        return cls(TaskOptions.from_mapping(values))


def _holds_pairs(path: str) -> bool:
    """Whether a ``.jsonl`` file holds prompt/completion pairs (else: ``{"text"}`` records),
    told by parsing its first record."""
    if not str(path).endswith(".jsonl"):
        return False
    first = next((line for line in Path(path).read_text().splitlines() if line.strip()), "")
    try:
        record = json.loads(first)
    except (ValueError, RecursionError):
        return False  # read_documents reports the bad line with its number
    return isinstance(record, dict) and bool({"prompt", "question"} & record.keys())
