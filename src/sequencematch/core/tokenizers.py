"""A character-level tokenizer: the tokenizer of the tiny presets on character tasks."""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

_SPECIAL_CHAR_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")


def char_tokenizer(alphabet: str) -> PreTrainedTokenizerFast:
    """A character-level ``PreTrainedTokenizerFast``: one token per character of ``alphabet``.

    Special tokens ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>`` take ids 0-3; characters follow
    in the order given. Decoding joins characters without spaces.
    """
    characters = list(dict.fromkeys(alphabet))
    vocab = {token: index for index, token in enumerate(_SPECIAL_CHAR_TOKENS)}
    for character in characters:
        vocab.setdefault(character, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )
