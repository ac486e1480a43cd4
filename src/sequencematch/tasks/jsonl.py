"""A user's own prompt/completion pairs, read from JSONL (the data of the JSONL task)."""

from __future__ import annotations

from pathlib import Path

from ..storage.files import json_line, utf8_lines
from . import arithmetic
from .base import Pair


def read_pair_file(path: str | Path) -> list[Pair]:
    """The prompt/completion pairs of JSONL lines ``{"prompt", "completion"}`` or
    arithmetic ``{"question", "answer"}`` (prompt = question + separator).

    Both fields must be strings and the completion must not be empty (an empty prompt is a
    continuation from nothing); every problem is reported with the file and the line."""
    pairs: list[Pair] = []
    for number, line in utf8_lines(path):
        if not line.strip():
            continue
        where = f"{path}:line {number}"
        record = json_line(line, where)
        if isinstance(record, dict) and {"prompt", "completion"} <= record.keys():
            prompt, completion = _text(record, "prompt", where), _text(record, "completion", where)
        elif isinstance(record, dict) and {"question", "answer"} <= record.keys():
            question = _text(record, "question", where)
            arithmetic.check_stated_base(question, f"{where}: ")
            prompt, completion = arithmetic.format_prompt(question), _text(record, "answer", where)
        else:
            raise ValueError(
                f"{where}: expected an object with prompt and completion (or question and answer)"
            )
        if not completion:
            raise ValueError(f"{where}: the completion is empty; there is nothing to imitate")
        pairs.append(Pair(prompt, completion))
    if not pairs:
        raise ValueError(f"{path}: no examples found")
    return pairs


def _text(record: dict, key: str, where: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        shown = "null" if value is None else type(value).__name__
        raise ValueError(f"{where}: {key!r} must be a string, got {shown}")
    return value
