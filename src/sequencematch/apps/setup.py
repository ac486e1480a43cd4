"""From a configuration and a task to a ready run: tokenizer, model, data, noise, evaluator."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from ..core.actions import NoiseSource
from ..core.examples import (
    Example,
    check_prompt_lengths,
    encode_prompt,
    longest_completion,
    position_limit,
)
from ..models.loading import PRESETS, load_model
from ..models.prompts import format_prompt
from ..storage.files import parse_json
from ..tasks.base import Evaluator, Pair, Task, TaskData, TaskOptions
from ..tasks.registry import build_task, task_from_info
from ..training.config import TrainConfig, noise_source_parts

TASK_FILE = "task.json"


@dataclass
class RunInputs:
    """What a training run starts from.

    Attributes:
        task: the task of the run.
        model, tokenizer: the model to train and its tokenizer (``<bkspc>`` not added yet).
        train: encoded training examples (completions cut at ``max_completion_tokens``).
        valid, test: held-out pairs of the task.
        task_info: what ``task.json`` records next to the saved model.
        task_noise: the task's own plausible mistakes (noise source ``task``), if any.
        sample_length: visible tokens of a model sample (from the data, or the config).
        evaluate: the validation evaluation for the trainer, when there is validation data.
    """

    task: Task
    model: PreTrainedModel
    tokenizer: Any
    train: list[Example]
    valid: list[Pair]
    test: list[Pair]
    task_info: dict[str, Any]
    task_noise: NoiseSource | None
    sample_length: int
    evaluate: Evaluator | None = None

    @property
    def valid_pairs(self) -> list[tuple[str, str]]:
        """The validation pairs as ``(prompt, completion)`` texts."""
        return [(p.prompt, p.completion) for p in self.valid]

    @property
    def test_pairs(self) -> list[tuple[str, str]]:
        """The test pairs as ``(prompt, completion)`` texts."""
        return [(p.prompt, p.completion) for p in self.test]


def task_options(config: TrainConfig) -> TaskOptions:
    """The task and data options of ``config``."""
    return TaskOptions.from_mapping(config.to_dict())


def config_task(config: TrainConfig) -> Task:
    """The task that ``config.task`` names, built from ``config``'s task options."""
    return build_task(config.task, task_options(config))


def build_model(config: TrainConfig, tokenizer: Any) -> PreTrainedModel:
    """A preset built for ``tokenizer`` from its config (seeded), in float32 (the master
    weights; bf16/fp16 precision is autocast on top)."""
    torch.manual_seed(config.seed)
    overrides: dict[str, int] = dict(
        hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
    )  # fmt: skip
    if config.model == "tiny_llama":
        overrides |= dict(
            num_key_value_heads=config.num_heads, intermediate_size=4 * config.hidden_size
        )
    model, _ = load_model(
        config.model, tokenizer=tokenizer, dtype="float32",
        attn_implementation=config.attn_implementation,
        preset_overrides=overrides if config.model in PRESETS else None,
    )  # fmt: skip
    return model


def build_model_and_tokenizer(config: TrainConfig, task: Task) -> tuple[PreTrainedModel, Any]:
    """A preset with the task's tokenizer, or any other model (a pretrained name, a model
    folder, a ``.gguf`` file) with its own tokenizer, in float32."""
    if config.model in PRESETS:
        tokenizer = task.preset_tokenizer()
        return build_model(config, tokenizer), tokenizer
    torch.manual_seed(config.seed)
    return load_model(config.model, dtype="float32", attn_implementation=config.attn_implementation)


def prepare_run(config: TrainConfig, task: Task | None = None) -> RunInputs:
    """Tokenizer, model, encoded training data, held-out pairs, noise and validation
    evaluation for ``config``; ``task`` replaces the task that ``config.task`` names (a
    user's own task object)."""
    task = task or config_task(config)
    model, tokenizer = build_model_and_tokenizer(config, task)
    data = task.data(tokenizer)
    if not data.train:
        raise ValueError(f"the {task.name} task produced no training examples")
    task_noise = task.noise_source(tokenizer)
    if "task" in noise_source_parts(config.noise_source) and task_noise is None:
        raise ValueError(
            f"noise_source task needs the task's own mistakes, and the {task.name} task defines "
            "none: use uniform, unigram or model"
        )
    if config.eval_every and not data.valid:
        raise ValueError(
            f"eval_every {config.eval_every} needs validation data, and the {task.name} task "
            "has none: pass valid_file (or set eval_every 0)"
        )
    if config.chat_template:
        data = chat_formatted(tokenizer, data)
    sample_length = config.sample_length(longest_completion(data.train))
    for name, pairs in (("validation data", data.valid), ("test data", data.test)):
        check_prompt_lengths(
            tokenizer, [p.prompt for p in pairs], position_limit(model), sample_length, name
        )
    evaluate = None
    if data.valid:
        evaluate = task.validation_evaluator(tokenizer, data.valid, max_new_tokens=sample_length)
    info = task.info() | {"max_new_tokens": sample_length, "chat_template": config.chat_template}
    return RunInputs(
        task, model, tokenizer, data.train, data.valid, data.test, info, task_noise,
        sample_length, evaluate,
    )  # fmt: skip


def chat_formatted(tokenizer: Any, data: TaskData) -> TaskData:
    """``data`` with every prompt in the tokenizer's chat template (one user turn, then the
    start of the assistant's reply); completions unchanged."""
    check_chat_template(tokenizer)

    def chat(text: str) -> str:
        return format_prompt(tokenizer, text, chat_template=True)

    train = [
        replace(e, prompt=encode_prompt(tokenizer, chat(tokenizer.decode(e.prompt,
                                                                         skip_special_tokens=True))))
        for e in data.train
    ]  # fmt: skip
    return TaskData(train, chat_pairs(tokenizer, data.valid), chat_pairs(tokenizer, data.test))


def chat_pairs(tokenizer: Any, pairs: Sequence[Pair]) -> list[Pair]:
    """``pairs`` with every prompt in the tokenizer's chat template (one user turn, then the
    start of the assistant's reply): the held-out prompts of a run with ``chat_template``."""
    check_chat_template(tokenizer)
    return [
        replace(pair, prompt=format_prompt(tokenizer, pair.prompt, chat_template=True))
        for pair in pairs
    ]


def check_chat_template(tokenizer: Any) -> None:
    """Refuse a tokenizer without a chat template, saying what to do."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "chat_template true needs a model whose tokenizer has a chat template (an instruct "
            "model such as smollm2-135m); set chat_template false for raw prompts"
        )


def task_file(info: dict[str, Any]) -> dict[str, str]:
    """The ``task.json`` that goes with a saved model (so ``generate``/``eval`` need no flags)."""
    return {TASK_FILE: json.dumps(info, indent=2)}


@dataclass
class TrainedModel:
    """A saved model folder, ready to generate: model, tokenizer, ``<bkspc>`` id, task."""

    model: PreTrainedModel
    tokenizer: Any
    bkspc_id: int | None
    task_info: dict[str, Any]
    task: Task

    @property
    def sample_length(self) -> int:
        """Visible tokens of a sample, as the model was trained to write them."""
        return int(self.task_info.get("max_new_tokens", 64))

    def prompt_text(self, text: str) -> str:
        """The prompt format the model was trained on (arithmetic: question + separator;
        inside the chat template when it was trained with one)."""
        formatted = self.task.format_prompt(text)
        if self.task_info.get("chat_template"):
            formatted = format_prompt(self.tokenizer, formatted, chat_template=True)
        return formatted

    def prompts_as_trained(self, pairs: Sequence[Pair]) -> list[Pair]:
        """Held-out pairs (prompts in the task's format) with prompts as the model saw them in
        training: inside the chat template when it was trained with one, else unchanged."""
        if self.task_info.get("chat_template"):
            return chat_pairs(self.tokenizer, pairs)
        return list(pairs)


def load_trained(
    folder: str | Path,
    device: str = "cpu",
    *,
    task: str | None = None,
    trust_task_code: bool = False,
) -> TrainedModel:
    """Load a model folder written by training (``model/`` of a run, or a demo subfolder).

    ``task`` names the task instead of the folder's ``task.json`` (which a folder without one,
    such as a checkpoint, needs: the task is never guessed). A ``task.json`` naming a task
    class by import path is refused unless ``trust_task_code`` (importing it runs its code).
    """
    from ..core.causal_lm import backspace_id

    path = Path(folder)
    if not (path / "config.json").exists():
        raise ValueError(f"{path} holds no saved model (no config.json); pass a model folder")
    info = read_task_info(path)
    if task is not None:
        info["task"] = task
    elif "task" not in info:
        raise ValueError(
            f"{path} has no {TASK_FILE} (sequencematch train writes one), so the task it was "
            "trained on is unknown: pass --task NAME (arithmetic, jsonl or text)"
        )
    try:  # the task first: refusing it must not cost loading the weights
        built = task_from_info(info, trust_code=trust_task_code or task is not None)
    except ValueError as error:
        where = "--task" if task is not None else str(path / TASK_FILE)
        raise ValueError(f"{where}: {error}") from None
    model, tokenizer = load_model(path, dtype="float32", attn_implementation="sdpa")
    model = model.to(device)
    return TrainedModel(model.eval(), tokenizer, backspace_id(model), info, built)


def read_task_info(folder: Path) -> dict[str, Any]:
    """The ``task.json`` of a model folder as a dict (empty when there is none), its entries
    checked; refusals name the file."""
    info_file = folder / TASK_FILE
    if not info_file.exists():
        return {}
    try:
        info = parse_json(info_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{info_file} is not valid JSON ({error}); restore it") from None
    if not isinstance(info, dict):
        raise ValueError(f"{info_file} must hold a JSON object, not {type(info).__name__}")
    length = info.get("max_new_tokens", 64)
    if not (isinstance(length, int) and not isinstance(length, bool) and length >= 1):
        raise ValueError(f"{info_file}: max_new_tokens must be a whole number >= 1, got {length!r}")
    if not isinstance(info.get("chat_template", False), bool):
        raise ValueError(f"{info_file}: chat_template must be true or false")
    return info
