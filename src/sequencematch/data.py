"""Prompt/completion pairs as token ids, and the noise sources built from them."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from .actions import NoiseSource, UniformNoise, UnigramNoise
from .tasks import arithmetic


@dataclass(frozen=True)
class Example:
    """One demonstration: prompt ids (never empty) and completion ids (ending in ``<eos>``)."""

    prompt: list[int]
    completion: list[int]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a prompt: ``text`` without special tokens, after the BOS token if any.

    The BOS token makes prompts never empty (generation and the one-pass layout need at
    least one prompt token); evaluation and training share this encoding.
    """
    ids = [int(token) for token in tokenizer(text, add_special_tokens=False).input_ids]
    if tokenizer.bos_token_id is not None:
        ids = [int(tokenizer.bos_token_id), *ids]
    if not ids:
        raise ValueError("the prompt encodes to no tokens and the tokenizer has no BOS token")
    return ids


def encode_example(tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str) -> Example:
    """Tokenise one pair; the completion ends with ``<eos>``."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token first")
    completion_ids = tokenizer(completion, add_special_tokens=False).input_ids
    return Example(encode_prompt(tokenizer, prompt), [*completion_ids, tokenizer.eos_token_id])


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


def special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of every special token (never used as noise)."""
    return sorted({int(i) for i in tokenizer.all_special_ids})


class ArithmeticMistakes:
    """Task noise for arithmetic: a plausible wrong character (digit of the base, sign)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id

    def __call__(self, prefix: list[int], correct: int, rng: random.Random) -> int:
        text = self.tokenizer.decode(prefix, skip_special_tokens=True)
        question, _, answer_prefix = text.partition(arithmetic.PROMPT_SEPARATOR)
        question = question.strip()
        at_end = correct in (-1, self.eos_id)  # the answer should end here
        correct_char = "" if at_end else self.tokenizer.decode([correct])
        mistake = arithmetic.plausible_mistake(question, answer_prefix, correct_char, rng)
        (token,) = self.tokenizer(mistake, add_special_tokens=False).input_ids
        return int(token)


class ModelSampleNoise:
    """Wrong tokens sampled from the model's own next-token distribution (SPEC section 5).

    ``probabilities[t]`` is the model's distribution after element ``t`` of the clean row
    ``prompt + completion`` (one batched forward gives every row's). The state of a noise
    insertion is located by its longest common prefix with the clean row, so inside a run of
    several wrong tokens the distribution at the run's start is reused.
    """

    def __init__(
        self, probabilities: torch.Tensor, clean_row: Sequence[int], exclude: Sequence[int]
    ) -> None:
        weights = probabilities.detach().double().cpu().clone()  # [T, V]
        weights[:, [i for i in exclude if 0 <= i < weights.shape[1]]] = 0.0
        self.weights = weights
        self.clean_row = list(clean_row)

    def __call__(self, prefix: list[int], correct: int, rng: random.Random) -> int:
        shared = 0
        for mine, theirs in zip(prefix, self.clean_row, strict=False):
            if mine != theirs:
                break
            shared += 1
        row = self.weights[max(shared, 1) - 1].clone()  # [V]
        if 0 <= correct < row.shape[0]:
            row[correct] = 0.0
        total = float(row.sum())
        if total <= 0.0:
            raise ValueError("the model puts no probability on any allowed wrong token")
        cumulative = row.cumsum(0)
        return int(
            torch.searchsorted(cumulative, torch.tensor(rng.random() * total)).clamp(
                max=row.shape[0] - 1
            )
        )


def build_noise_source(
    kind: str,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    vocab_size: int,
    task: str,
    exclude: Sequence[int] = (),
) -> NoiseSource:
    """The noise source named in the configuration (``uniform``, ``unigram`` or ``task``);
    special tokens and ``exclude`` (e.g. ``<bkspc>``) are never drawn."""
    excluded = sorted({*special_ids(tokenizer), *exclude})
    if kind == "uniform":
        return UniformNoise(vocab_size, exclude=excluded)
    if kind == "unigram":
        counts = Counter(token for example in examples for token in example.completion)
        return UnigramNoise([counts.get(i, 0) for i in range(vocab_size)], exclude=excluded)
    if kind == "model":
        raise ValueError("noise_source model is built per batch by the trainer (it needs logits)")
    if kind == "task":
        if task != "arithmetic":
            raise ValueError(f"noise_source task is only defined for arithmetic, not {task!r}")
        return ArithmeticMistakes(tokenizer)
    raise ValueError(f"unknown noise source {kind!r}; choose uniform, unigram or task")
