"""The JSONL task: the user's own ``{"prompt", "completion"}`` pairs, scored by exact match."""

from __future__ import annotations

import json
from pathlib import Path

from ..storage.files import parse_json, utf8_lines
from . import arithmetic


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """``(prompt, completion)`` texts from JSONL lines ``{"prompt", "completion"}`` or
    arithmetic ``{"question", "answer"}`` (prompt = question + separator).

    Both fields must be strings and the completion must not be empty (an empty prompt is a
    continuation from nothing); every problem is reported with the file and the line."""
    pairs: list[tuple[str, str]] = []
    for number, line in utf8_lines(path):
        if not line.strip():
            continue
        where = f"{path}:line {number}"
        try:
            record = parse_json(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not JSON ({error.msg})") from None
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
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
        pairs.append((prompt, completion))
    if not pairs:
        raise ValueError(f"{path}: no examples found")
    return pairs


def _text(record: dict, key: str, where: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        shown = "null" if value is None else type(value).__name__
        raise ValueError(f"{where}: {key!r} must be a string, got {shown}")
    return value
