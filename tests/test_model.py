"""Model helpers: <bkspc> added and persisted, tiny presets, the character tokenizer."""

from __future__ import annotations

import pytest
import torch
from conftest import ALPHABET, make_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from sequencematch.core.causal_lm import BKSPC_TOKEN, backspace_id, check_backspace_support
from sequencematch.models.backspace import add_backspace
from sequencematch.models.presets import char_tokenizer, tiny_model


def test_char_tokenizer_round_trip_and_specials():
    tokenizer = char_tokenizer(ALPHABET)
    text = "In base 7, what is -135 - 5? = -143".replace("I", "").replace("w", "")
    text = "".join(c for c in text if c in ALPHABET)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.pad_token_id == 0 and tokenizer.eos_token_id == 2


@pytest.mark.parametrize("preset", ["tiny_gpt2", "tiny_llama"])
def test_add_backspace_initialises_to_the_mean_row(preset):
    torch.manual_seed(0)
    tokenizer = char_tokenizer(ALPHABET)
    model = tiny_model(preset, tokenizer)
    before = model.get_input_embeddings().weight.detach().clone()
    bk = add_backspace(model, tokenizer)
    weights = model.get_input_embeddings().weight
    assert bk == before.shape[0] == len(tokenizer) - 1
    assert tokenizer.convert_ids_to_tokens(bk) == BKSPC_TOKEN
    assert torch.allclose(weights[bk], before.mean(dim=0))
    assert torch.equal(weights[:bk], before)
    assert model.get_output_embeddings().weight.shape[0] == bk + 1
    assert backspace_id(model) == bk


def test_add_backspace_untied_head_gets_the_mean_output_row():
    torch.manual_seed(0)
    tokenizer = char_tokenizer(ALPHABET)
    model = tiny_model("tiny_llama", tokenizer, tie_word_embeddings=False)
    head_before = model.get_output_embeddings().weight.detach().clone()
    bk = add_backspace(model, tokenizer)
    assert torch.allclose(model.get_output_embeddings().weight[bk], head_before.mean(dim=0))


def test_add_backspace_is_idempotent_and_survives_save_and_load(tmp_path):
    model, tokenizer, bk = make_model("tiny_llama", dtype=torch.float32)
    assert add_backspace(model, tokenizer) == bk
    assert model.get_input_embeddings().weight.shape[0] == bk + 1
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    loaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert backspace_id(loaded) == bk
    assert loaded_tokenizer.convert_tokens_to_ids(BKSPC_TOKEN) == bk
    assert add_backspace(loaded, loaded_tokenizer) == bk
    assert loaded_tokenizer.decode([5, 6]) == tokenizer.decode([5, 6])
    assert torch.equal(loaded.get_input_embeddings().weight, model.get_input_embeddings().weight)


def test_flash_attention_is_refused_with_a_fix():
    model, tokenizer, _ = make_model("tiny_gpt2", dtype=torch.float32)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="GPT2LMHeadModel.*attn_implementation='sdpa'"):
        check_backspace_support(model)
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        add_backspace(model, tokenizer)


def test_model_that_ignores_the_mask_is_caught_by_the_probe():
    from sequencematch.core.forward import state_logits

    model, _, bk = make_model("tiny_gpt2", dtype=torch.float32, seed=1)
    original_forward = model.forward

    def forward_ignoring_mask(*args, attention_mask=None, **kwargs):
        return original_forward(*args, **kwargs)

    model.forward = forward_ignoring_mask
    with pytest.raises(ValueError, match="does not follow a custom 4-D attention mask"):
        state_logits(model, torch.tensor([[4, 5, 6, bk]]), [2], [4], bkspc_id=bk)


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="tiny_gpt2"):
        tiny_model("tiny_bert", char_tokenizer(ALPHABET))
