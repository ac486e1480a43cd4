"""The JSONL task: a user's own prompt/completion pairs, scored by exact match.

``train_file`` holds ``{"prompt", "completion"}`` (or ``{"question", "answer"}``) lines;
``valid_file``, in the same format, is the validation split the trainer evaluates on.
Every completion is a finished answer (``<eos>`` follows it), cut at
``max_completion_tokens``; a preset model gets a character tokenizer of the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.examples import encode_example
from ..core.tokenizers import char_tokenizer
from .base import EvalOptions, Pair, Task, TaskData, choose_pairs
from .exact_match import ExactMatchEval, evaluate_exact_match
from .jsonl import read_pairs


def read_pair_file(path: str) -> list[Pair]:
    """The pairs of a JSONL file (see :func:`sequencematch.tasks.jsonl.read_pairs`)."""
    return [Pair(prompt, completion) for prompt, completion in read_pairs(path)]


class JsonlTask(Task):
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

    def data(self, tokenizer: PreTrainedTokenizerBase) -> TaskData:
        cap = self.options.max_completion_tokens
        train = [
            encode_example(tokenizer, p.prompt, p.completion, max_completion_tokens=cap)
            for p in self.splits["train"]
        ]
        return TaskData(train, self.splits["valid"], [])

    def evaluate(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        pairs: Sequence[Pair],
        *,
        bkspc_id: int | None,
        max_new_tokens: int,
        options: EvalOptions,
    ) -> ExactMatchEval:
        """Greedy completions (sampled at ``options.temperature`` with ``options.sample``),
        exact match, at forced noise ``options.noise_prob`` (any ordinary token is forced)."""
        return evaluate_exact_match(
            model, tokenizer, [(p.prompt, p.completion) for p in pairs], bkspc_id=bkspc_id,
            noise_prob=options.noise_prob, batch_size=options.batch_size,
            max_new_tokens=max_new_tokens, seed=options.seed, do_sample=options.sample,
            temperature=options.temperature,
        )  # fmt: skip

    def metrics(self, result: ExactMatchEval) -> dict[str, float]:
        return {"accuracy": result.accuracy, "bkspc_rate": result.bkspc_rate}

    def summary(self, result: ExactMatchEval) -> str:
        return result.summary()

    def held_out(
        self,
        tokenizer: PreTrainedTokenizerBase,
        data: str | None,
        *,
        n: int | None = None,
        seed: int = 0,
    ) -> list[Pair]:
        """The pairs of ``data`` (required: this task has no test split of its own)."""
        if data is None:
            raise ValueError('task jsonl: pass --data, a JSONL of {"prompt", "completion"} lines')
        return choose_pairs(read_pair_file(data), n, seed)
