"""Prompt/completion pairs as token ids: the unit of data every task produces."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase


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
