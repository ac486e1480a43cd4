"""Tiny presets: small random GPT-2 and Llama models built from configs, and a character
tokenizer, for tests and CPU-sized experiments."""

from __future__ import annotations

from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..core.tokenizers import char_tokenizer  # noqa: F401  (re-exported: the presets' tokenizer)


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
