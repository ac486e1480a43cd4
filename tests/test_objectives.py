"""Tests of the MLE and SequenceMatch objectives on hand-made logits (no model)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import sm_loss, train_loss

from sequencematch.core.actions import Batch, collate
from sequencematch.core.chunked_logits import ChunkedLogits
from sequencematch.core.objectives import (
    DEFAULT_ALPHA,
    PHI,
    LossTransitions,
    ObjectiveConfig,
    SequenceMatchTerms,
    get_phi,
    loss_from_transitions,
    mle_loss,
    sequencematch_loss,
    training_loss,
    weight_total,
)
from sequencematch.core.transitions import transitions

DTYPE = torch.float64
DIVERGENCES = sorted(PHI)

# Vocabulary of the random-batch tests: three tokens, <eos> and <bkspc>.
EOS, BK, VOCAB = 3, 4, 5

DATA_ROWS = [
    # (prompt, actions, expert)
    ([0, 1], [2, BK, 1, 0, EOS], [False, True, True, True, True]),  # noise first, then undone
    ([1], [0, 0, BK, BK, 2], [True] * 5),  # cut by max length, backspaces to the prompt
    ([2, 2, 0], [EOS], [True]),
    ([0], [1, 0, BK, 2, EOS], [True, False, True, True, True]),  # noise mid-row
]
MODEL_ROWS = [
    ([1, 0], [2, BK, 0, 1, BK, BK, 1], [True] * 7),
    ([2], [0, EOS], [True, True]),
    ([0, 0, 0], [1, 1, 1, 1], [True] * 4),
]


def make_batch(rows, pad_id: int = 0) -> Batch:
    prompts, actions, expert = zip(*rows, strict=True)
    return collate(list(prompts), list(actions), list(expert), pad_id=pad_id)


def random_logits(batch: Batch, vocab: int = VOCAB, scale: float = 3.0, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    shape = (*batch.sequences.shape, vocab)
    return (scale * torch.randn(shape, generator=generator, dtype=DTYPE)).requires_grad_()


def num(x) -> float:
    """A Python float of a (possibly grad-tracking) scalar tensor or number."""
    return float(x.detach()) if torch.is_tensor(x) else float(x)


def lse(values) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def assert_terms_equal(a: SequenceMatchTerms, b: SequenceMatchTerms, tol: float = 1e-12):
    fa, fb = a.as_floats(), b.as_floats()
    for name in fa:
        if math.isnan(fa[name]):
            assert math.isnan(fb[name]), name
        else:
            assert fb[name] == pytest.approx(fa[name], rel=tol, abs=tol), name


# --------------------------------------------------------------------------------------
# An independent slow reference (plain Python floats, explicit depth tracking)
# --------------------------------------------------------------------------------------


def reference_transitions(logits: torch.Tensor, rows, bkspc_id, eos_id, learned=True):
    """List per row of dicts (t, q, v, v_next, done, expert, step) computed by hand;
    ``learned``: V after <eos> is the log-sum-exp of the <eos> element's logits, else 0."""
    table = logits.detach().tolist()
    out = []
    for b, (prompt, actions, expert) in enumerate(rows):
        P = len(prompt)
        depth = P

        def value(row, d, P=P):
            keep = [x for a, x in enumerate(row) if not (a == bkspc_id and d <= P)]
            return lse(keep)

        items = []
        for i, (a, is_expert) in enumerate(zip(actions, expert, strict=True)):
            t = P + i
            after = depth - 1 if a == bkspc_id else depth + 1
            done = a == eos_id
            items.append(
                dict(
                    t=t,
                    q=table[b][t - 1][a],
                    v=value(table[b][t - 1], depth),
                    v_next=0.0 if done and not learned else value(table[b][t], after),
                    done=done,
                    expert=is_expert,
                    step=i,
                )
            )
            depth = after
        out.append(items)
    return out


def reference_expectations(items_per_row, gamma, fn, over_noise=False):
    """The gamma-weighted mean of ``fn`` over expert transitions; ``over_noise``: the sum over
    the non-expert (noise) transitions instead, divided by the same expert weight."""
    num = den = 0.0
    for items in items_per_row:
        for it in items:
            w = gamma ** it["step"]
            if it["expert"] != over_noise:
                num += w * fn(it)
            den += w if it["expert"] else 0.0
    return num / den


def reference_loss(
    data_logits, data_rows, model_logits, model_rows, divergence, gamma, alpha, beta
):
    data = reference_transitions(data_logits, data_rows, BK, EOS)

    def reward(it):
        return it["q"] - gamma * it["v_next"]

    def value(it):
        return it["v"] - gamma * it["v_next"]

    def mix(fn):
        e_data = reference_expectations(data, gamma, fn)
        if model_rows is None:
            return e_data
        model = reference_transitions(model_logits, model_rows, BK, EOS)
        return beta * e_data + (1 - beta) * reference_expectations(model, gamma, fn)

    if divergence == "chi2":
        imitation = -reference_expectations(data, gamma, reward)
        regulariser = mix(lambda it: reward(it) ** 2) / (4 * alpha)
    else:
        phi = PHI[divergence]
        imitation = -reference_expectations(
            data, gamma, lambda it: num(phi(torch.tensor(reward(it), dtype=DTYPE), alpha))
        )
        regulariser = 0.0
    val = mix(value)
    if model_rows is not None:  # noise rows balanced: their wrong tokens weigh -(1 - beta)
        val -= (1 - beta) * reference_expectations(data, gamma, value, over_noise=True)
    return dict(
        loss=imitation + val + regulariser, imitation=imitation, value=val, regulariser=regulariser
    )


# --------------------------------------------------------------------------------------
# Hand-computable cases
# --------------------------------------------------------------------------------------


def test_hand_two_step_row_with_eos_chi2():
    # vocabulary: 0 = "a", 1 = <eos>, 2 = <bkspc>; prompt "a", actions "a", <eos>
    a, eos, bk = 0, 1, 2
    batch = collate([[a]], [[a, eos]])
    rows = [[0.3, -0.2, 5.0], [1.1, 0.4, -0.7], [9.0, 9.0, 9.0]]
    logits = torch.tensor([rows], dtype=DTYPE)
    gamma, alpha = 0.9, 0.3
    v0 = math.log(math.exp(0.3) + math.exp(-0.2))  # depth 1 == prompt: <bkspc> masked
    v1 = math.log(math.exp(1.1) + math.exp(0.4) + math.exp(-0.7))  # depth 2: all valid
    r1 = 0.3 - gamma * v1  # Q(prompt, a) - gamma V(prompt + a)
    r2 = 0.4  # Q(prompt + a, <eos>), terminal value pinned at 0: no bootstrap
    val1, val2 = v0 - gamma * v1, v1
    w = [1.0, gamma]

    def mean(x1, x2):
        return (w[0] * x1 + w[1] * x2) / (w[0] + w[1])

    learned = transitions(logits, batch, bk, eos)  # V(s_T): the <eos> element's log-sum-exp
    assert learned.v_next[0].tolist() == pytest.approx([0.0, v1, 9.0 + math.log(3.0)])

    trans = transitions(logits, batch, bk, eos, learned_terminal=False)
    assert trans.q[0].tolist() == pytest.approx([0.0, 0.3, 0.4])
    assert trans.v[0].tolist() == pytest.approx([0.0, v0, v1])
    assert trans.v_next[0].tolist() == pytest.approx([0.0, v1, 0.0])
    assert trans.done[0].tolist() == [False, False, True]
    assert trans.mask[0].tolist() == [False, True, True]
    assert trans.step[0].tolist() == [0.0, 0.0, 1.0]

    terms = sm_loss(
        logits, batch, None, None, bk, eos, gamma=gamma, alpha=alpha, learned_terminal=False
    )
    assert num(terms.imitation) == pytest.approx(-mean(r1, r2), rel=1e-12)
    assert num(terms.value) == pytest.approx(mean(val1, val2), rel=1e-12)
    assert num(terms.regulariser) == pytest.approx(mean(r1**2, r2**2) / (4 * alpha), rel=1e-12)
    expected = -mean(r1, r2) + mean(val1, val2) + mean(r1**2, r2**2) / (4 * alpha)
    assert num(terms.loss) == pytest.approx(expected, rel=1e-12)
    assert num(terms.v_mean) == pytest.approx((v0 + v1) / 2)
    assert num(terms.r_mean) == pytest.approx((r1 + r2) / 2)
    assert num(terms.r_std) == pytest.approx(abs(r1 - r2) / 2)
    assert num(terms.r_data_mean) == pytest.approx((r1 + r2) / 2)
    assert math.isnan(num(terms.r_model_mean))

    nll = mean(v0 - 0.3, v1 - 0.4)
    assert num(mle_loss(logits, batch, bk, gamma=gamma)) == pytest.approx(nll, rel=1e-12)


def test_hand_cut_row_bootstraps_without_backspace_vocabulary():
    # vocabulary: 0, 1 = <eos>; no <bkspc> (nothing masked); prompt [0, 0], actions [0, 0]
    batch = collate([[0, 0]], [[0, 0]])
    rows = [[7.0, 7.0], [0.5, -1.0], [2.0, 0.0], [-0.3, 1.3]]
    logits = torch.tensor([rows], dtype=DTYPE)
    gamma, alpha = 0.5, 2.0
    v1, v2, v3 = (math.log(math.exp(x) + math.exp(y)) for x, y in rows[1:])
    r = [0.5 - gamma * v2, 2.0 - gamma * v3]  # the last action bootstraps from V(row 3)
    val = [v1 - gamma * v2, v2 - gamma * v3]

    def mean(x):
        return (x[0] + gamma * x[1]) / (1 + gamma)

    terms = sm_loss(logits, batch, None, None, None, 1, gamma=gamma, alpha=alpha)
    expected = -mean(r) + mean(val) + mean([x * x for x in r]) / (4 * alpha)
    assert num(terms.loss) == pytest.approx(expected, rel=1e-12)
    trans = transitions(logits, batch, None, 1)
    assert not trans.done.any()
    assert num(trans.v_next[0, 3]) == pytest.approx(v3)


def test_hand_backspace_row_nll():
    # vocabulary: 0 = "a", 1 = <eos>, 2 = <bkspc>; prompt "a"; actions a, <bkspc>, <eos>
    a, eos, bk = 0, 1, 2
    batch = collate([[a]], [[a, bk, eos]])
    rows = [[0.2, 1.0, 3.0], [-0.5, 0.1, 0.9], [1.5, -2.0, 4.0], [0.0, 0.0, 0.0]]
    logits = torch.tensor([rows], dtype=DTYPE)

    def log_pi(row, action, can_delete):
        valid = row if can_delete else row[:2]
        return row[action] - lse(valid)

    # depths after each element: 1, 2, 1, 2
    nll = [
        -log_pi(rows[0], a, False),
        -log_pi(rows[1], bk, True),
        -log_pi(rows[2], eos, False),
    ]
    gamma = 0.8
    weights = [1.0, gamma, gamma**2]
    expected = sum(w * x for w, x in zip(weights, nll, strict=True)) / sum(weights)
    assert num(mle_loss(logits, batch, bk, gamma=gamma)) == pytest.approx(expected, rel=1e-12)
    assert num(mle_loss(logits, batch, bk)) == pytest.approx(sum(nll) / 3, rel=1e-12)


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("with_model", [False, True])
def test_matches_slow_reference_on_random_batches(divergence, with_model):
    data = make_batch(DATA_ROWS)
    data_logits = random_logits(data, seed=1)
    model = make_batch(MODEL_ROWS) if with_model else None
    model_logits = random_logits(model, seed=2) if with_model else None
    gamma, alpha, beta = 0.9, 0.7, 0.3
    terms = sm_loss(
        data_logits,
        data,
        model_logits,
        model,
        BK,
        EOS,
        divergence=divergence,
        gamma=gamma,
        alpha=alpha,
        beta=beta,
    )
    expected = reference_loss(
        data_logits,
        DATA_ROWS,
        model_logits,
        MODEL_ROWS if with_model else None,
        divergence,
        gamma,
        alpha,
        beta,
    )
    for name, value in expected.items():
        assert num(getattr(terms, name)) == pytest.approx(value, rel=1e-10, abs=1e-12), name


def test_transitions_match_slow_reference():
    batch = make_batch(DATA_ROWS)
    logits = random_logits(batch, seed=3)
    trans = transitions(logits, batch, BK, EOS)
    reference = reference_transitions(logits, DATA_ROWS, BK, EOS)
    seen = torch.zeros_like(trans.action)
    for b, items in enumerate(reference):
        for it in items:
            t = it["t"]
            seen[b, t] = True
            assert num(trans.q[b, t]) == pytest.approx(it["q"], rel=1e-12)
            assert num(trans.v[b, t]) == pytest.approx(it["v"], rel=1e-12)
            assert num(trans.v_next[b, t]) == pytest.approx(it["v_next"], rel=1e-12, abs=0)
            assert bool(trans.done[b, t]) == it["done"]
            assert bool(trans.mask[b, t]) == it["expert"]
            assert num(trans.step[b, t]) == it["step"]
    assert torch.equal(trans.action, seen)
    for name in ("q", "v", "v_next", "step"):
        assert (getattr(trans, name)[~seen] == 0).all(), name
    assert not trans.done[~seen].any() and not trans.mask[~seen].any()


# --------------------------------------------------------------------------------------
# phi registry
# --------------------------------------------------------------------------------------

CLOSED_FORMS = {
    "chi2": (lambda x, al: x - x * x / (4 * al), [-3.0, -0.2, 0.0, 0.7, 5.0]),
    "kl": (lambda x, al: -math.exp(-(x + 1)), [-4.0, -0.5, 0.0, 1.0, 6.0]),
    "reverse_kl": (lambda x, al: 1 + math.log(x), [0.01, 0.5, 1.0, 4.0]),
    "js": (lambda x, al: math.log(2 - math.exp(-x)), [-0.6, -0.1, 0.0, 1.0, 8.0]),
    "hellinger": (lambda x, al: x / (1 + x), [-0.9, -0.3, 0.0, 2.0, 50.0]),
    "tv": (lambda x, al: min(max(x, -0.5), 0.5), [-3.0, -0.5, -0.2, 0.0, 0.45, 0.5, 7.0]),
}

# The derivatives IQ-Learn uses as ``phi_grad`` (plus chi2 and tv).
CLOSED_GRADS = {
    "chi2": lambda x, al: 1 - x / (2 * al),
    "kl": lambda x, al: math.exp(-x - 1),
    "reverse_kl": lambda x, al: 1 / x,
    "js": lambda x, al: math.exp(-x) / (2 - math.exp(-x)),
    "hellinger": lambda x, al: 1 / (1 + x) ** 2,
    "tv": lambda x, al: 1.0 if -0.5 < x < 0.5 else 0.0,
}


@pytest.mark.parametrize("name", DIVERGENCES)
def test_phi_closed_forms_and_gradients(name):
    assert set(CLOSED_FORMS) == set(PHI)
    form, points = CLOSED_FORMS[name]
    alpha = 0.25
    x = torch.tensor(points, dtype=DTYPE, requires_grad=True)
    y = get_phi(name)(x, alpha)
    for xi, yi in zip(points, y.tolist(), strict=True):
        assert yi == pytest.approx(form(xi, alpha), rel=1e-12, abs=1e-14), xi
    (grad,) = torch.autograd.grad(y.sum(), x)
    for xi, gi in zip(points, grad.tolist(), strict=True):
        if name == "tv" and abs(xi) == 0.5:
            continue  # kink
        assert gi == pytest.approx(CLOSED_GRADS[name](xi, alpha), rel=1e-10), xi


@pytest.mark.parametrize("name", ["kl", "reverse_kl", "js", "hellinger"])
def test_phi_outside_domain_is_finite_tangent(name):
    phi = get_phi(name)
    max_slope = 1e3
    x = torch.tensor([-1e4, -50.0, -2.0, -1.0, -0.7, 0.0, 1e-5], dtype=DTYPE, requires_grad=True)
    y = phi(x, 0.01)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(y).all() and torch.isfinite(grad).all()
    assert (grad > 0).all()  # still pushes the reward up, never a dead zone
    assert (grad <= max_slope * (1 + 1e-9)).all()
    assert (torch.diff(y.detach()) >= 0).all()  # increasing
    # continuous everywhere
    fine = torch.linspace(-3, 3, 60001, dtype=DTYPE)
    values = phi(fine, 0.01)
    assert torch.isfinite(values).all()
    assert (torch.diff(values).abs() < max_slope * 1e-4 * 1.01).all()

    # The continuation is the tangent at the junction x0: locate x0 by bisection (the
    # largest x with gradient exactly max_slope) and check the gradient is continuous there.
    def slope(at: float) -> float:
        point = torch.tensor(at, dtype=DTYPE, requires_grad=True)
        return num(torch.autograd.grad(phi(point, 0.01), point)[0])

    low, high = -50.0, 5.0
    assert slope(low) == max_slope and slope(high) < max_slope
    for _ in range(200):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if slope(mid) == max_slope else (low, mid)
    assert slope(high + 1e-9) == pytest.approx(max_slope, rel=1e-3)
    assert phi(torch.tensor(high, dtype=DTYPE), 0.01).item() == pytest.approx(
        CLOSED_FORMS[name][0](high, 0.01), rel=1e-9, abs=1e-12
    )


def test_get_phi_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="chi2.*hellinger.*js.*kl.*reverse_kl.*tv"):
        get_phi("wasserstein")
    assert get_phi("kl") is PHI["kl"]


# --------------------------------------------------------------------------------------
# The identity -r + dV = -log pi (docs/method.md)
# --------------------------------------------------------------------------------------


def test_imitation_plus_value_is_negative_log_likelihood_per_transition():
    batch = make_batch(DATA_ROWS)
    logits = random_logits(batch, seed=4)
    gamma = 0.97
    trans = transitions(logits, batch, BK, EOS)
    masked = logits.detach()
    identity = -trans.reward(gamma) + trans.value_difference(gamma)  # [B, T]
    for b, (prompt, actions, _) in enumerate(DATA_ROWS):
        depth = len(prompt)
        for i, a in enumerate(actions):
            t = len(prompt) + i
            row = masked[b, t - 1].clone()
            if depth <= len(prompt):
                row[BK] = -math.inf
            log_pi = torch.log_softmax(row, dim=-1)[a]
            assert num(identity[b, t]) == pytest.approx(-num(log_pi), rel=1e-12)
            depth = depth - 1 if a == BK else depth + 1


@pytest.mark.parametrize("gamma", [1.0, 0.998, 0.6])
@pytest.mark.parametrize("with_model", [False, True])
def test_beta_one_huge_alpha_equals_weighted_mle(gamma, with_model):
    data = make_batch(DATA_ROWS)
    logits = random_logits(data, seed=5)
    model = make_batch(MODEL_ROWS) if with_model else None
    model_logits = random_logits(model, seed=6) if with_model else None
    terms = sm_loss(logits, data, model_logits, model, BK, EOS, gamma=gamma, alpha=1e12, beta=1.0)
    nll = mle_loss(logits, data, BK, gamma=gamma)
    assert num(terms.loss) == pytest.approx(num(nll), abs=1e-9)
    # and the gradients agree too
    (g_sm,) = torch.autograd.grad(terms.loss, logits)
    (g_mle,) = torch.autograd.grad(nll, logits)
    assert torch.allclose(g_sm, g_mle, atol=1e-9)


def test_chi2_without_model_is_phi_chi2_on_data():
    data = make_batch(DATA_ROWS)
    logits = random_logits(data, seed=7)
    gamma, alpha = 0.9, 0.4
    terms = sm_loss(logits, data, None, None, BK, EOS, gamma=gamma, alpha=alpha)
    trans = transitions(logits, data, BK, EOS)
    w = torch.where(trans.mask, gamma**trans.step, 0.0)
    phi = PHI["chi2"](trans.reward(gamma), alpha)
    expected = (-(w * phi).sum() + (w * trans.value_difference(gamma)).sum()) / w.sum()
    assert num(terms.loss) == pytest.approx(num(expected), rel=1e-12)


# --------------------------------------------------------------------------------------
# What must not matter, and what must
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("pad_id", [0, EOS, BK])
@pytest.mark.parametrize("divergence", ["chi2", "kl", "hellinger"])
def test_padding_invariance(pad_id, divergence):
    base = make_batch(DATA_ROWS, pad_id=0)
    model = make_batch(MODEL_ROWS, pad_id=0)
    logits = random_logits(base, seed=8)
    model_logits = random_logits(model, seed=9)
    kwargs = dict(divergence=divergence, gamma=0.95, alpha=0.5)
    ref = sm_loss(logits, base, model_logits, model, BK, EOS, **kwargs)
    ref_mle = mle_loss(logits, base, BK, gamma=0.95)

    extra = 3
    wide = make_batch(DATA_ROWS, pad_id=pad_id)
    batch, time = wide.sequences.shape
    sequences = torch.cat([wide.sequences, torch.full((batch, extra), pad_id)], dim=1)
    expert = torch.cat([wide.expert, torch.ones(batch, extra, dtype=torch.bool)], dim=1)
    # Flags on padding (a sloppy caller) must not leak in either.
    expert = expert | (torch.arange(time + extra)[None, :] >= wide.lengths[:, None])
    padded = Batch(sequences, wide.prompt_lengths, wide.lengths, expert)
    generator = torch.Generator().manual_seed(10)
    noise = 1e4 * torch.randn(batch, time + extra, VOCAB, generator=generator, dtype=DTYPE)
    new_logits = noise.clone()
    new_logits[:, :time] = logits.detach()
    is_pad = torch.arange(time + extra)[None, :] >= wide.lengths[:, None]  # [B, T+3]
    new_logits[is_pad] = noise[is_pad]  # also rewrite padding inside the original width
    new_logits[0, -1, 0] = math.nan
    new_logits[1, -1, 1] = math.inf
    new_logits.requires_grad_()

    got = sm_loss(new_logits, padded, model_logits, model, BK, EOS, **kwargs)
    assert_terms_equal(ref, got)
    assert num(mle_loss(new_logits, padded, BK, gamma=0.95)) == pytest.approx(
        num(ref_mle), rel=1e-12
    )
    (grad,) = torch.autograd.grad(got.loss, new_logits)
    assert torch.isfinite(grad).all()
    assert (grad[is_pad] == 0).all()


def test_excluded_noise_action_contributes_nothing():
    # prompt [0, 1]; noise 2 then <bkspc>: row P-1 only scores the noise action
    rows = [([0, 1], [2, BK, 1, EOS], [False, True, True, True])]
    batch = make_batch(rows)
    logits = random_logits(batch, seed=11)
    ref = sm_loss(logits, batch, None, None, BK, EOS, divergence="chi2")
    ref_mle = mle_loss(logits, batch, BK)

    changed = logits.detach().clone()
    changed[0, 1] = torch.tensor([9.0, -4.0, 30.0, 2.0, 0.5], dtype=DTYPE)  # row P-1
    sequences = batch.sequences.clone()
    sequences[0, 2] = 0  # a different wrong token
    other = Batch(sequences, batch.prompt_lengths, batch.lengths, batch.expert)
    for divergence in DIVERGENCES:
        a = sm_loss(logits, batch, None, None, BK, EOS, divergence=divergence)
        b = sm_loss(changed, other, None, None, BK, EOS, divergence=divergence)
        assert_terms_equal(a, b)
    assert num(mle_loss(changed, other, BK)) == pytest.approx(num(ref_mle), rel=1e-12)

    # The state after the noise (where the expert deletes) does matter.
    matters = logits.detach().clone()
    matters[0, 2, BK] += 1.0
    assert num(sm_loss(matters, batch, None, None, BK, EOS).loss) != pytest.approx(
        num(ref.loss), rel=1e-6
    )
    # And flagging the noise as expert (the ``noise_in_loss`` reading) changes the NLL.
    flagged = Batch(batch.sequences, batch.prompt_lengths, batch.lengths, batch.expert.clone())
    flagged.expert[0, 2] = True
    assert num(mle_loss(logits, flagged, BK)) != pytest.approx(num(ref_mle), rel=1e-6)


def test_mid_row_noise_token_id_does_not_matter():
    rows = [([0], [1, 0, BK, 2, EOS], [True, False, True, True, True])]
    batch = make_batch(rows)
    logits = random_logits(batch, seed=12)
    sequences = batch.sequences.clone()
    sequences[0, 2] = 2  # another wrong token; every logit stays the same
    other = Batch(sequences, batch.prompt_lengths, batch.lengths, batch.expert)
    for divergence in DIVERGENCES:
        assert_terms_equal(
            sm_loss(logits, batch, None, None, BK, EOS, divergence=divergence),
            sm_loss(logits, other, None, None, BK, EOS, divergence=divergence),
        )


@pytest.mark.parametrize("prompt", [[0], [0, 2]])
def test_backspace_masked_at_prompt_boundary(prompt):
    P = len(prompt)
    rows = [(prompt, [0, BK, 1, EOS], [True] * 4)]  # depths after elements: P, P+1, P, P+1, P+2
    batch = make_batch(rows)
    logits = random_logits(batch, seed=13)
    base_trans = transitions(logits, batch, BK, EOS)
    base = sm_loss(logits, batch, None, None, BK, EOS)

    for t in (P - 1, P + 1):  # states with depth == P: <bkspc> is not an action there
        changed = logits.detach().clone()
        changed[0, t, BK] += 7.0
        trans = transitions(changed, batch, BK, EOS)
        for name in ("q", "v", "v_next"):
            assert torch.equal(getattr(trans, name), getattr(base_trans, name)), (t, name)
        assert_terms_equal(base, sm_loss(changed, batch, None, None, BK, EOS))

    changed = logits.detach().clone()
    changed[0, P, BK] += 7.0  # depth P+1: <bkspc> is valid
    trans = transitions(changed, batch, BK, EOS)
    assert num(trans.v[0, P + 1]) != pytest.approx(num(base_trans.v[0, P + 1]))
    assert num(trans.v_next[0, P]) != pytest.approx(num(base_trans.v_next[0, P]))
    v_deep = num(torch.logsumexp(changed[0, P], dim=-1))
    assert num(trans.v[0, P + 1]) == pytest.approx(v_deep, rel=1e-12)
    assert num(sm_loss(changed, batch, None, None, BK, EOS).loss) != pytest.approx(num(base.loss))

    # Without a <bkspc> in the vocabulary nothing is masked.
    plain = collate([prompt], [[0, 1, 2, EOS]])
    plain_logits = random_logits(plain, seed=14)
    trans = transitions(plain_logits, plain, None, EOS)
    expected = num(torch.logsumexp(plain_logits[0, P - 1], dim=-1))
    assert num(trans.v[0, P]) == pytest.approx(expected, rel=1e-12)


def test_backspace_into_prompt_is_rejected():
    batch = collate([[0]], [[BK]])
    with pytest.raises(ValueError, match="prompt"):
        transitions(random_logits(batch), batch, BK, EOS)


def test_a_pinned_terminal_eos_does_not_bootstrap():
    rows = [([0], [1, 2, EOS], [True] * 3), ([1], [0, 0], [True] * 2)]
    batch = make_batch(rows)
    logits = random_logits(batch, seed=15)
    pinned = dict(learned_terminal=False)
    base = sm_loss(logits, batch, None, None, BK, EOS, **pinned)
    trans = transitions(logits, batch, BK, EOS, **pinned)
    assert bool(trans.done[0, 3]) and num(trans.v_next[0, 3]) == 0.0
    assert not trans.done[1].any()

    after_eos = logits.detach().clone()
    after_eos[0, 3] = 1e4 * torch.randn(VOCAB, dtype=DTYPE)  # logits of the absorbing state
    after_eos[0, 3, 1] = math.inf  # even non-finite ones: never read, zero gradient
    after_eos.requires_grad_()
    for divergence in DIVERGENCES:
        options = dict(divergence=divergence, **pinned)
        assert_terms_equal(
            sm_loss(logits, batch, None, None, BK, EOS, **options),
            sm_loss(after_eos, batch, None, None, BK, EOS, **options),
        )
        loss = sm_loss(after_eos, batch, None, None, BK, EOS, **options)
        (grad,) = torch.autograd.grad(loss.loss, after_eos)
        assert torch.isfinite(grad).all() and (grad[0, 3] == 0).all()

    # The cut row bootstraps from its last state: V(s') there is the logsumexp of the
    # logits of element L-1 (depth 3 > prompt: all actions valid), and changing it matters.
    assert num(trans.v_next[1, 2]) == pytest.approx(
        num(torch.logsumexp(logits[1, 2], dim=-1)), rel=1e-12
    )
    last_state = logits.detach().clone()
    last_state[1, 2] += torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0], dtype=DTYPE)
    assert num(sm_loss(last_state, batch, None, None, BK, EOS, **pinned).loss) != (
        pytest.approx(num(base.loss), rel=1e-6)
    )

    # Reading <eos> as non-terminal (eos_id=None) would bootstrap: a different loss.
    assert num(sm_loss(logits, batch, None, None, BK, None, **pinned).loss) != (
        pytest.approx(num(base.loss), rel=1e-6)
    )


def test_a_learned_terminal_reads_the_absorbing_state_at_the_eos_element():
    """V(s_T) is the reading's own V of the <eos> element (docs/method.md, "Terminal
    states"): its logits' log-sum-exp, plus b with offsets, b alone when normalised."""
    rows = [([0], [1, 2, EOS], [True] * 3), ([1], [0, 0], [True] * 2)]
    batch = make_batch(rows)
    logits = random_logits(batch, seed=15)
    offsets = torch.linspace(-1.0, 1.0, batch.sequences.numel(), dtype=DTYPE)
    offsets = offsets.reshape(batch.sequences.shape)  # [B, T]
    at_eos = logits[0, 3]  # [V] the absorbing state's logits
    readings = [
        (dict(), torch.logsumexp(at_eos, -1)),
        (dict(offsets=offsets), torch.logsumexp(at_eos, -1) + offsets[0, 3]),
        (dict(offsets=offsets, normalise=True), offsets[0, 3]),
    ]
    for reading, expected in readings:
        trans = transitions(logits, batch, BK, EOS, **reading)
        assert num(trans.v_next[0, 3]) == pytest.approx(num(expected), rel=1e-12)
        pinned = transitions(logits, batch, BK, EOS, learned_terminal=False, **reading)
        assert num(pinned.v_next[0, 3]) == 0.0
        # everything but the terminal transition is the same
        assert torch.equal(trans.v_next[1], pinned.v_next[1])
        assert torch.equal(trans.q, pinned.q) and torch.equal(trans.v, pinned.v)


# --------------------------------------------------------------------------------------
# Mixture
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("divergence", ["chi2", "kl", "js"])
def test_mixture_averages_value_and_regulariser(divergence):
    data = make_batch(DATA_ROWS)
    model = make_batch(MODEL_ROWS)
    data_logits = random_logits(data, seed=16)
    model_logits = random_logits(model, seed=17)
    kwargs = dict(divergence=divergence, gamma=0.9, alpha=0.2)
    mixed = sm_loss(
        data_logits, data, model_logits, model, BK, EOS, beta=0.5, balance_noise=False, **kwargs
    )  # the plain mixture; noise-row balance: tests/test_objective_optima.py
    data_only = sm_loss(data_logits, data, None, None, BK, EOS, **kwargs)
    model_only = sm_loss(model_logits, model, None, None, BK, EOS, **kwargs)

    assert num(mixed.value) == pytest.approx(
        0.5 * (num(data_only.value) + num(model_only.value)), rel=1e-12
    )
    assert num(mixed.regulariser) == pytest.approx(
        0.5 * (num(data_only.regulariser) + num(model_only.regulariser)), rel=1e-12
    )
    assert num(mixed.imitation) == pytest.approx(num(data_only.imitation), rel=1e-12)
    assert num(mixed.imitation) != pytest.approx(num(model_only.imitation), rel=1e-6)
    assert num(mixed.loss) == pytest.approx(
        num(mixed.imitation + mixed.value + mixed.regulariser), rel=1e-12
    )
    if divergence != "chi2":
        assert num(mixed.regulariser) == 0.0
    assert num(mixed.r_model_mean) == pytest.approx(num(model_only.r_data_mean), rel=1e-12)
    assert num(mixed.r_data_mean) == pytest.approx(num(data_only.r_data_mean), rel=1e-12)

    # beta = 0: value and regulariser come from the model batch only
    model_side = sm_loss(
        data_logits, data, model_logits, model, BK, EOS, beta=0.0, balance_noise=False, **kwargs
    )
    assert num(model_side.value) == pytest.approx(num(model_only.value), rel=1e-12)


def test_statistics_and_as_floats():
    data = make_batch(DATA_ROWS)
    model = make_batch(MODEL_ROWS)
    data_logits = random_logits(data, seed=18)
    model_logits = random_logits(model, seed=19)
    gamma = 0.9
    terms = sm_loss(data_logits, data, model_logits, model, BK, EOS, gamma=gamma)
    td = transitions(data_logits, data, BK, EOS)
    tm = transitions(model_logits, model, BK, EOS)
    r = torch.cat([td.reward(gamma)[td.mask], tm.reward(gamma)[tm.mask]])
    v = torch.cat([td.v[td.mask], tm.v[tm.mask]])
    floats = terms.as_floats()
    assert set(floats) == {
        "loss",
        "imitation",
        "value",
        "regulariser",
        "v_mean",
        "r_mean",
        "r_std",
        "r_data_mean",
        "r_model_mean",
    }
    assert all(isinstance(x, float) for x in floats.values())
    assert floats["r_mean"] == pytest.approx(num(r.mean()), rel=1e-12)
    assert floats["r_std"] == pytest.approx(num(r.std(correction=0)), rel=1e-12)
    assert floats["v_mean"] == pytest.approx(num(v.mean()), rel=1e-12)
    for name in ("v_mean", "r_mean", "r_std", "r_data_mean", "r_model_mean"):
        assert not getattr(terms, name).requires_grad, name
    assert terms.loss.requires_grad


# --------------------------------------------------------------------------------------
# Numerical robustness
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("kind", ["randn", "sign"])
def test_gradients_finite_for_extreme_logits(divergence, kind):
    data = make_batch(DATA_ROWS)
    model = make_batch(MODEL_ROWS)
    generator = torch.Generator().manual_seed(20)

    def extreme(batch):
        raw = torch.randn(*batch.sequences.shape, VOCAB, generator=generator, dtype=DTYPE)
        values = 1e4 * (raw if kind == "randn" else raw.sign())
        return values.requires_grad_()

    data_logits, model_logits = extreme(data), extreme(model)
    terms = sm_loss(
        data_logits, data, model_logits, model, BK, EOS, divergence=divergence, gamma=0.998
    )
    assert all(math.isfinite(x) for x in terms.as_floats().values())
    grads = torch.autograd.grad(terms.loss, (data_logits, model_logits))
    assert all(torch.isfinite(g).all() for g in grads)
    nll = mle_loss(data_logits, data, BK, gamma=0.998)
    (grad,) = torch.autograd.grad(nll, data_logits)
    assert math.isfinite(num(nll)) and torch.isfinite(grad).all()


def test_works_in_the_logits_dtype():
    data = make_batch(DATA_ROWS)
    logits = random_logits(data, seed=21).detach().float().requires_grad_()
    terms = sm_loss(logits, data, None, None, BK, EOS)
    assert terms.loss.dtype == torch.float32 and terms.r_std.dtype == torch.float32
    assert transitions(logits, data, BK, EOS).v.dtype == torch.float32


# --------------------------------------------------------------------------------------
# Argument validation
# --------------------------------------------------------------------------------------


def _call(**overrides):
    data = make_batch(DATA_ROWS)
    model = make_batch(MODEL_ROWS)
    args = dict(
        data_logits=random_logits(data),
        data=data,
        model_logits=random_logits(model),
        model=model,
        bkspc_id=BK,
        eos_id=EOS,
    )
    rows = [overrides.pop(name, value) for name, value in args.items()]
    return sm_loss(*rows, **overrides)  # the rest: objective fields


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(gamma=0.0), "gamma"),
        (dict(gamma=1.5), "gamma"),
        (dict(gamma=math.nan), "gamma"),
        (dict(alpha=0.0), "alpha"),
        (dict(alpha=-1.0), "alpha"),
        (dict(alpha=math.inf), "alpha"),
        (dict(beta=-0.1), "beta"),
        (dict(beta=1.01), "beta"),
        (dict(divergence="wasserstein"), "valid names"),
        (dict(model=None), "together"),
        (dict(model_logits=None), "together"),
        (dict(data_logits=torch.zeros(4, 3, VOCAB, dtype=DTYPE)), "shape"),
        (dict(data_logits=torch.zeros(4, 9, VOCAB, 1, dtype=DTYPE)), "batch, time, vocab"),
        (dict(model_logits=torch.zeros(3, 10, VOCAB + 1, dtype=DTYPE)), "vocabulary"),
        (dict(bkspc_id=VOCAB), "bkspc_id"),
        (dict(eos_id=-1), "eos_id"),
    ],
)
def test_bad_arguments_raise(overrides, message):
    with pytest.raises(ValueError, match=message):
        _call(**overrides)


def test_bad_batches_raise():
    data = make_batch(DATA_ROWS)
    logits = random_logits(data)
    wrong_expert = Batch(data.sequences, data.prompt_lengths, data.lengths, data.expert[:, :-1])
    with pytest.raises(ValueError, match="expert"):
        sm_loss(logits, wrong_expert, None, None, BK, EOS)
    with pytest.raises(ValueError, match="integer|floating"):
        sm_loss(logits.long(), data, None, None, BK, EOS)

    empty = collate([[0, 1], [2]], [[], []])
    with pytest.raises(ValueError, match="no expert transitions"):
        sm_loss(random_logits(empty), empty, None, None, BK, EOS)
    with pytest.raises(ValueError, match="no expert transitions"):
        mle_loss(random_logits(empty), empty, BK)
    no_expert = Batch(data.sequences, data.prompt_lengths, data.lengths, data.expert & False)
    with pytest.raises(ValueError, match="no expert transitions"):
        sm_loss(logits, no_expert, None, None, BK, EOS)
    with pytest.raises(ValueError, match="model batch"):  # a model batch with no transitions
        sm_loss(logits, data, random_logits(empty), empty, BK, EOS)
    with pytest.raises(ValueError, match="gamma"):
        mle_loss(logits, data, BK, gamma=0.0)


def _random_rows(seed: int, rows: int, vocab: int, bkspc: int, eos: int):
    generator = torch.Generator().manual_seed(seed)
    prompts, actions, experts = [], [], []
    for _ in range(rows):
        prompt = torch.randint(0, vocab - 2, (int(torch.randint(1, 4, (1,), generator=generator)),),
                               generator=generator).tolist()  # fmt: skip
        row, expert, depth = [], [], 0
        for _ in range(int(torch.randint(1, 9, (1,), generator=generator))):
            if depth and float(torch.rand((), generator=generator)) < 0.3:
                row.append(bkspc)
                depth -= 1
            else:
                row.append(int(torch.randint(0, vocab - 2, (1,), generator=generator)))
                depth += 1
            expert.append(float(torch.rand((), generator=generator)) < 0.8)
        if float(torch.rand((), generator=generator)) < 0.5:
            row.append(eos)
            expert.append(True)
        prompts.append(prompt)
        actions.append(row)
        experts.append(expert)
    return prompts, actions, experts


@pytest.mark.parametrize("divergence", ["chi2", "kl"])
def test_shards_with_whole_batch_totals_sum_to_the_whole_loss(divergence):
    vocab, bkspc, eos, gamma = 7, 6, 5, 0.9
    prompts, actions, experts = _random_rows(0, 6, vocab, bkspc, eos)
    m_prompts, m_actions, _ = _random_rows(1, 4, vocab, bkspc, eos)
    data = collate(prompts, actions, experts)
    model = collate(m_prompts, m_actions)
    data_logits = torch.randn(*data.sequences.shape, vocab, dtype=torch.float64)
    model_logits = torch.randn(*model.sequences.shape, vocab, dtype=torch.float64)
    kwargs = dict(divergence=divergence, gamma=gamma, alpha=0.5, beta=0.3)
    whole = sm_loss(data_logits, data, model_logits, model, bkspc, eos, **kwargs)
    totals = (weight_total(data, gamma), weight_total(model, gamma))
    shard_sum = 0.0
    mle_sum = 0.0
    for d_rows, m_rows in ((slice(0, 2), slice(0, 3)), (slice(2, 6), slice(3, 4))):
        d_batch = collate(prompts[d_rows], actions[d_rows], experts[d_rows])
        m_batch = collate(m_prompts[m_rows], m_actions[m_rows])
        d_logits = data_logits[d_rows, : d_batch.sequences.shape[1]]
        m_logits = model_logits[m_rows, : m_batch.sequences.shape[1]]
        shard = sm_loss(d_logits, d_batch, m_logits, m_batch, bkspc, eos, totals=totals, **kwargs)
        shard_sum = shard_sum + shard.loss
        mle_sum = mle_sum + mle_loss(d_logits, d_batch, bkspc, gamma, total=totals[0])
    assert torch.allclose(shard_sum, whole.loss, atol=1e-12)
    assert torch.allclose(mle_sum, mle_loss(data_logits, data, bkspc, gamma), atol=1e-12)


# --------------------------------------------------------------------------------------
# training_loss: the combination a training step minimises
# --------------------------------------------------------------------------------------


def _loss_inputs():
    data, model = make_batch(DATA_ROWS), make_batch(MODEL_ROWS)
    return random_logits(data, seed=1), data, random_logits(model, seed=2), model


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_training_loss_mixes_mle_and_sequencematch_linearly(weight):
    data_logits, data, model_logits, model = _loss_inputs()
    kwargs = dict(divergence="chi2", gamma=0.9, alpha=0.7, beta=0.4)
    terms = train_loss(data_logits, data, model_logits, model, BK, EOS, sm_weight=weight,
                       **kwargs)  # fmt: skip
    mle = mle_loss(data_logits, data, BK, 1.0)
    sm = sm_loss(data_logits, data, model_logits, model, BK, EOS, **kwargs)
    assert num(terms.mle) == pytest.approx(num(mle), abs=1e-12)
    assert num(terms.loss) == pytest.approx((1 - weight) * num(mle) + weight * num(sm.loss))
    if weight == 0.0:  # MLE alone: the SequenceMatch terms are not even computed
        assert num(terms.imitation) == num(terms.value) == num(terms.regulariser) == 0.0
        assert terms.v_mean is None and set(terms.as_dict()) == {
            "loss", "mle", "imitation", "value", "regulariser"
        }  # fmt: skip
    else:
        assert num(terms.regulariser) == pytest.approx(num(sm.regulariser))
        assert num(terms.r_std) == pytest.approx(num(sm.r_std))
        assert not terms.as_dict()["r_mean"].requires_grad


def test_training_loss_without_model_rows_is_the_data_only_objective():
    data_logits, data, _, _ = _loss_inputs()
    terms = train_loss(data_logits, data, None, None, BK, EOS, sm_weight=0.5, beta=0.2, alpha=1.0)
    data_only = sm_loss(data_logits, data, None, None, BK, EOS, beta=1.0, alpha=1.0)
    mle = mle_loss(data_logits, data, BK, 1.0)
    assert num(terms.loss) == pytest.approx(0.5 * num(mle) + 0.5 * num(data_only.loss))


def test_model_rows_get_gradient_through_the_training_loss():
    data_logits, data, model_logits, model = _loss_inputs()
    train_loss(data_logits, data, model_logits, model, BK, EOS, sm_weight=0.5).loss.backward()
    assert model_logits.grad is not None and model_logits.grad.abs().sum() > 0
    model_logits.grad = None
    train_loss(data_logits, data, model_logits, model, BK, EOS, sm_weight=0.0).loss.backward()
    assert model_logits.grad is None  # MLE never reads model rows


def test_training_loss_micro_batches_sum_to_the_whole_step():
    data_logits, data, model_logits, model = _loss_inputs()
    gamma = 0.9
    kwargs = dict(sm_weight=0.6, gamma=gamma, alpha=0.8, beta=0.5)
    whole = train_loss(data_logits, data, model_logits, model, BK, EOS, **kwargs)
    totals = (weight_total(data, 1.0), weight_total(data, gamma), weight_total(model, gamma))
    parts = 0.0
    for d_rows, m_rows in ((slice(0, 1), slice(0, 2)), (slice(1, 4), slice(2, 3))):
        d_batch, m_batch = make_batch(DATA_ROWS[d_rows]), make_batch(MODEL_ROWS[m_rows])
        d_logits = data_logits[d_rows, : d_batch.sequences.shape[1]]
        m_logits = model_logits[m_rows, : m_batch.sequences.shape[1]]
        parts = parts + train_loss(d_logits, d_batch, m_logits, m_batch, BK, EOS,
                                   totals=totals, **kwargs).loss  # fmt: skip
    assert num(parts) == pytest.approx(num(whole.loss), abs=1e-10)


def test_training_loss_refuses_a_weight_outside_zero_one():
    data_logits, data, _, _ = _loss_inputs()
    with pytest.raises(ValueError, match="sm_weight must lie in"):
        train_loss(data_logits, data, None, None, BK, EOS, sm_weight=1.5)


def test_a_value_only_data_regulariser_changes_the_gradient_not_the_loss():
    """``data_regulariser value``: the same loss; the data's policy gradient is the
    likelihood's alone (beta 1: no model rows), the value still gets the regulariser's."""
    data = make_batch(DATA_ROWS)
    logits = random_logits(data, seed=21).requires_grad_()
    offsets = (0.3 * torch.randn(data.sequences.shape, dtype=DTYPE)).requires_grad_()
    options = dict(gamma=0.9, alpha=0.7, offsets=(offsets, None), normalise=True)
    full = sm_loss(logits, data, None, None, BK, EOS, **options)
    value = sm_loss(logits, data, None, None, BK, EOS, data_regulariser="value", **options)
    assert num(value.loss) == pytest.approx(num(full.loss), rel=1e-12)

    g_value, b_value = torch.autograd.grad(value.loss, (logits, offsets))
    g_full, b_full = torch.autograd.grad(full.loss, (logits, offsets))
    nll = mle_loss(logits, data, BK, gamma=0.9)  # imitation + value: the gamma-weighted NLL
    (g_nll,) = torch.autograd.grad(nll, logits)
    assert torch.allclose(g_value, g_nll, atol=1e-12)
    assert not torch.allclose(g_full, g_nll, atol=1e-3)
    assert torch.allclose(b_value, b_full, atol=1e-12)  # the value's gradient is unchanged
    with pytest.raises(ValueError, match="data_regulariser"):
        sm_loss(logits, data, None, None, BK, EOS, data_regulariser="policy")


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize(
    ("kind", "weight", "q_reading", "terminal"),
    [
        ("mle", 0.0, "none", "learned"),
        ("offline", 0.5, "offset", "learned"),
        ("online", 0.0, "none", "learned"),
        ("online", 0.7, "none", "zero"),
        ("online", 0.7, "normalised", "learned"),
    ],
)
def test_the_loss_of_the_transitions_is_the_training_loss_bit_for_bit(
    chunked, kind, weight, q_reading, terminal
):
    """:func:`loss_from_transitions` of transitions read by hand gives the terms and the
    gradients of :func:`training_loss` on the same logits exactly, dense or chunked."""
    data, model = make_batch(DATA_ROWS), make_batch(MODEL_ROWS)
    torch.manual_seed(41)
    head = torch.nn.Linear(6, VOCAB, dtype=DTYPE)
    shapes = (data.sequences.shape, model.sequences.shape)
    hidden = [torch.randn(*shape, 6, dtype=DTYPE) for shape in shapes]  # [B, T, H] each
    offsets = [0.3 * torch.randn(shape, dtype=DTYPE) for shape in shapes]  # [B, T] b(s) each
    leaves = [*hidden, *offsets, head.weight, head.bias]
    for leaf in leaves:
        leaf.requires_grad_()
    objective = ObjectiveConfig(kind=kind, q_reading=q_reading, terminal_value=terminal,
                                gamma=0.9, alpha=0.7, beta=0.4)  # fmt: skip
    with_model = kind == "online"
    b = None if q_reading == "none" else (offsets[0], offsets[1] if with_model else None)

    def logits(rows: int) -> torch.Tensor | ChunkedLogits:  # [B, T, V], fresh for each loss
        return ChunkedLogits(hidden[rows], head, chunk_tokens=3) if chunked else head(hidden[rows])

    data_logits, model_logits = logits(0), logits(1) if with_model else None
    whole = training_loss(data_logits, data, model_logits, model if with_model else None, BK,
                          EOS, objective, sm_weight=weight, offsets=b)  # fmt: skip

    data_logits, model_logits = logits(0), logits(1)
    reading = dict(normalise=objective.normalise, learned_terminal=objective.learned_terminal)
    mle_t = transitions(data_logits, data, BK, EOS, learned_terminal=False)
    data_t = model_t = None
    if weight > 0:
        data_b, model_b = (None, None) if b is None else b
        data_t = transitions(data_logits, data, BK, EOS, offsets=data_b, **reading)
        if with_model:
            model_t = transitions(model_logits, model, BK, EOS, offsets=model_b, **reading)
    pure = loss_from_transitions(LossTransitions(mle_t, data_t, model_t), objective,
                                 sm_weight=weight)  # fmt: skip

    assert whole.as_dict().keys() == pure.as_dict().keys()
    for name, value in whole.as_dict().items():
        assert torch.equal(value, pure.as_dict()[name]), name
    expected = torch.autograd.grad(whole.loss, leaves, allow_unused=True)
    found = torch.autograd.grad(pure.loss, leaves, allow_unused=True)
    names = ["data", "model", "b_data", "b_model", "weight", "bias"]
    for name, a, g in zip(names, expected, found, strict=True):
        assert (a is None) == (g is None), name
        assert a is None or torch.equal(a, g), name


def test_the_loss_of_the_transitions_needs_the_objectives_reading_for_a_weight():
    data = make_batch(DATA_ROWS)
    plain = LossTransitions(transitions(random_logits(data), data, BK, EOS))
    with pytest.raises(ValueError, match="needs the data rows' transitions"):
        loss_from_transitions(plain, ObjectiveConfig(kind="offline"), sm_weight=0.5)
    loss = loss_from_transitions(plain, ObjectiveConfig(kind="offline"), sm_weight=0.0)
    assert num(loss.imitation) == 0.0


# --------------------------------------------------------------------------------------
# The objective's configuration
# --------------------------------------------------------------------------------------


def test_one_alpha_default_everywhere():
    """The losses, the phis and the training configuration share one alpha default."""
    import inspect

    from sequencematch.training.config import TrainConfig

    assert ObjectiveConfig().alpha == DEFAULT_ALPHA == TrainConfig().alpha == 10.0
    for phi in PHI.values():
        assert inspect.signature(phi).parameters["alpha"].default == DEFAULT_ALPHA
    data = make_batch(DATA_ROWS)
    logits = random_logits(data, seed=31)
    default = sequencematch_loss(logits, data, None, None, BK, EOS)
    assert_terms_equal(default, sm_loss(logits, data, None, None, BK, EOS, alpha=DEFAULT_ALPHA))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "ppo"}, "kind must be one of"),
        ({"lambda_mle": 1.5}, "lambda_mle must lie in"),
        ({"q_reading": "raw"}, "q_reading must be one of"),
        ({"terminal_value": "one"}, "terminal_value must be one of"),
        ({"data_regulariser": "half"}, "data_regulariser must be one of"),
    ],
)
def test_objective_config_refuses_nonsense_when_built(fields, message):
    with pytest.raises(ValueError, match=message):
        ObjectiveConfig(**fields)


def test_the_kind_says_which_rows_the_training_loss_reads():
    data_logits, data, model_logits, model = _loss_inputs()
    rows = (data_logits, data, model_logits, model, BK, EOS)
    with pytest.raises(ValueError, match="kind offline reads data rows only"):
        training_loss(*rows, ObjectiveConfig(kind="offline"))
    with pytest.raises(ValueError, match="kind online needs model rows"):
        training_loss(data_logits, data, None, None, BK, EOS, ObjectiveConfig(kind="online"))
    with pytest.raises(ValueError, match="kind mle is MLE alone"):
        training_loss(*rows, ObjectiveConfig(kind="mle"), sm_weight=0.5)
    mle = training_loss(*rows, ObjectiveConfig(kind="mle"))  # weight 0: model rows unread
    assert num(mle.loss) == pytest.approx(num(mle_loss(data_logits, data, BK, 1.0)), rel=1e-12)
    # offline reads the data rows alone whatever beta says; the weight is 1 - lambda_mle
    offline = training_loss(data_logits, data, None, None, BK, EOS,
                            ObjectiveConfig(kind="offline", beta=0.2, lambda_mle=0.25))  # fmt: skip
    data_only = sequencematch_loss(data_logits, data, None, None, BK, EOS)
    expected = 0.25 * num(mle.loss) + 0.75 * num(data_only.loss)
    assert num(offline.loss) == pytest.approx(expected, rel=1e-12)


def test_offsets_need_a_reading_that_adds_them():
    data = make_batch(DATA_ROWS)
    logits = random_logits(data, seed=32)
    offsets = (torch.zeros(data.sequences.shape, dtype=DTYPE), None)
    with pytest.raises(ValueError, match="offsets are read under q_reading offset"):
        sequencematch_loss(logits, data, None, None, BK, EOS, offsets=offsets)
