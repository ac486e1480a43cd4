"""Mixed precision: the transformer body in bfloat16, the logits every loss reads in float32."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model, sm_loss
from test_lora import lora_model
from test_memory import data_and_model_rows
from transformers import LlamaForCausalLM

from sequencematch.core.forward import (
    chunked_state_logits,
    precision_body_dtype,
    state_logits,
)
from sequencematch.core.objectives import mle_loss
from sequencematch.models.backspace import add_backspace
from sequencematch.models.presets import char_tokenizer, tiny_model

BF16 = torch.bfloat16


def rows_of(batch):
    return batch.sequences, batch.prompt_lengths, batch.lengths


def step_loss(network, read, data, model_rows, bk, eos):
    """The MLE + SequenceMatch loss of one step, from logits given by ``read``."""
    data_logits, model_logits = read(data), read(model_rows)
    mle = mle_loss(data_logits, data, bk, 1.0)
    terms = sm_loss(data_logits, data, model_logits, model_rows, bk, eos, gamma=0.998, alpha=1.0)
    return 0.5 * mle + 0.5 * terms.loss


def is_bfloat16_rounded(logits: torch.Tensor) -> float:
    """Fraction of entries that bfloat16 represents exactly."""
    return float((logits == logits.to(BF16).float()).float().mean())


@pytest.mark.parametrize("preset", ["tiny_gpt2", "tiny_llama"])
def test_bf16_body_gives_float32_logits_close_to_float32(preset):
    network, tokenizer, bk = make_model(preset, dtype=torch.float32)
    data, _ = data_and_model_rows(bk, tokenizer.eos_token_id)
    valid = torch.arange(data.sequences.shape[1])[None] < data.lengths[:, None]  # [B, T]
    with torch.no_grad():
        full = state_logits(network, *rows_of(data), bk)[valid]  # [N, V]
        mixed = state_logits(network, *rows_of(data), bk, body_dtype=BF16)[valid]
        with torch.autocast("cpu", dtype=BF16):  # the whole model under autocast
            autocast_all = state_logits(network, *rows_of(data), bk)[valid]
    assert mixed.dtype == torch.float32
    error = (mixed - full).abs().max().item()
    assert 0 < error < 2e-2 * full.abs().max().item()  # the body did run in bfloat16
    assert autocast_all.dtype == BF16  # what the losses would read without the option
    assert is_bfloat16_rounded(autocast_all.float()) == 1.0
    assert is_bfloat16_rounded(mixed) < 0.1  # the head ran in float32


@pytest.mark.parametrize("preset", ["tiny_gpt2", "tiny_llama", "lora"])
def test_sequencematch_loss_with_a_bf16_body_is_close_to_float32(preset):
    if preset == "lora":
        network, tokenizer, bk = lora_model("tiny_llama", dtype=torch.float32)
    else:
        network, tokenizer, bk = make_model(preset, dtype=torch.float32)
    network.train()
    eos = tokenizer.eos_token_id
    data, model_rows = data_and_model_rows(bk, eos)
    losses, gradients = {}, {}
    for name, body_dtype in (("fp32", None), ("bf16", BF16)):
        network.zero_grad()

        def read(batch, body_dtype=body_dtype):
            return chunked_state_logits(network, *rows_of(batch), bk, body_dtype=body_dtype,
                                        chunk_tokens=4)  # fmt: skip

        loss = step_loss(network, read, data, model_rows, bk, eos)
        loss.backward()
        losses[name] = loss.item()
        gradients[name] = torch.cat(
            [p.grad.flatten() for p in network.parameters() if p.grad is not None]
        )
    # Measured: 0.8e-5 to 2e-5 relative on these models (loss ~4.6).
    assert abs(losses["bf16"] - losses["fp32"]) < 2e-4 * abs(losses["fp32"])
    assert losses["bf16"] != losses["fp32"]
    cosine = torch.nn.functional.cosine_similarity(gradients["bf16"], gradients["fp32"], dim=0)
    assert cosine > 0.99


def test_head_stays_float32_inside_an_outer_autocast():
    network, tokenizer, bk = make_model("tiny_llama", dtype=torch.float32)
    data, _ = data_and_model_rows(bk, tokenizer.eos_token_id)
    valid = torch.arange(data.sequences.shape[1])[None] < data.lengths[:, None]  # [B, T]
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):  # e.g. a trainer's autocast
        logits = chunked_state_logits(network, *rows_of(data), bk, validate=True)
        dense = logits.dense()
    assert logits.dtype == dense.dtype == torch.float32
    assert is_bfloat16_rounded(dense[valid]) < 0.1


def test_model_checks_run_in_full_precision_inside_autocast():
    network, tokenizer, bk = make_model("tiny_gpt2", dtype=torch.float32, seed=3)
    data, _ = data_and_model_rows(bk, tokenizer.eos_token_id)
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        state_logits(network, *rows_of(data), bk, validate=True)  # no false alarm


class ScaledLogitsLlama(LlamaForCausalLM):
    """A model whose logits are more than its head's output (like a soft cap)."""

    def forward(self, *args, **kwargs):
        output = super().forward(*args, **kwargs)
        output.logits = 2.0 * output.logits
        return output


def test_models_whose_logits_are_not_the_head_output_are_refused():
    torch.manual_seed(0)
    tokenizer = char_tokenizer("0123456789")
    config = tiny_model("tiny_llama", tokenizer).config
    network = ScaledLogitsLlama(config)
    bk = add_backspace(network, tokenizer)
    sequences = torch.tensor([[4, 5, 6]])
    with pytest.raises(ValueError, match="not its LM head"):
        chunked_state_logits(network, sequences, [1], [3], bk, body_dtype=BF16)


@pytest.mark.parametrize("body_dtype", [torch.int64, "bf16"])
def test_bad_body_dtypes_are_refused(body_dtype):
    network, _, bk = make_model("tiny_llama", dtype=torch.float32)
    with pytest.raises(ValueError, match="body_dtype"):
        state_logits(network, torch.tensor([[4, 5]]), [1], [2], bk, body_dtype=body_dtype)


def test_precision_names():
    assert precision_body_dtype("fp32") is None
    assert precision_body_dtype("bf16") is BF16
    assert precision_body_dtype("fp16") is torch.float16
    with pytest.raises(ValueError, match="bf16"):
        precision_body_dtype("bfloat17")
