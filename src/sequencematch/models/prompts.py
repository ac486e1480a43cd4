"""Prompt text for instruct models: raw text, or the model's own chat template."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


def format_prompt(
    tokenizer: PreTrainedTokenizerBase, text: str, chat_template: bool = False
) -> str:
    """The prompt string to encode for ``text``.

    Raw text (the default) is returned unchanged. With ``chat_template``, ``text`` becomes one
    user turn of the tokenizer's chat template, followed by the start of the assistant's
    reply. The template's leading BOS token, if it writes one, is left out: prompt encoding
    (:func:`~sequencematch.core.examples.encode_prompt`) puts it back, so the encoded prompt
    is exactly the template's token sequence.
    """
    if not chat_template:
        return text
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"{type(tokenizer).__name__} has no chat template; use raw prompts "
            "(chat_template=False) or a tokenizer saved with its chat template"
        )
    formatted = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    bos = tokenizer.bos_token
    if bos and tokenizer.bos_token_id is not None and formatted.startswith(bos):
        formatted = formatted[len(bos) :]
    return formatted
