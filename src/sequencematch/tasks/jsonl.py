"""The JSONL task: the user's own ``{"prompt", "completion"}`` pairs, scored by exact match."""

from __future__ import annotations

import json
from pathlib import Path

from . import arithmetic


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """``(prompt, completion)`` texts from JSONL lines ``{"prompt", "completion"}`` or
    arithmetic ``{"question", "answer"}`` (prompt = question + separator)."""
    pairs: list[tuple[str, str]] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:line {number}: not JSON ({error.msg})") from None
            if isinstance(record, dict) and {"prompt", "completion"} <= record.keys():
                pairs.append((str(record["prompt"]), str(record["completion"])))
            elif isinstance(record, dict) and {"question", "answer"} <= record.keys():
                question = str(record["question"])
                pairs.append((arithmetic.format_prompt(question), str(record["answer"])))
            else:
                raise ValueError(
                    f"{path}:line {number}: expected an object with prompt and completion "
                    "(or question and answer)"
                )
    if not pairs:
        raise ValueError(f"{path}: no examples found")
    return pairs
