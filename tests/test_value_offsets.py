"""How SequenceMatch reads logits as Q (docs/method.md): ``Q = logits``, ``Q = logits + b(s)``
or ``Q = log-softmax(logits) + b(s)``. The policy and the MLE identity must not depend on the
reading; the value terms must."""

from __future__ import annotations

import pytest
import torch
from conftest import sm_loss
from test_objectives import BK, DATA_ROWS, EOS, MODEL_ROWS, make_batch, num, random_logits

from sequencematch.core.chunked_logits import ChunkedLogits
from sequencematch.core.objectives import mle_loss
from sequencematch.core.transitions import transitions

READINGS = [(False, True), (True, False), (True, True)]  # (offsets given, normalise)


def random_offsets(batch, seed: int, scale: float = 5.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = batch.sequences.shape
    return (scale * torch.randn(shape, generator=generator, dtype=torch.float64)).requires_grad_()


@pytest.mark.parametrize(("with_offsets", "normalise"), READINGS)
def test_every_reading_keeps_the_log_likelihood_identity(with_offsets, normalise):
    batch = make_batch(DATA_ROWS)
    logits = random_logits(batch, seed=11)
    offsets = random_offsets(batch, seed=12) if with_offsets else None
    gamma = 0.97
    plain = transitions(logits, batch, BK, EOS)
    read = transitions(logits, batch, BK, EOS, offsets=offsets, normalise=normalise)
    expected = -plain.reward(gamma) + plain.value_difference(gamma)  # -log pi, [B, T]
    identity = -read.reward(gamma) + read.value_difference(gamma)
    mask = plain.mask
    assert torch.allclose(identity[mask], expected[mask], atol=1e-12)
    # ... while the rewards themselves do change
    assert not torch.allclose(read.reward(gamma)[mask], plain.reward(gamma)[mask], atol=1e-3)


def test_normalised_q_is_log_pi_plus_offset_and_v_is_the_offset():
    batch = make_batch(DATA_ROWS)
    logits = random_logits(batch, seed=13)
    offsets = random_offsets(batch, seed=14)
    plain = transitions(logits, batch, BK, EOS)
    read = transitions(logits, batch, BK, EOS, offsets=offsets, normalise=True)
    action = plain.action
    # V(s) of the action at t is b(state after t-1); Q(s, a) = log pi(a|s) + b(s)
    assert torch.allclose(read.v[:, 1:][action[:, 1:]], offsets[:, :-1][action[:, 1:]].detach())
    log_pi = plain.q - plain.v
    assert torch.allclose((read.q - read.v)[action], log_pi[action], atol=1e-12)


@pytest.mark.parametrize(("with_offsets", "normalise"), READINGS)
def test_data_only_objective_with_huge_alpha_is_mle_whatever_the_reading(with_offsets, normalise):
    data = make_batch(DATA_ROWS)
    logits = random_logits(data, seed=15)
    offsets = (random_offsets(data, seed=16), None) if with_offsets else None
    terms = sm_loss(logits, data, None, None, BK, EOS, gamma=0.998, alpha=1e12,
                    beta=1.0, offsets=offsets, normalise=normalise)  # fmt: skip
    nll = mle_loss(logits, data, BK, gamma=0.998)
    assert num(terms.loss) == pytest.approx(num(nll), abs=1e-9)
    (g_sm,) = torch.autograd.grad(terms.loss, logits, retain_graph=True)
    (g_mle,) = torch.autograd.grad(nll, logits)
    assert torch.allclose(g_sm, g_mle, atol=1e-9)
    if with_offsets:  # b cancels: no gradient reaches it through the likelihood
        (g_b,) = torch.autograd.grad(terms.loss, offsets[0])
        assert g_b.abs().max() < 1e-9


def test_offsets_absorb_the_value_terms_that_would_move_the_logits():
    """With model rows, the value term and regulariser reach b (and, normalised, the value
    term reaches only b: no logit gradient from V)."""
    data, model = make_batch(DATA_ROWS), make_batch(MODEL_ROWS)
    logits, model_logits = random_logits(data, seed=17), random_logits(model, seed=18)
    offsets = (random_offsets(data, seed=19), random_offsets(model, seed=20))
    terms = sm_loss(logits, data, model_logits, model, BK, EOS, alpha=1.0,
                    offsets=offsets, normalise=True)  # fmt: skip
    g_data, g_model = torch.autograd.grad(terms.value, offsets)
    assert g_data.abs().max() > 1e-3 and g_model.abs().max() > 1e-3
    value_logit_grad = torch.autograd.grad(terms.value, [logits, model_logits], allow_unused=True)
    assert all(g is None or g.abs().max() < 1e-12 for g in value_logit_grad)


@pytest.mark.parametrize("normalise", [False, True])
def test_a_constant_offset_cancels_along_every_row_at_gamma_one(normalise):
    """``b(s) = c`` everywhere shifts Q and V alike: at ``gamma = 1`` the level cancels in
    every reward and value difference, at ``<eos>`` too through the learned terminal value
    ``V(s_T) = b(s_T)`` (docs/method.md); without that terminal value, or at ``gamma < 1``,
    it does not."""
    data, model = make_batch(DATA_ROWS), make_batch(MODEL_ROWS)
    logits, model_logits = random_logits(data, seed=21), random_logits(model, seed=22)
    constant = (torch.full(data.sequences.shape, 3.0, dtype=torch.float64),
                torch.full(model.sequences.shape, 3.0, dtype=torch.float64))  # fmt: skip

    def terms(offsets, **changes) -> list[float]:
        result = sm_loss(logits, data, model_logits, model, BK, EOS,
                         offsets=offsets, normalise=normalise, **changes)  # fmt: skip
        return [num(result.loss), num(result.value), num(result.regulariser)]

    assert terms(constant, gamma=1.0) == pytest.approx(terms(None, gamma=1.0), rel=1e-12)
    assert terms(constant, gamma=0.9)[0] != pytest.approx(terms(None, gamma=0.9)[0], rel=1e-3)
    plain_terminal = dict(gamma=1.0, learned_terminal=False)
    assert terms(constant, **plain_terminal)[0] != pytest.approx(
        terms(None, **plain_terminal)[0], rel=1e-3
    )


def test_offsets_of_the_wrong_shape_are_refused():
    batch = make_batch(DATA_ROWS)
    logits = random_logits(batch, seed=23)
    with pytest.raises(ValueError, match="one value per state"):
        transitions(logits, batch, BK, EOS, offsets=torch.zeros(2, 3, dtype=torch.float64))


def test_chunked_logits_read_the_same_q():
    torch.manual_seed(0)
    batch = make_batch(DATA_ROWS)
    hidden = torch.randn(*batch.sequences.shape, 8, dtype=torch.float64)
    head = torch.nn.Linear(8, 5, bias=False).double()
    offsets = random_offsets(batch, seed=24)
    dense = transitions(head(hidden), batch, BK, EOS, offsets=offsets, normalise=True)
    chunked = transitions(ChunkedLogits(hidden, head, chunk_tokens=3), batch, BK, EOS,
                          offsets=offsets, normalise=True)  # fmt: skip
    assert torch.allclose(dense.reward(0.99)[dense.mask], chunked.reward(0.99)[dense.mask])
