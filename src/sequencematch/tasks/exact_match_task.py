"""Tasks of prompt/completion pairs scored by exact match (arithmetic, jsonl): their shared
training data, evaluation and metrics."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.examples import encode_example
from .base import EvalOptions, Pair, Task, TaskData, choose_pairs
from .exact_match import ExactMatchEval, evaluate_exact_match
from .jsonl import read_pair_file


class ExactMatchTask(Task):
    """A task whose data are prompt/completion pairs and whose measure is exact match.

    Subclasses give :attr:`splits` (``train``, ``valid`` and ``test`` pairs; a cached
    property), the pairs evaluated without a file (:meth:`test_pairs`) and the task's
    forced-noise tokens (:meth:`Task.forced_noise_ids`)."""

    splits: dict[str, list[Pair]]

    def data(self, tokenizer: PreTrainedTokenizerBase) -> TaskData:
        cap = self.options.max_completion_tokens
        train = [
            encode_example(tokenizer, p.prompt, p.completion, max_completion_tokens=cap)
            for p in self.splits["train"]
        ]
        return TaskData(train, self.splits["valid"], self.splits["test"])

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
        exact match, at forced noise ``options.noise_prob`` (the forced tokens are drawn from
        :meth:`forced_noise_ids`: any ordinary token where the task names none)."""
        return evaluate_exact_match(
            model, tokenizer, [(p.prompt, p.completion) for p in pairs], bkspc_id=bkspc_id,
            noise_prob=options.noise_prob,
            noise_token_ids=self.forced_noise_ids(tokenizer) if options.noise_prob else None,
            batch_size=options.batch_size, max_new_tokens=max_new_tokens, seed=options.seed,
            do_sample=options.sample, temperature=options.temperature,
        )  # fmt: skip

    def held_out(
        self,
        tokenizer: PreTrainedTokenizerBase,
        data: str | None,
        *,
        n: int | None = None,
        seed: int = 0,
    ) -> list[Pair]:
        """The pairs of ``data`` (JSONL), or without it :meth:`test_pairs`; all of them unless
        ``n`` says otherwise."""
        pairs = read_pair_file(data) if data is not None else self.test_pairs()
        return choose_pairs(pairs, n, seed)

    @abstractmethod
    def test_pairs(self) -> list[Pair]:
        """The task's own test pairs (``ValueError`` naming ``--data`` where it has none)."""

    def metrics(self, result: ExactMatchEval) -> dict[str, float]:
        return {"accuracy": result.accuracy, "bkspc_rate": result.bkspc_rate}

    def summary(self, result: ExactMatchEval) -> str:
        return result.summary()
