"""LoRA through peft: which weights train, the exactness contract through the wrapper,
sampling through it, and the merged + adapter save/load round trip."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import boost_logit, make_model
from peft import PeftModel
from test_layout import TOLERANCE, check_contract
from test_sampling import recomputed_logprobs
from transformers import AutoModelForCausalLM, AutoTokenizer

from sequencematch.core.causal_lm import (
    BKSPC_TOKEN,
    backspace_id,
    causal_lm,
    check_backspace_support,
)
from sequencematch.core.sampling import generate
from sequencematch.models.backspace import add_backspace
from sequencematch.models.lora import (
    ADAPTER_FOLDER,
    apply_lora,
    block_linear_names,
    load_adapter,
    merge_and_save,
)
from sequencematch.models.presets import char_tokenizer, tiny_model

ALPHABET = "0123456789abcdef -+=?,"


def lora_model(preset="tiny_llama", dtype=torch.float64, seed=0, **overrides):
    """A tiny model with <bkspc>, wrapped in LoRA whose adapters are perturbed away from zero
    (peft starts B at zero, which would make the wrapper an identity)."""
    torch.manual_seed(seed)
    tokenizer = char_tokenizer(ALPHABET)
    base = tiny_model(preset, tokenizer, **overrides).to(dtype)
    bk = add_backspace(base, tokenizer)
    model = apply_lora(base, r=4, alpha=8.0, dropout=0.0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name or "trainable_tokens_delta" in name:
                parameter.normal_(0.0, 0.05)
    return model.eval(), tokenizer, bk


def effective_rows(model):
    """The input embedding and output head rows the wrapped model computes with: ``[V, H]``."""
    core = causal_lm(model)
    vocab, hidden = core.config.vocab_size, core.config.hidden_size
    with torch.no_grad():
        inputs = core.get_input_embeddings()(torch.arange(vocab)[None])[0]
        eye = torch.eye(hidden, dtype=inputs.dtype)[None]
        outputs = core.get_output_embeddings()(eye)[0].T
    return inputs.clone(), outputs.clone()


def one_step(model, bk, seed=0):
    """One AdamW step on a next-token loss over rows that contain <bkspc>."""
    torch.manual_seed(seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.0)
    ids = torch.randint(4, bk, (3, 12))
    ids[:, 6] = bk
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimiser.step()
    optimiser.zero_grad()
    model.eval()


def test_default_targets_are_the_linear_layers_of_the_blocks():
    tokenizer = char_tokenizer(ALPHABET)
    llama = tiny_model("tiny_llama", tokenizer)
    gpt2 = tiny_model("tiny_gpt2", tokenizer)
    assert block_linear_names(llama) == [
        "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj",
    ]  # fmt: skip
    assert block_linear_names(gpt2) == ["c_attn", "c_fc", "c_proj"]
    untied = tiny_model("tiny_llama", tokenizer, tie_word_embeddings=False)
    assert "lm_head" not in block_linear_names(untied)


@pytest.mark.parametrize(
    ("preset", "overrides"),
    [("tiny_llama", {}), ("tiny_llama", {"tie_word_embeddings": False}), ("tiny_gpt2", {})],
    ids=["llama-tied", "llama-untied", "gpt2"],
)
def test_only_adapters_and_the_bkspc_row_train(preset, overrides):
    torch.manual_seed(0)
    tokenizer = char_tokenizer(ALPHABET)
    base = tiny_model(preset, tokenizer, **overrides).double()
    bk = add_backspace(base, tokenizer)
    frozen = {name: p.detach().clone() for name, p in base.named_parameters()}
    model = apply_lora(base, r=4, alpha=8.0, dropout=0.0)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "trainable_tokens_delta" in n for n in trainable)
    inputs_before, outputs_before = effective_rows(model)
    for step in range(2):  # the second step moves the LoRA A matrices too (B left zero)
        one_step(model, bk, seed=step)
    inputs_after, outputs_after = effective_rows(model)
    changed_inputs = (inputs_after != inputs_before).any(dim=1).nonzero()[:, 0].tolist()
    changed_outputs = (outputs_after != outputs_before).any(dim=1).nonzero()[:, 0].tolist()
    assert changed_inputs == [bk]
    assert changed_outputs == [bk]
    merged = model.merge_and_unload()  # every base weight outside the row is unchanged
    for name, parameter in merged.named_parameters():
        if "wte" in name or "embed_tokens" in name or "lm_head" in name:
            assert torch.equal(parameter[:bk], frozen[name][:bk]), name
            assert not torch.equal(parameter[bk], frozen[name][bk]), name


def test_contract_holds_through_lora_in_float64():
    model, _, bk = lora_model()
    core = causal_lm(model)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad(), model.disable_adapter():
        plain = model(input_ids=ids).logits
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
    assert (adapted - plain).abs().max() > 1e-3  # the adapters change the model
    assert not isinstance(core, PeftModel)
    rows = [
        ([5], [9, bk, 9, bk, 10, 11, bk, bk, 12]),
        ([5, 6, 7, 8, 9, 10], [11, 12, 13, bk, bk, bk, 14]),
        ([4, 4], []),
        ([6, 7], [8, bk, 8, bk, 8, bk]),
        ([bk - 1, 4, 5], [bk - 2, 6, bk, 7, 8, bk, bk, bk, 9, 10]),
    ]
    assert check_contract(model, bk, rows) <= TOLERANCE


def test_generate_through_lora_matches_state_logits():
    model, tokenizer, bk = lora_model(dtype=torch.float32, seed=1)
    handle = boost_logit(model, bk, 3.0)  # make backspaces frequent
    try:
        out = generate(
            model, [[5, 6, 7], [8], [9, 10, 11, 12]], bkspc_id=bk, max_new_tokens=10,
            eos_token_id=tokenizer.eos_token_id, generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        expected = recomputed_logprobs(model, out, bk)
    finally:
        handle.remove()
    assert sum(actions.count(bk) for actions in out.actions) >= 3
    for got, want in zip(out.logprobs, expected, strict=True):
        assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-5)


def test_backspace_support_looks_through_the_wrapper():
    model, _, bk = lora_model(dtype=torch.float32)
    check_backspace_support(model)
    assert backspace_id(model) == bk
    causal_lm(model).config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="LlamaForCausalLM.*attn_implementation='sdpa'"):
        check_backspace_support(model)


def test_merged_folder_and_adapter_round_trip(tmp_path):
    model, tokenizer, bk = lora_model(seed=2)
    one_step(model, bk)
    ids = torch.tensor([[5, 6, bk - 1, 7, bk, 8, 9]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits

    folder = merge_and_save(model, tokenizer, tmp_path / "model")

    assert isinstance(model, PeftModel)  # the trained model is left as it was
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, expected)
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64)
    loaded_tokenizer = AutoTokenizer.from_pretrained(folder)
    assert backspace_id(merged) == bk
    assert loaded_tokenizer.convert_tokens_to_ids(BKSPC_TOKEN) == bk
    with torch.no_grad():
        assert (merged(input_ids=ids).logits - expected).abs().max() <= 1e-10

    base, _, _ = make_model("tiny_llama", dtype=torch.float64, seed=2)  # same base, same row
    restored = load_adapter(base, folder / ADAPTER_FOLDER)
    with torch.no_grad():
        assert (restored.eval()(input_ids=ids).logits - expected).abs().max() <= 1e-10
    assert not any(p.requires_grad for p in restored.parameters())
    assert load_adapter(make_model("tiny_llama", seed=2)[0], folder / ADAPTER_FOLDER,
                        trainable=True).get_nb_trainable_parameters()[0] > 0  # fmt: skip


def test_plain_model_is_saved_as_it_is(tmp_path):
    model, tokenizer, bk = make_model("tiny_gpt2", dtype=torch.float32)
    merge_and_save(model, tokenizer, tmp_path)
    assert backspace_id(AutoModelForCausalLM.from_pretrained(tmp_path)) == bk
    assert not (tmp_path / ADAPTER_FOLDER).exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"r": 0}, "r >= 1"), ({"alpha": 0.0}, "alpha > 0"), ({"dropout": 1.0}, "dropout < 1")],
)
def test_bad_lora_settings_are_refused(kwargs, message):
    model, _, _ = make_model("tiny_llama", dtype=torch.float32)
    with pytest.raises(ValueError, match=message):
        apply_lora(model, **kwargs)


def test_lora_needs_the_bkspc_row_first_and_a_base_model():
    torch.manual_seed(0)
    tokenizer = char_tokenizer(ALPHABET)
    with pytest.raises(ValueError, match="add_backspace"):
        apply_lora(tiny_model("tiny_llama", tokenizer))
    model, _, _ = lora_model(dtype=torch.float32)
    with pytest.raises(ValueError, match="already has adapters"):
        apply_lora(model)
    with pytest.raises(ValueError, match="no LoRA adapter"):
        load_adapter(make_model("tiny_llama")[0], "/nonexistent")


def test_qlora_trains_on_a_four_bit_base_and_merges_into_float_weights(tmp_path):
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (the qlora extra)")
    from bitsandbytes.nn import Linear4bit

    from sequencematch.models.loading import load_model

    torch.manual_seed(0)
    tokenizer = char_tokenizer(ALPHABET)
    # bitsandbytes' CPU kernel packs output rows in blocks of 32
    tiny_model("tiny_llama", tokenizer, intermediate_size=128).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    base, tokenizer = load_model(tmp_path / "base", load_in_4bit=True)
    assert isinstance(base.model.layers[0].mlp.up_proj, Linear4bit)
    bk = add_backspace(base, tokenizer)
    model = apply_lora(base, r=4, alpha=8.0, dropout=0.0)
    one_step(model, bk)
    one_step(model, bk, seed=1)
    rows = [([5, 6], [7, bk, 8, 9, bk, bk, 10]), ([4], [9, 9, bk, 9])]
    assert check_contract(model, bk, rows) <= 1e-4  # float32 compute on 4-bit weights

    folder = merge_and_save(model, tokenizer, tmp_path / "merged")
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["bkspc_token_id"] == bk
    merged, _ = load_model(folder)
    assert not any(isinstance(m, Linear4bit) for m in merged.modules())
    ids = torch.tensor([[5, 6, 7, bk, 8, 9]])
    with torch.no_grad():
        difference = merged(input_ids=ids).logits - model.eval()(input_ids=ids).logits
    assert difference.abs().max().item() <= 1e-4


def test_qlora_gradients_are_the_same_after_sampling(tmp_path):
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (the qlora extra)")
    from sequencematch.models.loading import load_model

    torch.manual_seed(0)
    tokenizer = char_tokenizer(ALPHABET)
    tiny_model("tiny_llama", tokenizer, intermediate_size=128).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    base, tokenizer = load_model(tmp_path, load_in_4bit=True)
    bk = add_backspace(base, tokenizer)
    model = apply_lora(base, r=4, alpha=8.0, dropout=0.0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.05)
    ids = torch.randint(4, bk, (2, 10))

    def gradients(module):
        module.train()
        module.zero_grad()
        module(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}

    fresh = copy.deepcopy(model)
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)  # a sampling-style forward: eval mode, no gradients
    after, before = gradients(model), gradients(fresh)
    assert after.keys() == before.keys()
    for name, gradient in before.items():
        assert torch.allclose(after[name], gradient, rtol=1e-4, atol=1e-7), name
