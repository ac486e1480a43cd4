"""Models and tokenizers: the ``<bkspc>`` action, tiny presets, a character tokenizer.

Any Hugging Face causal LM whose attention takes an arbitrary 4-D mask and explicit
``position_ids`` (eager or SDPA attention) can be used; :func:`check_backspace_support`
refuses the others with a message that says what to change.
"""

from __future__ import annotations

import inspect

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)
from transformers.tokenization_utils_base import AddedToken

BKSPC_TOKEN = "<bkspc>"
SUPPORTED_ATTENTION = ("sdpa", "eager")
_SPECIAL_CHAR_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")


def add_backspace(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """Add the ``<bkspc>`` special token to ``tokenizer`` and ``model``; return its id.

    Reuses the token when the tokenizer already has it. A new embedding row (and output
    row, when the head is not tied) is set to the mean of the existing rows, so that the
    new action starts as an average token rather than random noise. The id is recorded
    as ``model.config.bkspc_token_id`` and survives ``save_pretrained``/``from_pretrained``.
    """
    check_backspace_support(model)
    existing = tokenizer.convert_tokens_to_ids(BKSPC_TOKEN)
    if existing is not None and existing != tokenizer.unk_token_id:
        bkspc_id = int(existing)
        _ensure_rows(model, bkspc_id + 1)
        model.config.bkspc_token_id = bkspc_id
        return bkspc_id
    tokenizer.add_tokens([AddedToken(BKSPC_TOKEN, special=True, normalized=False)], True)
    bkspc_id = int(tokenizer.convert_tokens_to_ids(BKSPC_TOKEN))
    old_rows = _ensure_rows(model, bkspc_id + 1)
    _set_mean_row(model, bkspc_id, old_rows)
    model.config.bkspc_token_id = bkspc_id
    return bkspc_id


def backspace_id(model: PreTrainedModel) -> int | None:
    """The ``<bkspc>`` id recorded by :func:`add_backspace`, or ``None``."""
    value = getattr(model.config, "bkspc_token_id", None)
    return None if value is None else int(value)


def _ensure_rows(model: PreTrainedModel, rows: int) -> int:
    """Grow the embeddings to at least ``rows`` rows; return the number of rows before."""
    old_rows = model.get_input_embeddings().weight.shape[0]
    if rows > old_rows:
        model.resize_token_embeddings(rows, mean_resizing=False)
    return old_rows


@torch.no_grad()
def _set_mean_row(model: PreTrainedModel, row: int, old_rows: int) -> None:
    """Set ``row`` of the input (and untied output) embeddings to the mean of the old rows."""
    reference = min(row, old_rows)  # rows of the tokens that existed before <bkspc>
    inputs = model.get_input_embeddings().weight
    inputs[row] = inputs[:reference].mean(dim=0)
    outputs = model.get_output_embeddings()
    if outputs is None:
        return
    if outputs.weight.data_ptr() != inputs.data_ptr():
        outputs.weight[row] = outputs.weight[:reference].mean(dim=0)
    bias = getattr(outputs, "bias", None)
    if bias is not None:
        bias[row] = bias[:reference].mean()


def check_backspace_support(model: PreTrainedModel) -> None:
    """Refuse models whose attention cannot follow an arbitrary 4-D mask with position ids."""
    name = type(model).__name__
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"{name} is not a Hugging Face PreTrainedModel causal LM")
    implementation = getattr(model.config, "_attn_implementation", None) or "eager"
    if implementation not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"{name} uses attn_implementation={implementation!r}, which ignores arbitrary "
            "attention masks; <bkspc> needs a per-row 4-D mask. Load the model with "
            "attn_implementation='sdpa' (or 'eager'), e.g. "
            f"{name}.from_pretrained(path, attn_implementation='sdpa')"
        )
    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError(f"{name} is an encoder-decoder model; <bkspc> needs a causal LM")
    parameters = inspect.signature(model.forward).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    named = "position_ids" in parameters and "attention_mask" in parameters
    if not (named or takes_any):
        raise ValueError(
            f"{name}.forward takes no position_ids or attention_mask, so it cannot run the "
            "one-pass backspace layout; use a causal LM that accepts both "
            "(GPT-2, Llama, Qwen2, ...)"
        )


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


def tiny_model(
    preset: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    attn_implementation: str = "sdpa",
    **overrides: int | float,
) -> PreTrainedModel:
    """A small randomly initialised causal LM for ``tokenizer``.

    ``preset`` is ``"tiny_gpt2"`` or ``"tiny_llama"``; ``overrides`` replace config fields
    (e.g. ``hidden_size=128``, ``num_hidden_layers=4``).
    """
    vocab_size = len(tokenizer)
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if preset == "tiny_gpt2":
        fields = dict(n_embd=64, n_layer=2, n_head=4, n_positions=512, vocab_size=vocab_size,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
        aliases = {"hidden_size": "n_embd", "num_hidden_layers": "n_layer"}
        aliases |= {"num_attention_heads": "n_head", "max_position_embeddings": "n_positions"}
        fields |= {aliases.get(key, key): value for key, value in overrides.items()}
        config = GPT2Config(**fields, **special)
        config._attn_implementation = attn_implementation
        return GPT2LMHeadModel(config)
    if preset == "tiny_llama":
        fields = dict(
            hidden_size=64,
            intermediate_size=172,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            vocab_size=vocab_size,
            tie_word_embeddings=True,
        )
        fields |= overrides
        config = LlamaConfig(**fields, **special)
        config._attn_implementation = attn_implementation
        return LlamaForCausalLM(config)
    raise ValueError(f"unknown preset {preset!r}; choose 'tiny_gpt2' or 'tiny_llama'")
