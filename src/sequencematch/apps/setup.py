"""From a configuration to a ready run: tokenizer, model and data for the chosen task."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedModel

from ..core.examples import Example, encode_example
from ..models.loading import PRESETS, load_model
from ..models.presets import char_tokenizer
from ..tasks import arithmetic
from ..tasks.arithmetic_task import ArithmeticMistakes
from ..tasks.jsonl import read_pairs
from ..training.config import TrainConfig

TASK_FILE = "task.json"


@dataclass
class RunInputs:
    """What a training run starts from."""

    model: PreTrainedModel
    tokenizer: Any
    train: list[Example]
    valid_pairs: list[tuple[str, str]]
    test_pairs: list[tuple[str, str]]
    task_info: dict[str, Any]
    task_noise: Any = None  # the task's own plausible mistakes (noise_source task), if any


def task_pairs(config: TrainConfig) -> tuple[list[tuple[str, str]], ...]:
    """``(train, valid, test)`` prompt/completion texts of the configured task."""
    if config.task == "arithmetic" and not config.train_file:
        splits = arithmetic.make_splits(
            config.n_train, config.n_valid, config.n_test,
            difficulty=tuple(config.difficulty), seed=config.seed,
        )  # fmt: skip
        return tuple(
            [(arithmetic.format_prompt(q.question), q.answer) for q in splits[name]]
            for name in ("train", "valid", "test")
        )
    train = read_pairs(config.train_file)
    valid = read_pairs(config.valid_file) if config.valid_file else []
    return train, valid, []


def build_tokenizer(config: TrainConfig, pairs: list[tuple[str, str]]) -> Any:
    """A character tokenizer for presets (the task alphabet plus the data's characters),
    or the tokenizer saved with the model folder."""
    if config.model in PRESETS:
        alphabet = arithmetic.ALPHABET if config.task == "arithmetic" else ""
        alphabet += "".join(sorted({c for p, c in pairs for c in p + c} - set(alphabet)))
        return char_tokenizer(alphabet)
    return AutoTokenizer.from_pretrained(config.model)


def build_model(config: TrainConfig, tokenizer: Any) -> PreTrainedModel:
    """A preset built from its config (seeded), or a saved model folder, in float32 (the
    master weights; bf16/fp16 precision is autocast on top)."""
    torch.manual_seed(config.seed)
    overrides: dict[str, int] = {}
    if config.model in PRESETS:
        overrides = dict(
            hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
        )  # fmt: skip
        if config.model == "tiny_llama":
            overrides |= dict(
                num_key_value_heads=config.num_heads, intermediate_size=4 * config.hidden_size
            )
    model, _ = load_model(
        config.model, tokenizer=tokenizer, dtype="float32",
        attn_implementation=config.attn_implementation, preset_overrides=overrides or None,
    )  # fmt: skip
    return model


MIN_DOCUMENTS = 3
"""Fewer documents than this are cut into parts so that train/valid/test all get text."""
PARTS_PER_DOCUMENT = 10


def text_splits(corpus: str | None) -> dict[str, dict[str, str]]:
    """Train/valid/test documents of the text task, split by document with a fixed seed (0),
    so that every training seed is evaluated on the same held-out text.

    ``corpus`` is a text file, a folder of them or ``{"text"}`` JSONL; ``None`` or
    ``"shakespeare"`` is the Shakespeare corpus. A corpus of fewer than three documents is cut
    into consecutive parts at line breaks first.
    """
    from ..tasks import text

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


def text_tokenizer(config: TrainConfig, train_documents: dict[str, str]) -> Any:
    """Presets: a byte-level BPE trained on the training documents; else the model's own."""
    from ..tasks import text

    if config.model in PRESETS:
        return text.train_bpe_tokenizer(train_documents.values(), vocab_size=config.vocab_size)
    return AutoTokenizer.from_pretrained(config.model)


def text_pairs(
    config: TrainConfig, tokenizer: Any, splits: dict[str, dict[str, str]]
) -> tuple[list[tuple[str, str]], ...]:
    """``(train, valid, test)`` prompt/completion windows: training windows drawn with the
    run's seed (``n_train``, 0 for all), held-out windows with seed 0."""
    from ..tasks import text

    def cut(name: str, n: int, seed: int) -> list[tuple[str, str]]:
        return text.cut_pairs(
            tokenizer, splits[name].values(), prompt_tokens=config.prompt_tokens,
            completion_tokens=config.completion_tokens, n=n or None, seed=seed,
        )  # fmt: skip

    return (
        cut("train", config.n_train, config.seed),
        cut("valid", config.n_valid, 0),
        cut("test", config.n_test, 0),
    )


def prepare_run(config: TrainConfig) -> RunInputs:
    """Tokenizer, model, encoded training data and held-out texts for ``config``."""
    if config.task == "text":
        splits = text_splits(config.train_file)
        tokenizer = text_tokenizer(config, splits["train"])
        train_pairs, valid_pairs, test_pairs = text_pairs(config, tokenizer, splits)
        task_info: dict[str, Any] = {
            "task": "text", "corpus": config.train_file or "shakespeare",
            "prompt_tokens": config.prompt_tokens,
            "completion_tokens": config.completion_tokens,
            "max_new_tokens": config.sample_length(),
        }  # fmt: skip
    else:
        train_pairs, valid_pairs, test_pairs = task_pairs(config)
        tokenizer = build_tokenizer(config, train_pairs + valid_pairs + test_pairs)
        task_info = {"task": config.task, "prompt_separator": arithmetic.PROMPT_SEPARATOR,
                     "max_new_tokens": config.sample_length()}  # fmt: skip
    model = build_model(config, tokenizer)
    train = [encode_example(tokenizer, prompt, completion) for prompt, completion in train_pairs]
    task_noise = ArithmeticMistakes(tokenizer) if config.task == "arithmetic" else None
    return RunInputs(model, tokenizer, train, valid_pairs, test_pairs, task_info, task_noise)


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

    def prompt_text(self, text: str) -> str:
        """The prompt format the model was trained on (arithmetic: question + separator)."""
        if self.task_info.get("task") == "arithmetic":
            separator = self.task_info.get("prompt_separator", arithmetic.PROMPT_SEPARATOR)
            return text if text.endswith(separator) else text + separator
        return text


def load_trained(folder: str | Path, device: str = "cpu") -> TrainedModel:
    """Load a model folder written by training (``model/`` of a run, or a demo subfolder)."""
    from ..core.backspace import backspace_id

    path = Path(folder)
    if not (path / "config.json").exists():
        raise ValueError(f"{path} holds no saved model (no config.json); pass a model folder")
    info_file = path / TASK_FILE
    info = json.loads(info_file.read_text()) if info_file.exists() else {"task": "text"}
    model, tokenizer = load_model(path, dtype="float32", attn_implementation="sdpa")
    model = model.to(device)
    return TrainedModel(model.eval(), tokenizer, backspace_id(model), info)


def held_out_text_pairs(
    trained: TrainedModel, data: str | None, n: int = 200, seed: int = 0
) -> list[tuple[str, str]]:
    """Prompt/completion pairs to evaluate a text model on: ``data`` as ``{"prompt",
    "completion"}`` JSONL, or a text file / folder / ``{"text"}`` JSONL cut into windows of the
    model's prompt and completion lengths; without ``data``, the held-out test split of the
    corpus the model was trained on (the same windows as training's test split for the same
    ``n``). ``seed`` picks the windows when there are more than ``n``."""
    from ..tasks import text

    info = trained.task_info
    if data is not None and str(data).endswith(".jsonl"):
        first = next((line for line in Path(data).read_text().splitlines() if line.strip()), "")
        try:
            record = json.loads(first)
        except json.JSONDecodeError:
            record = None  # read_documents reports the bad line with its number
        if isinstance(record, dict) and ({"prompt", "question"} & record.keys()):
            return read_pairs(data)[:n] if n else read_pairs(data)
    if data is None:
        documents = text_splits(info.get("corpus"))["test"]
    else:
        documents = text.read_documents(data)
    return text.cut_pairs(
        trained.tokenizer, documents.values(), prompt_tokens=int(info.get("prompt_tokens", 32)),
        completion_tokens=int(info.get("completion_tokens", 64)), n=n or None, seed=seed,
    )  # fmt: skip
