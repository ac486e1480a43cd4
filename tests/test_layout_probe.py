"""The layout probe: decisive on models with large float32 noise, still strict on wrong models.

A float32 model with massive activations can carry rounding noise in its logits far above
any fixed relative tolerance while following the layout exactly; the probe must accept it
and still refuse a model that ignores the 4-D mask or rebuilds its own position ids.
"""

from __future__ import annotations

import pytest
import torch
from conftest import ALPHABET, make_model

from sequencematch.core.forward import (
    _probe_logits,
    state_logits,
    verify_head_once,
    verify_layout_once,
)
from sequencematch.core.probe import layout_probe_verdict
from sequencematch.models.backspace import add_backspace
from sequencematch.models.presets import char_tokenizer, tiny_model

REFUSAL = "does not follow a custom 4-D attention mask"

# preset, attention: configurations whose float32 probe noise is far above 1e-4 * max|logit|
NOISY = [(preset, attn) for preset in ("tiny_llama", "tiny_gpt2") for attn in ("sdpa", "eager")]


@torch.no_grad()
def _massive_values(model: torch.nn.Module, value: float, logit_scale: float) -> None:
    """Give every attention layer a value bias of ``value`` that its output bias cancels.

    The function is unchanged in exact arithmetic, but every rounding of the attention
    weights is multiplied by ``value`` (the "massive activations" of large pretrained
    models); queries and keys are scaled up so attention is sharp and positions matter, and
    the final norm so the logits are in the hundreds.
    """
    config = model.config
    if config.model_type == "gpt2":
        width = config.n_embd
        for block in model.transformer.h:
            block.attn.c_attn.weight[:, : 2 * width] *= 8.0  # queries and keys
            block.attn.c_attn.bias[2 * width] += value  # value head 0, dim 0
            shift = torch.zeros(width)
            shift[0] = value
            block.attn.c_proj.bias -= shift @ block.attn.c_proj.weight  # Conv1D: x @ W + b
        model.transformer.ln_f.weight.mul_(logit_scale)
        return
    head_dim = config.hidden_size // config.num_attention_heads
    group = config.num_attention_heads // config.num_key_value_heads
    for layer in model.model.layers:
        layer.self_attn.q_proj.weight.mul_(8.0)
        layer.self_attn.k_proj.weight.mul_(8.0)
        layer.self_attn.v_proj.bias[0] += value  # key-value head 0, dim 0
        shift = torch.zeros(config.hidden_size)
        shift[[head * head_dim for head in range(group)]] = value  # the heads reading it
        layer.self_attn.o_proj.bias -= layer.self_attn.o_proj.weight @ shift
    model.model.norm.weight.mul_(logit_scale)


def noisy_model(preset: str, attn: str, seed: int = 0):
    """A float32 tiny model with <bkspc>, logits in the hundreds and large rounding noise."""
    torch.manual_seed(seed)
    tokenizer = char_tokenizer(ALPHABET)
    extra = {"attention_bias": True} if preset == "tiny_llama" else {}
    model = tiny_model(preset, tokenizer, attn_implementation=attn, **extra).float().eval()
    bkspc_id = add_backspace(model, tokenizer)
    _massive_values(model, value=1e5, logit_scale=300.0)
    return model, bkspc_id


def _ignore_mask(model: torch.nn.Module) -> None:
    original_forward = model.forward

    def forward_ignoring_mask(*args, attention_mask=None, **kwargs):
        return original_forward(*args, **kwargs)

    model.forward = forward_ignoring_mask


def _rebuild_positions(model: torch.nn.Module) -> None:
    original_forward = model.forward

    def forward_dropping_positions(*args, position_ids=None, **kwargs):
        return original_forward(*args, **kwargs)

    model.forward = forward_dropping_positions


@pytest.mark.parametrize(("preset", "attn"), NOISY)
def test_noisy_float32_model_defeats_a_fixed_relative_tolerance(preset, attn):
    model, _ = noisy_model(preset, attn)
    with torch.no_grad():
        probe = _probe_logits(model)
    correct = probe["correct"]
    assert correct.abs().max() > 100  # logits in the hundreds
    error = (probe["layout"] - correct).abs().max()
    assert error > 1e-4 * (1 + correct.abs().max())  # rounding noise a fixed bound refuses
    assert error <= 2 * (probe["correct_again"] - correct).abs().max()  # and it is rounding


@pytest.mark.parametrize(("preset", "attn"), NOISY)
def test_probe_accepts_a_noisy_float32_model_that_follows_the_layout(preset, attn):
    model, bk = noisy_model(preset, attn)
    verify_layout_once(model)
    logits = state_logits(model, torch.tensor([[4, 5, 6, bk, 7]]), [2], [5], bkspc_id=bk)
    assert logits.shape[:2] == (1, 5)


@pytest.mark.parametrize(("preset", "attn"), NOISY)
def test_probe_refuses_a_noisy_model_that_ignores_the_mask(preset, attn):
    model, _ = noisy_model(preset, attn)
    _ignore_mask(model)
    with pytest.raises(ValueError, match=REFUSAL):
        verify_layout_once(model)


@pytest.mark.parametrize(("preset", "attn"), NOISY)
def test_probe_refuses_a_noisy_model_that_rebuilds_its_positions(preset, attn):
    model, _ = noisy_model(preset, attn)
    _rebuild_positions(model)
    with pytest.raises(ValueError, match=REFUSAL):
        verify_layout_once(model)


@pytest.mark.parametrize("preset", ["tiny_gpt2", "tiny_llama"])
def test_probe_refuses_a_model_that_rebuilds_its_positions(preset):
    model, _, bk = make_model(preset, dtype=torch.float32, seed=1)
    _rebuild_positions(model)
    with pytest.raises(ValueError, match=REFUSAL):
        state_logits(model, torch.tensor([[4, 5, 6, bk]]), [2], [4], bkspc_id=bk)


@pytest.mark.parametrize(("preset", "attn"), NOISY)
def test_head_check_accepts_a_noisy_float32_model(preset, attn):
    model, _ = noisy_model(preset, attn)
    verify_head_once(model)


def test_verdict_accepts_noise_far_below_the_wrong_answers():
    torch.manual_seed(0)
    correct = 30 * torch.randn(8, 50)
    wrong = correct + torch.randn(8, 50)  # an answer one unit away
    verdict = layout_probe_verdict(
        layout=correct + 0.01 * torch.randn(8, 50),  # noise 100x smaller than that
        correct=correct,
        correct_again=correct.clone(),  # no measurable noise floor
        wrong={"mask ignored": wrong, "positions rebuilt": wrong.flip(0)},
    )
    assert verdict.accepted and verdict.error < verdict.tolerance


def test_verdict_refuses_an_answer_equal_to_a_wrong_one():
    torch.manual_seed(0)
    correct = torch.randn(8, 50)
    noise = 1e-3 * torch.randn(8, 50)
    wrong = correct + torch.randn(8, 50)
    for name in ("mask ignored", "positions rebuilt"):
        wrongs = {"mask ignored": wrong, "positions rebuilt": correct - torch.randn(8, 50)}
        verdict = layout_probe_verdict(wrongs[name], correct, correct + noise, wrongs)
        assert not verdict.accepted, name


def test_verdict_tolerates_a_wrong_answer_that_differs_only_by_noise():
    torch.manual_seed(0)
    correct = torch.randn(8, 50)
    noise = 1e-3 * torch.randn(8, 50)
    wrongs = {"mask ignored": correct + torch.randn(8, 50), "positions rebuilt": correct - noise}
    verdict = layout_probe_verdict(correct + noise, correct, correct + noise, wrongs)
    assert verdict.accepted  # positions that matter no more than rounding are harmless


def test_verdict_never_accepts_the_mask_ignoring_answer_however_noisy():
    torch.manual_seed(0)
    correct = torch.randn(8, 50)
    wrong = correct + torch.randn(8, 50)
    very_noisy = correct + 10 * torch.randn(8, 50)  # noise floor above the mask's effect
    verdict = layout_probe_verdict(wrong, correct, very_noisy, {"mask ignored": wrong})
    assert not verdict.accepted
