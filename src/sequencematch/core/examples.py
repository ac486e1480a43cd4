"""Prompt/completion pairs as token ids: the unit of data every task produces.

A completion that reaches a real end (the end of an answer, of a document) ends with
``<eos>``: the episode is over there. A completion cut short (a window from the middle of
a text, a row cut at the maximum length) has no ``<eos>``: the objectives bootstrap from the
value of its last state, exactly as they do for a model sample cut at its maximum length
(docs/method.md, "Terminal states"), so data rows and model rows follow one rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Example:
    """One demonstration: prompt ids (never empty) and completion ids (ending in ``<eos>``
    when the completion reaches a real end, cut without it otherwise)."""

    prompt: list[int]
    completion: list[int]


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a user's text, no special token added and none read from it: a literal
    ``<eos>``, ``<pad>`` or ``<bkspc>`` in the data stays those characters, never the
    token (which would end an answer early, or turn into an expert deletion)."""
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids
    return [int(token) for token in ids]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a prompt: ``text`` (see :func:`encode_text`), after the BOS token if any.

    The BOS token makes prompts never empty (generation and the one-pass layout need at
    least one prompt token); evaluation and training share this encoding. A prompt in the
    tokenizer's chat template keeps the template's own markers as special tokens; only the
    user's text inside is read as plain text.
    """
    frame = _chat_frame(tokenizer)
    if frame is not None:
        before, after = frame
        inside = len(text) - len(before) - len(after)
        if inside >= 0 and text.startswith(before) and text.endswith(after):
            markers = {"add_special_tokens": False}
            ids = [
                *tokenizer(before, **markers).input_ids,
                *encode_text(tokenizer, text[len(before) : len(before) + inside]),
                *(tokenizer(after, **markers).input_ids if after else []),
            ]
            return with_bos(tokenizer, ids)
    return with_bos(tokenizer, encode_text(tokenizer, text))


_PLACEHOLDER = "SEQUENCEMATCHUSERTEXT"


def _chat_frame(tokenizer: PreTrainedTokenizerBase) -> tuple[str, str] | None:
    """What the tokenizer's chat template writes before and after one user turn's text (the
    start of the assistant's reply included, a leading BOS left out); ``None`` without one."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    formatted = tokenizer.apply_chat_template(
        [{"role": "user", "content": _PLACEHOLDER}], tokenize=False, add_generation_prompt=True
    )
    bos = tokenizer.bos_token
    if bos and tokenizer.bos_token_id is not None and formatted.startswith(bos):
        formatted = formatted[len(bos) :]
    parts = formatted.split(_PLACEHOLDER)
    return (parts[0], parts[1]) if len(parts) == 2 else None


def with_bos(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> list[int]:
    """``ids`` after the tokenizer's BOS token (if it has one); refuses an empty result."""
    ids = [int(token) for token in ids]
    if tokenizer.bos_token_id is not None:
        ids = [int(tokenizer.bos_token_id), *ids]
    if not ids:
        raise ValueError("the prompt encodes to no tokens and the tokenizer has no BOS token")
    return ids


def make_example(
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Sequence[int],
    completion_ids: Sequence[int],
    *,
    final: bool = True,
    max_completion_tokens: int | None = None,
) -> Example:
    """An :class:`Example` from token ids (the prompt without BOS, the completion without
    ``<eos>``).

    ``final``: the completion reaches a real end, so ``<eos>`` follows it. A completion longer
    than ``max_completion_tokens`` (``<eos>`` included) is cut to that many tokens and has no
    ``<eos>``: a cut row is not terminal.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token first")
    if max_completion_tokens is not None and max_completion_tokens < 1:
        raise ValueError(f"max_completion_tokens must be at least 1, got {max_completion_tokens}")
    completion = [int(token) for token in completion_ids]
    if final:
        completion.append(int(tokenizer.eos_token_id))
    if max_completion_tokens is not None and len(completion) > max_completion_tokens:
        completion = completion[:max_completion_tokens]
    return Example(with_bos(tokenizer, prompt_ids), completion)


def encode_example(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    completion: str,
    *,
    final: bool = True,
    max_completion_tokens: int | None = None,
) -> Example:
    """Tokenise one pair; the completion ends with ``<eos>`` when ``final`` (see
    :func:`make_example` for the cut at ``max_completion_tokens``)."""
    completion_ids = encode_text(tokenizer, completion)
    prompt_ids = encode_text(tokenizer, prompt)
    return make_example(
        tokenizer, prompt_ids, completion_ids, final=final,
        max_completion_tokens=max_completion_tokens,
    )  # fmt: skip


def longest_completion(examples: Sequence[Example]) -> int:
    """Tokens of the longest completion (``<eos>`` included): how far a model sample of the
    same data needs to go."""
    if not examples:
        raise ValueError("no examples: the longest completion is undefined")
    return max(len(example.completion) for example in examples)


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


def check_prompt_lengths(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    limit: int | None,
    sample_length: int,
    what: str,
) -> None:
    """Refuse held-out prompts that, with ``sample_length`` generated tokens, exceed the
    model's ``limit`` positions: checked before training or evaluation starts, not found
    out by a crash at the end. ``what`` names the data in the message."""
    if limit is None:
        return
    for number, prompt in enumerate(prompts, start=1):
        length = len(encode_prompt(tokenizer, prompt))
        if length + sample_length > limit:
            raise ValueError(
                f"{what}: prompt {number} has {length} tokens; with {sample_length} generated "
                f"tokens that is more than the model's {limit} positions: shorten it, lower "
                "max_new_tokens, or use a model with more positions"
            )
