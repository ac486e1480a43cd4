"""The JSONL task: a user's own prompt/completion pairs, scored by exact match.

``train_file`` holds ``{"prompt", "completion"}`` (or ``{"question", "answer"}``) lines;
``valid_file``, in the same format, is the validation split the trainer evaluates on.
Every completion is a finished answer (``<eos>`` follows it), cut at
``max_completion_tokens``; a preset model gets a character tokenizer of the data.
"""

from __future__ import annotations

from functools import cached_property

from transformers import PreTrainedTokenizerBase

from ..core.tokenizers import char_tokenizer
from .base import Pair
from .exact_match_task import ExactMatchTask
from .jsonl import read_pair_file


class JsonlTask(ExactMatchTask):
    """Prompt/completion pairs from the user's JSONL files."""

    name = "jsonl"
    option_names = ("train_file", "valid_file", "max_completion_tokens")

    @cached_property
    def splits(self) -> dict[str, list[Pair]]:
        """``train`` and ``valid`` pairs from the files; no test split (``eval --data``)."""
        if not self.options.train_file:
            raise ValueError("task jsonl needs train_file: a JSONL of {prompt, completion} lines")
        valid = read_pair_file(self.options.valid_file) if self.options.valid_file else []
        return {"train": read_pair_file(self.options.train_file), "valid": valid, "test": []}

    def preset_tokenizer(self) -> PreTrainedTokenizerBase:
        """One token per character found in the pairs."""
        seen = {c for pairs in self.splits.values() for p in pairs for c in p.prompt + p.completion}
        return char_tokenizer("".join(sorted(seen)))

    def test_pairs(self) -> list[Pair]:
        """None: this task has no test split of its own."""
        raise ValueError('task jsonl: pass --data, a JSONL of {"prompt", "completion"} lines')
