"""The Task interface: everything a run needs to know about its task, in one object.

A task gives the application its data (training examples, validation and test pairs),
the tokenizer a preset model uses with it, its own source of plausible mistakes (if any),
its prompt format, how long a model sample may be, and how a model is evaluated on it.
Nothing above this layer asks which task it is: arithmetic, jsonl and text are three
implementations, and a user's own task is one more class (see :mod:`sequencematch.tasks.registry`).
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..core.actions import NoiseSource
from ..core.causal_lm import backspace_id, valid_vocabulary
from ..core.examples import Example, encode_prompt, longest_completion
from ..evaluation.policy import PolicyDiagnostics, ReferenceRow, policy_diagnostics
from .names import task_reference

Evaluator = Callable[[PreTrainedModel], dict[str, float]]
"""``evaluate(model) -> metrics``: what the trainer calls on the validation split."""


@dataclass(frozen=True)
class Pair:
    """A held-out prompt and the completion the data gives for it, as text.

    ``final``: the completion reaches a real end (an answer, the end of a document), so
    ``<eos>`` follows it; a window cut from the middle of a text is not final.
    """

    prompt: str
    completion: str
    final: bool = True


@dataclass
class TaskData:
    """A task's data for one run: encoded training examples and held-out pairs."""

    train: list[Example]
    valid: list[Pair]
    test: list[Pair]


@dataclass(frozen=True)
class TaskOptions:
    """The task and data options of a run (named as in the training configuration).

    Each task reads the options it needs and ignores the others.
    """

    train_file: str | None = None
    valid_file: str | None = None
    n_train: int = 5000
    n_valid: int = 200
    n_test: int = 200
    difficulty: tuple[float, float] = (4.0, 10.0)
    vocab_size: int = 4096
    prompt_tokens: int = 32
    completion_tokens: int = 64
    max_completion_tokens: int = 256
    seed: int = 0

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> TaskOptions:
        """The options found in ``values`` (e.g. a configuration as a dict); others ignored."""
        defaults = cls()
        chosen = {}
        for item in fields(cls):
            if item.name in values:
                chosen[item.name] = _option_value(
                    item.name, values[item.name], getattr(defaults, item.name)
                )
        return cls(**chosen)


def _option_value(name: str, value: Any, default: Any) -> Any:
    """``value`` of the task option ``name`` (checked against its default's type): a
    ``task.json`` from elsewhere may hold anything."""
    if isinstance(default, tuple):
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(map(_is_number, value)):
            return tuple(float(x) for x in value)
        raise ValueError(f"{name} must be a list of two numbers, got {value!r}")
    if default is None or isinstance(default, str):
        if value is None or isinstance(value, str):
            return value
        raise ValueError(f"{name} must be text (a file path) or null, got {value!r}")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"{name} must be a whole number, got {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class EvalOptions:
    """How to evaluate: each task reads what applies to it.

    Attributes:
        seed: seed of sampling and of the forced noise.
        noise_prob: forced-noise probability per generated step (a single evaluation).
        levels: forced-noise levels of a comparison's sweep (exact-match tasks).
        sampled_levels: forced-noise levels a comparison also evaluates with answers
            sampled at ``temperature`` (exact-match tasks; none by default).
        temperature: sampling temperature: of open-ended generation (text, always
            sampled), and of answers (exact-match tasks) when ``sample`` is set.
        sample: exact-match tasks: sample answers at ``temperature`` instead of decoding
            greedily (how a model behaves when it samples: compounding error unforced).
        batch_size: prompts generated at once.
        n: held-out pairs to evaluate (0: all).
        with_mauve: text: compute MAUVE (slow: it encodes every text).
        mauve_seeds: text: k-means seeds of MAUVE.
        encoder: text: a sentence encoder to reuse across evaluations.
    """

    seed: int = 0
    noise_prob: float = 0.0
    levels: tuple[float, ...] = (0.0,)
    sampled_levels: tuple[float, ...] = ()
    temperature: float = 1.0
    sample: bool = False
    batch_size: int = 64
    n: int = 0
    with_mauve: bool = True
    mauve_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    encoder: Any = field(default=None, repr=False)


def choose_pairs(pairs: Sequence[Pair], n: int | None, seed: int = 0) -> list[Pair]:
    """``n`` of ``pairs`` (all when ``n`` is ``None``, 0 or more than there are), chosen with
    ``seed`` and kept in their order."""
    if not n or n >= len(pairs):
        return list(pairs)
    picked = sorted(random.Random(seed).sample(range(len(pairs)), n))
    return [pairs[i] for i in picked]


class Task(ABC):
    """One task: data, tokenizer choice, noise, prompt format, sample length, evaluation.

    Subclasses set :attr:`name` and implement the abstract methods; ``__init__`` takes the
    run's :class:`TaskOptions`, so a registered task can be built from a configuration.
    """

    name: ClassVar[str] = ""
    option_names: ClassVar[tuple[str, ...]] = tuple(item.name for item in fields(TaskOptions))
    """The :class:`TaskOptions` this task reads (what :meth:`info` records)."""

    def __init__(self, options: TaskOptions | None = None) -> None:
        self.options = options or TaskOptions()

    # ------------------------------------------------------------------ data

    @abstractmethod
    def preset_tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer a preset model (one without a tokenizer of its own) uses."""

    @abstractmethod
    def data(self, tokenizer: PreTrainedTokenizerBase) -> TaskData:
        """Training examples (completions cut at ``max_completion_tokens``) and held-out
        pairs, encoded with ``tokenizer``."""

    def noise_source(self, tokenizer: PreTrainedTokenizerBase) -> NoiseSource | None:
        """The task's own plausible mistakes (noise source ``task``); ``None``: it has none."""
        return None

    def format_prompt(self, text: str) -> str:
        """The prompt a model trained on this task expects for a user's ``text``."""
        return text

    def check_prompt(self, text: str) -> None:  # noqa: B027 - optional hook, no-op by default
        """Refuse (``ValueError``) a user's prompt that this task cannot answer."""

    def forced_noise_ids(self, tokenizer: PreTrainedTokenizerBase) -> list[int] | None:
        """Tokens the forced-noise protocol draws from (``None``: every ordinary token)."""
        return None

    def sample_length(self, train: Sequence[Example]) -> int:
        """Visible tokens of a model sample (``<eos>`` included): as far as the longest
        training completion goes (those are already cut at ``max_completion_tokens``)."""
        return min(longest_completion(train), self.options.max_completion_tokens)

    # ------------------------------------------------------------------ evaluation

    @abstractmethod
    def evaluate(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        pairs: Sequence[Pair],
        *,
        bkspc_id: int | None,
        max_new_tokens: int,
        options: EvalOptions,
    ) -> Any:
        """Generate for every pair's prompt and measure the result (a result object with
        ``as_dict()``)."""

    @abstractmethod
    def metrics(self, result: Any) -> dict[str, float]:
        """The numbers of an evaluation result worth logging during training."""

    def record(self, result: Any) -> dict[str, Any]:
        """An evaluation result as one JSON-ready object (``eval --json``)."""
        return result.as_dict()

    def summary(self, result: Any) -> str:
        """An evaluation result in one or a few lines for people."""
        return ", ".join(f"{key} {value:.3f}" for key, value in self.metrics(result).items())

    @abstractmethod
    def held_out(
        self,
        tokenizer: PreTrainedTokenizerBase,
        data: str | None,
        *,
        n: int | None = None,
        seed: int = 0,
    ) -> list[Pair]:
        """Pairs to evaluate a trained model on: read from ``data`` (a file), or, without it,
        the task's own test split; ``n`` of them (``None``: the task's default), chosen with
        ``seed``."""

    def validation_evaluator(
        self,
        tokenizer: PreTrainedTokenizerBase,
        pairs: Sequence[Pair],
        *,
        max_new_tokens: int,
        options: EvalOptions | None = None,
    ) -> Evaluator:
        """``evaluate(model) -> metrics`` on ``pairs``, for the trainer's periodic
        validation (the ``<bkspc>`` id is read from the model)."""
        if not pairs:
            raise ValueError(f"the {self.name} task has no validation pairs to evaluate on")
        settings = options or EvalOptions(with_mauve=False)

        def evaluate(model: PreTrainedModel) -> dict[str, float]:
            was_training = model.training
            model.eval()
            try:
                result = self.evaluate(
                    model, tokenizer, pairs, bkspc_id=backspace_id(model),
                    max_new_tokens=max_new_tokens, options=settings,
                )  # fmt: skip
            finally:
                model.train(was_training)
            return self.metrics(result)

        return evaluate

    def policy(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        pairs: Sequence[Pair],
        *,
        vocab_size: int | None = None,
        seed: int = 0,
    ) -> PolicyDiagnostics:
        """The policy around each pair's reference completion
        (:func:`~sequencematch.evaluation.policy.policy_diagnostics`), the wrong token drawn
        from the task's own mistakes where it has them. ``pairs`` are formatted as the model
        was trained (chat template or raw)."""
        rows = [
            ReferenceRow(
                encode_prompt(tokenizer, pair.prompt),
                [int(t) for t in tokenizer(pair.completion, add_special_tokens=False).input_ids],
                pair.final,
            )
            for pair in pairs
        ]
        bkspc_id = backspace_id(model)
        vocab = vocab_size or valid_vocabulary(model, tokenizer)
        pad = tokenizer.pad_token_id
        return policy_diagnostics(
            model, rows, bkspc_id=bkspc_id, eos_id=tokenizer.eos_token_id, vocab_size=vocab,
            pad_id=0 if pad is None else pad, wrong_token=self.noise_source(tokenizer),
            exclude=tokenizer.all_special_ids, seed=seed,
        )  # fmt: skip

    # ------------------------------------------------------------------ a saved model's task

    def info(self) -> dict[str, Any]:
        """What ``task.json`` records next to a saved model, so that ``eval`` and
        ``generate`` rebuild this task (:func:`sequencematch.tasks.registry.task_from_info`)."""
        record: dict[str, Any] = {"task": task_reference(type(self))}
        for name in self.option_names:
            value = getattr(self.options, name)
            if name.endswith("_file") and isinstance(value, str) and Path(value).exists():
                value = str(Path(value).resolve())  # the same file wherever eval runs
            record[name] = list(value) if isinstance(value, tuple) else value
        return record

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> Task:
        """The task a ``task.json`` describes (see :meth:`info`)."""
        return cls(TaskOptions.from_mapping(info))
