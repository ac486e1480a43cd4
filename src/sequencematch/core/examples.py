"""Prompt/completion pairs as token ids: the unit of data every task produces."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase


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


def special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of every special token (never used as noise)."""
    return sorted({int(i) for i in tokenizer.all_special_ids})


def position_limit(model: PreTrainedModel) -> int | None:
    """How many positions ``model`` was built for (``max_position_embeddings``), if it says."""
    value = getattr(model.config, "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


def check_lengths(examples: Sequence[Example], limit: int | None, sample_length: int = 0) -> None:
    """Refuse examples longer than ``limit`` positions, before any ``[T, T]`` mask is built
    (a 2-million-token row would ask for terabytes); ``sample_length`` is the longest
    completion sampled after a prompt (0: no sampling)."""
    if limit is None:
        return
    for number, example in enumerate(examples, start=1):
        length = len(example.prompt) + len(example.completion)
        if length > limit:
            raise ValueError(
                f"training example {number} has {length} tokens (prompt {len(example.prompt)}, "
                f"completion {len(example.completion)}), more than the model's {limit} "
                "positions: shorten it or use a model with more positions"
            )
        if sample_length and len(example.prompt) + sample_length > limit:
            raise ValueError(
                f"training example {number}: its prompt of {len(example.prompt)} tokens plus "
                f"{sample_length} sampled tokens exceeds the model's {limit} positions: lower "
                "max_new_tokens or shorten the prompt"
            )
