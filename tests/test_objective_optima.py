"""Known answers of the objective on toy MDPs: optima computed by hand, per-state balance.

The toy: prompt ``[P]``, actions ``a`` (the data token), ``x`` (a wrong token), ``<eos>`` and
``<bkspc>``. Its states are the visible sequences after the prompt: ``S0 = ()``, ``S1 = (a)``
and ``SX = (x)``. Each state has one free row of logits (tabular Q), scattered onto every
element of the one-pass layout that is that state, so a state met twice (before a wrong token
and again after its ``<bkspc>``) is one set of parameters, as in a real model. docs/method.md
derives every expected value below.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import sm_loss, train_loss

from sequencematch.core.actions import Batch, apply_backspaces, collate

DTYPE = torch.float64
P, A, X, EOS, BK = 0, 1, 2, 3, 4
VOCAB = 5
STATES = {(): 0, (A,): 1, (X,): 2}  # S0, S1, SX


def make_batch(rows) -> Batch:
    prompts, actions, expert = zip(*rows, strict=True)
    return collate(list(prompts), list(actions), list(expert))


def state_index(batch: Batch, terminal: int = -1) -> torch.Tensor:
    """``[B, T]`` the toy state after each element (``-1``: no state: padding; after <eos>:
    ``terminal``, the absorbing state, no state by default)."""
    index = torch.full(batch.sequences.shape, -1, dtype=torch.long)
    for b in range(batch.sequences.shape[0]):
        prompt, length = int(batch.prompt_lengths[b]), int(batch.lengths[b])
        actions = batch.sequences[b, prompt:length].tolist()
        index[b, prompt - 1] = STATES[()]
        for t in range(len(actions)):
            if actions[t] == EOS:
                index[b, prompt + t] = terminal
                break
            index[b, prompt + t] = STATES[tuple(apply_backspaces(actions[: t + 1], BK))]
    return index


def scatter(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``[B, T, V]`` logits: row ``table[state]`` wherever the element is that state."""
    return torch.where(index[..., None] >= 0, table[index.clamp(min=0)], 0.0)


def policy(table: torch.Tensor, state: int, can_delete: bool) -> torch.Tensor:
    row = table[state].detach().clone()
    if not can_delete:
        row[BK] = float("-inf")
    return row.softmax(-1)


def minimise(loss_of, table: torch.Tensor, iterations: int = 150) -> torch.Tensor:
    """L-BFGS on the free logits until the loss stops moving."""
    table = table.clone().requires_grad_()
    optimiser = torch.optim.LBFGS(
        [table], lr=1.0, max_iter=iterations, tolerance_grad=1e-10, tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure():
        optimiser.zero_grad()
        loss = loss_of(table)
        loss.backward()
        return loss

    optimiser.step(closure)
    return table.detach()


CLEAN = ([P], [A, EOS], [True, True])
NOISY = ([P], [X, BK, A, EOS], [False, True, True, True])  # the wrong token is no expert action
SHORT = ([P], [EOS], [True])


# ---------------------------------------------------------------------- terminal states


@pytest.mark.parametrize("offset", [0.0, 5.0, 6.0])
def test_a_finished_answer_ends_whatever_the_level_of_the_learned_value(offset):
    """Normalised reading, b(s) = c everywhere (a value head that generalises one level to
    every state): the data always ends at S1, so the optimum is P(<eos> | S1) = 1.

    With V = 0 after <eos>, r_eos = log pi(eos | S1) + c, and the chi2 optimum of the data-only
    loss (lambda 0.5, alpha 1, gamma 1) is log P(<eos>) = 4 - c: P = exp(-2) = 0.135 at c = 6.
    With the absorbing state's value learned (b at the <eos> element), c cancels.
    """
    batch = make_batch([CLEAN])
    index = state_index(batch)
    offsets = torch.full(batch.sequences.shape, offset, dtype=DTYPE)

    def loss(table, learned):
        logits = scatter(table, index)
        return train_loss(
            logits, batch, None, None, BK, EOS, sm_weight=0.5, gamma=1.0, alpha=1.0,
            offsets=(offsets, None), normalise=True, learned_terminal=learned,
        ).loss  # fmt: skip

    start = torch.zeros(3, VOCAB, dtype=DTYPE)
    learned = minimise(lambda t: loss(t, True), start)
    assert float(policy(learned, 1, True)[EOS]) > 0.99

    pinned = minimise(lambda t: loss(t, False), start)
    expected = math.exp(min(0.0, 4.0 - offset))  # the hand-computed optimum (see docstring)
    assert float(policy(pinned, 1, True)[EOS]) == pytest.approx(expected, abs=0.01)


@pytest.mark.parametrize("level", [0.0, 8.0])
def test_under_the_plain_reading_a_learned_terminal_keeps_a_finished_answer_ending(level):
    """Plain reading (Q = logits): a network gives every state's logits one level ``c`` (a
    from-scratch model's log-sum-exp sits around 8-9). With ``V = 0`` after <eos>, ``r_eos =
    Q(S1, <eos>) = c + log pi(<eos> | S1)``, and at a high level the chi2 term's pull towards
    ``r = 2 alpha`` outweighs the likelihood: a gradient step lowers ``P(<eos> | S1)`` although
    the data always ends there. With the absorbing state's value read from its own logits
    (at the same level), the level cancels and the step raises it."""
    batch = make_batch([CLEAN])
    T = 3  # the absorbing state after <eos>: a fourth row of logits
    index = state_index(batch, terminal=T)
    probs = torch.tensor([0.02, 0.02, 0.02, 0.9, 0.04], dtype=DTYPE)  # S1: mostly <eos>
    table = torch.full((4, VOCAB), level, dtype=DTYPE)
    table[1] = level + probs.log()
    table.requires_grad_()

    def change_of_log_p_eos(learned: bool) -> float:
        """d log pi(<eos> | S1) along minus the loss's gradient."""
        loss = train_loss(
            scatter(table, index), batch, None, None, BK, EOS, sm_weight=0.5, gamma=1.0,
            alpha=1.0, learned_terminal=learned,
        ).loss  # fmt: skip
        (gradient,) = torch.autograd.grad(loss, table)
        pi = policy(table, 1, True)
        return float(-(gradient[1] * (torch.eye(VOCAB, dtype=DTYPE)[EOS] - pi)).sum())

    assert change_of_log_p_eos(learned=True) > 0
    pinned = change_of_log_p_eos(learned=False)
    assert pinned < 0 if level > 4 else pinned > 0


# ---------------------------------------------------------------------- noise rows


def level_gradients(data: Batch, model: Batch, beta: float, balance: bool) -> torch.Tensor:
    """Sum over the vocabulary of d loss / d logits at each data element, ``[B, T]``.

    Under Q = logits a state's loss is ``c_V V(s) - c_Q Q(s, a)``, whose gradient sums to
    ``c_V - c_Q`` over the vocabulary: zero when the state weighs V and Q alike (only the
    policy moves), non-zero when the objective pushes the state's logit level (and with it,
    through ``dV/dlogits = pi``, the policy towards flatter or sharper).
    """
    generator = torch.Generator().manual_seed(0)
    data_logits = torch.randn((*data.sequences.shape, VOCAB), generator=generator, dtype=DTYPE)
    model_logits = torch.randn((*model.sequences.shape, VOCAB), generator=generator, dtype=DTYPE)
    data_logits.requires_grad_()
    terms = sm_loss(
        data_logits, data, model_logits, model, BK, EOS, gamma=0.9, alpha=1e12, beta=beta,
        balance_noise=balance,
    )  # fmt: skip
    (gradient,) = torch.autograd.grad(terms.loss, data_logits)
    return gradient.sum(-1)  # [B, T]


MID = ([P], [A, X, BK, EOS], [True, False, True, True])  # a wrong token after a data token
G = 0.9  # gamma of the balance tests


@pytest.mark.parametrize("beta", [0.25, 0.5, 0.9])
@pytest.mark.parametrize(
    ("row", "total", "unbalanced"),
    [
        # (row, expert weight, level gradients x total without the balance, elements 0..)
        (NOISY, G + G**2 + G**3, lambda b: [0.0, -(1 - b) * G, 0.0, 0.0]),
        (MID, 1 + G**2 + G**3, lambda b: [-(1 - b), (1 - b) * G, -(1 - b) * G**2, 0.0]),
    ],
    ids=["noise-first", "noise-mid-row"],
)
def test_every_state_of_a_noise_row_weighs_value_and_q_alike(beta, row, total, unbalanced):
    data = make_batch([row])
    model = make_batch([([P], [A, A, EOS], [True] * 3)])
    level = level_gradients(data, model, beta, balance=True)[0]
    # element 0, the prompt's last (the initial state): -(1 - beta) / total, which the model
    # rows' +(1 - beta) at their own initial state meets; every later state is balanced
    assert float(level[0]) == pytest.approx(-(1 - beta) / total, abs=1e-12)
    assert level[1:4].abs().max() < 1e-12
    # element 4, the absorbing state after <eos> (step 3): the row's other remainder,
    # +(1 - beta) gamma w V(s_T), which the model rows' terminal states meet
    assert float(level[4]) == pytest.approx((1 - beta) * G * G**3 / total, abs=1e-12)

    # Without the wrong token's share the state before it and the state after it are not
    # balanced (and a wrong token first leaves the initial state without its -(1 - beta)).
    before = level_gradients(data, model, beta, balance=False)[0] * total
    assert before[:4].tolist() == pytest.approx(unbalanced(beta), abs=1e-12)


@pytest.mark.parametrize("reading", ["none", "offset", "normalised"])
def test_the_online_optimum_with_noise_rows_is_the_expert_policy(reading):
    """Data: S0 -a-> S1 -eos (twice, once with a deleted wrong token) and S0 -eos. Model
    rows that end from the same prompt. With alpha -> infinity the objective is the NLL plus
    (1 - beta) times the difference of two telescoping sums that cancel, so its optimum is the
    data's policy: pi(a | S0) = 2/3, pi(<eos> | S0) = 1/3, pi(<eos> | S1) = 1, pi(<bkspc> | SX)
    = 1, for every reading of Q. (The model rows are as long as the data rows on average:
    each batch's sum is divided by its own total weight, docs/method.md.)"""
    data = make_batch([CLEAN, NOISY, SHORT])
    model = make_batch([([P], [X, EOS], [True, True]), ([P], [A, EOS], [True, True])])
    index, model_index = state_index(data), state_index(model)
    values = torch.tensor([1.0, -2.0, 3.0], dtype=DTYPE)  # b(s) of S0, S1, SX (any b will do)

    def loss(table):
        offsets = None
        if reading != "none":
            offsets = (scatter(values[:, None], index)[..., 0],
                       scatter(values[:, None], model_index)[..., 0])  # fmt: skip
        return sm_loss(
            scatter(table, index), data, scatter(table, model_index), model, BK, EOS,
            gamma=1.0, alpha=1e9, beta=0.5, offsets=offsets, normalise=reading == "normalised",
        ).loss  # fmt: skip

    table = minimise(
        loss,
        torch.zeros(3, VOCAB, dtype=DTYPE),
    )
    at_start = policy(table, 0, False)
    assert float(at_start[A] / at_start[EOS]) == pytest.approx(2.0, rel=0.02)
    assert float(policy(table, 1, True)[EOS]) > 0.99
    assert float(policy(table, 2, True)[BK]) > 0.99


# ---------------------------------------------------------------------- what the regulariser trains


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_a_value_only_data_regulariser_keeps_the_data_policy_when_the_value_cannot_fit(alpha):
    """Data-only objective, normalised reading with a value that cannot fit (b = 0 in every
    state): then r = log pi(a|s) on every transition, and the full gradient of the data's
    ``r^2 / (4 alpha)`` penalises squared surprisal. At S0 the data takes ``a`` twice as often
    as ``<eos>``; the full objective's optimum gives the rarer ``<eos>`` more than its 1/3
    (the likelihood of each action reweighted by ``1 - r / (2 alpha)``, docs/method.md,
    "Gradient"); with the regulariser training the value alone, the optimum is the data's."""
    data = make_batch([CLEAN, CLEAN, SHORT])
    index = state_index(data)
    zero = torch.zeros(data.sequences.shape, dtype=DTYPE)  # b(s) = 0: a value that cannot fit

    def optimum(data_regulariser: str) -> float:
        def loss(table):
            return train_loss(
                scatter(table, index), data, None, None, BK, EOS, sm_weight=0.5, gamma=1.0,
                alpha=alpha, offsets=(zero, None), normalise=True,
                data_regulariser=data_regulariser,
            ).loss  # fmt: skip

        at_start = policy(minimise(loss, torch.zeros(3, VOCAB, dtype=DTYPE)), 0, False)
        return float(at_start[A] / at_start[EOS])

    assert optimum("value") == pytest.approx(2.0, rel=0.01)
    assert optimum("full") < 1.9
