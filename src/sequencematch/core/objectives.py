"""Training objectives: MLE and the SequenceMatch (IQ-Learn) loss (docs/method.md).

Each loss is a pure function of per-state ``[B, T]`` tensors, the :class:`Transitions` that
:func:`~sequencematch.core.transitions.transitions` reads off one-pass logits (Q of the
action taken, V, V', flags): :func:`loss_from_transitions` (the training loss),
:func:`sequencematch_terms` and :func:`mle_term` never see logits. :func:`training_loss`,
:func:`sequencematch_loss` and :func:`mle_loss` take logits: they read the transitions
(:func:`loss_transitions`), then call those.

Everything is vectorised over the batch and the sequence, in the dtype of the logits. Pass
float32 (or float64) logits: bfloat16 cannot even represent ``gamma=0.998`` (it rounds to
0.996), nor ``V`` to the precision ``r`` needs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch

from .actions import Batch
from .chunked_logits import ChunkedLogits
from .transition_stats import transition_statistics
from .transitions import Transitions, transitions

Phi = Callable[[torch.Tensor, float], torch.Tensor]
"""``phi(x, alpha) -> tensor``: the concave function of the reward in the imitation term
(``alpha`` is only used by ``chi2``)."""

DEFAULT_ALPHA = 10.0
"""The chi2 regulariser scale of every entry point (loss functions, phis, the configuration):
larger alpha, weaker regulariser (docs/method.md, "Gradient")."""
OBJECTIVE_KINDS = ("mle", "offline", "online")
Q_READINGS = ("none", "offset", "normalised")
TERMINAL_VALUES = ("zero", "learned")
DATA_REGULARISERS = ("full", "value")


@dataclass(frozen=True)
class ObjectiveConfig:
    """What a training step minimises (docs/method.md, "The objective"); checked when built.

    Attributes:
        kind: ``mle`` (the likelihood alone), ``offline`` (``lambda_mle`` MLE plus
            ``1 - lambda_mle`` the data-only SequenceMatch objective: no model rows) or
            ``online`` (the same with model rows mixed in at ``1 - beta``).
        divergence: the phi of the imitation term (a key of :data:`PHI`).
        gamma: discount of the occupancy measure, in ``(0, 1]``.
        alpha: chi2 regulariser scale (only ``chi2`` reads it).
        beta: weight of data transitions in the mixture (only ``online`` reads it).
        lambda_mle: weight of the MLE loss in the total.
        q_reading: how logits are read as Q: ``none`` (``Q = logits``), ``offset``
            (``Q = logits + b(s)``) or ``normalised`` (``Q = log pi + b(s)``); ``b`` are the
            offsets passed to the loss (see :func:`transitions`).
        terminal_value: ``learned`` (the absorbing state after ``<eos>`` has a read value)
            or ``zero``.
        balance_noise: noise rows telescope in the value term (:func:`sequencematch_loss`).
        data_regulariser: ``full`` or ``value`` (:func:`sequencematch_loss`).
    """

    kind: str = "online"
    divergence: str = "chi2"
    gamma: float = 0.998
    alpha: float = DEFAULT_ALPHA
    beta: float = 0.5
    lambda_mle: float = 0.5
    q_reading: str = "none"
    terminal_value: str = "learned"
    balance_noise: bool = True
    data_regulariser: str = "full"

    def __post_init__(self) -> None:
        """Raise ``ValueError`` (one line, naming the field) for a value outside its range."""
        if self.kind not in OBJECTIVE_KINDS:
            raise ValueError(f"kind must be one of {OBJECTIVE_KINDS}, got {self.kind!r}")
        get_phi(self.divergence)
        _check_gamma(self.gamma)
        alpha = self.alpha
        if not (isinstance(alpha, (int, float)) and alpha > 0 and math.isfinite(alpha)):
            raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
        if not (isinstance(self.beta, (int, float)) and 0.0 <= self.beta <= 1.0):
            raise ValueError(f"beta must lie in [0, 1], got {self.beta!r}")
        if not (isinstance(self.lambda_mle, (int, float)) and 0.0 <= self.lambda_mle <= 1.0):
            raise ValueError(f"lambda_mle must lie in [0, 1], got {self.lambda_mle!r}")
        for name, valid in (("q_reading", Q_READINGS), ("terminal_value", TERMINAL_VALUES),
                            ("data_regulariser", DATA_REGULARISERS)):  # fmt: skip
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {valid}, got {getattr(self, name)!r}")

    @property
    def sm_weight(self) -> float:
        """The SequenceMatch loss's weight ``w`` (the MLE loss gets ``1 - w``): 0 for ``mle``."""
        return 0.0 if self.kind == "mle" else 1.0 - self.lambda_mle

    @property
    def normalise(self) -> bool:
        """Whether Q is read from the log-softmax (``q_reading normalised``)."""
        return self.q_reading == "normalised"

    @property
    def learned_terminal(self) -> bool:
        """Whether the state after ``<eos>`` has a learned value."""
        return self.terminal_value == "learned"

    def replace(self, **changes: object) -> ObjectiveConfig:
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _check_gamma(gamma: float) -> None:
    if not (isinstance(gamma, (int, float)) and 0.0 < gamma <= 1.0):
        raise ValueError(f"gamma must lie in (0, 1], got {gamma!r}")


def _weighted_mean(
    x: torch.Tensor,
    trans: Transitions,
    gamma: float,
    total: float | None = None,
    over: torch.Tensor | None = None,
) -> torch.Tensor:
    """``sum(w * x) / sum(w)`` over the masked transitions, ``w = gamma ** step``.

    ``torch.where`` (not a product with a 0/1 mask) keeps whatever ``x`` holds elsewhere out
    of the value and the gradient. ``total`` replaces ``sum(w)`` when this batch is one
    shard of a larger one (gradient accumulation, data parallel): see :func:`weight_total`.
    ``over``: sum over these elements instead of the expert ones (still divided by the
    expert transitions' total weight).
    """
    steps = torch.pow(torch.as_tensor(gamma, dtype=x.dtype, device=x.device), trans.step)
    over = trans.mask if over is None else over
    numerator = torch.where(over, steps * x, 0.0).sum()  # [B, T] -> scalar
    return numerator / (torch.where(trans.mask, steps, 0.0).sum() if total is None else total)


def weight_total(batch: Batch, gamma: float) -> float:
    """``sum(gamma ** step)`` over the expert transitions of ``batch``, without logits.

    Split a batch into shards, pass the whole batch's total to each shard's loss, and the
    shard losses sum to the whole batch's loss (so do their gradients).
    """
    _check_gamma(gamma)
    index = torch.arange(batch.sequences.shape[1])  # [T]
    prompt, length = batch.prompt_lengths.cpu()[:, None], batch.lengths.cpu()[:, None]
    expert = batch.expert.cpu() & (index >= prompt) & (index < length)  # [B, T]
    steps = (index[None, :] - prompt).clamp(min=0).to(torch.float64)  # [B, T]
    return float(torch.where(expert, gamma**steps, 0.0).sum())


def _require_transitions(trans: Transitions, what: str) -> None:
    if not bool(trans.mask.any()):
        raise ValueError(
            f"the {what} batch has no expert transitions to average over (every row is "
            "prompt only, or every action is flagged as non-expert)"
        )


# --------------------------------------------------------------------------------------
# MLE
# --------------------------------------------------------------------------------------


def mle_term(trans: Transitions, gamma: float = 1.0, total: float | None = None) -> torch.Tensor:
    """``E_data[-log pi(a|s)]``, the ``gamma ** step``-weighted mean of ``V(s) - Q(s, a)``
    over the expert transitions of ``trans`` (the same in every reading of Q)."""
    if total is None:
        _require_transitions(trans, "data")
    return _weighted_mean(trans.v - trans.q, trans, gamma, total)


def mle_loss(
    logits: torch.Tensor | ChunkedLogits,
    batch: Batch,
    bkspc_id: int | None,
    gamma: float = 1.0,
    total: float | None = None,
) -> torch.Tensor:
    """Weighted negative log-likelihood ``E_data[-log pi(a|s)]`` over expert transitions.

    ``pi`` is the softmax over valid actions (``<bkspc>`` masked at the prompt boundary);
    each transition is weighted by ``gamma ** step`` and the sum is normalised by the total
    weight, so ``gamma=1`` is the plain per-action mean. Excluded noise actions and padding
    never enter. This is the reference SequenceMatch reduces to (docs/method.md, "The objective").
    ``total``: the normaliser of the whole batch when ``batch`` is a shard of it
    (:func:`weight_total`); a shard may then hold no expert transition.
    """
    _check_gamma(gamma)
    return mle_term(transitions(logits, batch, bkspc_id, eos_id=None), gamma, total)


# --------------------------------------------------------------------------------------
# phi registry
# --------------------------------------------------------------------------------------
# IQ-Learn (Garg et al. 2021, section 4 and its f-divergence appendix) writes the imitation
# term as E_data[phi(r)] with phi(x) = -f*(-x), f* the convex conjugate of the divergence's
# generator f. The conjugates below are those of the f-GAN table (Nowozin et al. 2016,
# Table 2); the derivatives match the `phi_grad` weights of the public IQ-Learn code
# (hellinger 1/(1+r)^2, kl exp(-r-1), js exp(-r)/(2-exp(-r))).
#   chi2 (Pearson, f = alpha (u-1)^2):  f*(t) = t + t^2/(4 alpha)  -> phi = x - x^2/(4 alpha)
#   kl (forward, f = u log u):          f*(t) = exp(t - 1)         -> phi = -exp(-(x+1))
#   reverse_kl (f = -log u):            f*(t) = -1 - log(-t), t<0  -> phi = 1 + log x, x > 0
#   js (f-GAN's Jensen-Shannon):        f*(t) = -log(2 - e^t), t<log 2 -> phi = log(2 - e^-x),
#                                                                        x > -log 2
#   hellinger (squared, (sqrt u - 1)^2): f*(t) = t/(1-t), t<1      -> phi = x/(1+x), x > -1
#   tv (f = |u-1|/2):                   f*(t) = t on |t| <= 1/2    -> phi = x on [-1/2, 1/2]
#
# Keeping the loss and its gradient finite: phi is concave and increasing, and where it
# leaves a restricted domain (reverse_kl, js, hellinger) or overflows (kl's exp at very
# negative x), it is continued below a point x0 by its tangent at x0, with x0 chosen so that
# phi'(x0) = _MAX_SLOPE. This is a clamp of x into the domain (with margin) that keeps a
# constant, bounded gradient instead of a zero one, so a transition whose reward falls out
# of the domain is still pushed back up. Above x0 phi is exact. tv is clipped (its
# conjugate only exists on [-1/2, 1/2]; the gradient is zero outside, as in the f-GAN form).

_MAX_SLOPE = 1.0e3
"""Largest gradient ``phi'(x)`` the domain-restricted phis reach (see the note above)."""


def _tangent_below(
    x: torch.Tensor,
    x0: float,
    phi: Callable[[torch.Tensor], torch.Tensor],
    slope: float,
) -> torch.Tensor:
    """``phi(x)`` for ``x >= x0``, the tangent ``phi(x0) + slope * (x - x0)`` below."""
    inside = phi(x.clamp(min=x0))  # [...] exact and finite (evaluated inside the domain)
    at_x0 = phi(torch.full((), x0, dtype=x.dtype, device=x.device))
    return torch.where(x < x0, at_x0 + slope * (x - x0), inside)


def phi_chi2(x: torch.Tensor, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """Pearson chi^2: ``x - x^2 / (4 alpha)`` (defined everywhere)."""
    return x - x.square() / (4.0 * alpha)


def phi_kl(x: torch.Tensor, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """Forward KL: ``-exp(-(x + 1))``; tangent below ``x0 = -1 - log(_MAX_SLOPE)``."""
    x0 = -1.0 - math.log(_MAX_SLOPE)
    return _tangent_below(x, x0, lambda y: -torch.exp(-(y + 1.0)), _MAX_SLOPE)


def phi_reverse_kl(x: torch.Tensor, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """Reverse KL: ``1 + log(x)`` on ``x > 0``; tangent below ``x0 = 1 / _MAX_SLOPE``."""
    return _tangent_below(x, 1.0 / _MAX_SLOPE, lambda y: 1.0 + torch.log(y), _MAX_SLOPE)


def phi_js(x: torch.Tensor, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """Jensen-Shannon: ``log(2 - exp(-x))`` on ``x > -log 2``; tangent below
    ``x0 = log((1 + S) / (2 S))`` where ``phi'(x0) = S = _MAX_SLOPE``."""
    x0 = math.log((1.0 + _MAX_SLOPE) / (2.0 * _MAX_SLOPE))
    return _tangent_below(x, x0, lambda y: torch.log(2.0 - torch.exp(-y)), _MAX_SLOPE)


def phi_hellinger(x: torch.Tensor, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """Squared Hellinger: ``x / (1 + x)`` on ``x > -1``; tangent below
    ``x0 = -1 + 1/sqrt(_MAX_SLOPE)`` where ``phi'(x0) = 1/(1+x0)^2 = _MAX_SLOPE``."""
    x0 = -1.0 + 1.0 / math.sqrt(_MAX_SLOPE)
    return _tangent_below(x, x0, lambda y: y / (1.0 + y), _MAX_SLOPE)


def phi_tv(x: torch.Tensor, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """Total variation: ``x`` clipped to ``[-1/2, 1/2]``."""
    return x.clamp(-0.5, 0.5)


PHI: dict[str, Phi] = {
    "chi2": phi_chi2,
    "kl": phi_kl,
    "reverse_kl": phi_reverse_kl,
    "js": phi_js,
    "hellinger": phi_hellinger,
    "tv": phi_tv,
}


def get_phi(name: str) -> Phi:
    """The phi function called ``name`` (a key of :data:`PHI`)."""
    if name not in PHI:
        raise ValueError(f"unknown divergence {name!r}; valid names: {', '.join(sorted(PHI))}")
    return PHI[name]


# --------------------------------------------------------------------------------------
# SequenceMatch
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SequenceMatchTerms:
    """The SequenceMatch loss, its terms and detached statistics (all 0-d tensors).

    ``loss = imitation + value + regulariser``. Statistics are plain (unweighted) means over
    the expert transitions of the data batch and, when given, the model batch;
    ``r_model_mean`` is NaN without a model batch. ``by_kind``: r, V and log pi per kind of
    transition (:func:`~sequencematch.core.transition_stats.transition_statistics`).
    """

    loss: torch.Tensor
    imitation: torch.Tensor
    value: torch.Tensor
    regulariser: torch.Tensor
    v_mean: torch.Tensor
    r_mean: torch.Tensor
    r_std: torch.Tensor
    r_data_mean: torch.Tensor
    r_model_mean: torch.Tensor
    by_kind: dict[str, float] = field(default_factory=dict, compare=False)

    def as_floats(self) -> dict[str, float]:
        """Every tensor field as a Python float, for logging."""
        return {f.name: float(getattr(self, f.name).detach()) for f in fields(self)
                if f.name != "by_kind"}  # fmt: skip


def sequencematch_terms(
    data_t: Transitions,
    model_t: Transitions | None,
    objective: ObjectiveConfig | None = None,
    *,
    totals: tuple[float | None, float | None] | None = None,
) -> SequenceMatchTerms:
    """The SequenceMatch objective of docs/method.md, "The objective" (minimised), from the
    data rows' transitions and, when given, the model rows' (each read as ``objective``
    reads Q: :func:`objective_transitions`).

    With ``r = Q(s,a) - gamma (1-done) V(s')``, ``value = V(s) - gamma (1-done) V(s')`` and
    ``E_data`` / ``E_model`` the ``gamma ** step``-weighted means over the expert
    transitions of each batch (each normalised by its own total weight),
    ``E_mix = beta E_data + (1-beta) E_model`` (``E_data`` alone without a model batch):

    - ``chi2``: ``-E_data[r] + E_mix[value] + E_mix[r^2] / (4 alpha)`` (the regulariser is
      taken over the mixture, penalising reward on states the model visits);
    - any other phi: ``-E_data[phi(r)] + E_mix[value]``, regulariser 0.

    On data transitions ``-r + value = -log pi(a|s)``, so with ``beta=1`` and ``alpha -> inf``
    this is :func:`mle_loss` with the same ``gamma``.

    ``totals``: ``(data_total, model_total)`` normalisers of the whole data and model
    batches (:func:`weight_total`) when these batches are shards of larger ones; the shard
    losses then sum to the loss of the whole batches.

    ``objective`` (default :class:`ObjectiveConfig`): ``divergence``, ``gamma``, ``alpha``,
    ``beta`` and the options below; its ``kind`` and ``lambda_mle`` are read by
    :func:`loss_from_transitions`, not here.

    ``balance_noise``: with model rows (``beta < 1``), the inserted wrong tokens of data rows
    enter the value term with weight ``-(1 - beta)`` (they stay out of every other term), so
    that every state of a noise row carries as much weight on ``V`` as on ``Q``, as in a
    clean row: the data rows' value term telescopes again (docs/method.md, "Noise rows").
    Without it, the state before a wrong token is pushed down by ``(1 - beta) V(s)`` and the
    state after it up, which under ``Q = logits`` flattens the policy where the noise is.

    ``data_regulariser``: ``full`` (the objective's gradient) or ``value``: in the chi2
    regulariser's ``r^2`` on data transitions, ``r = log pi(a|s) + (V(s) - gamma V(s'))``
    reads ``log pi`` detached, so that term trains the value (``b``, or the logits' level)
    and not the policy: where ``V`` cannot fit the data's surprisal, the full gradient
    reweights the likelihood of each data action by ``1 - beta r / (2 alpha)`` and so
    favours surprising actions (docs/method.md, "Gradient"). The loss's value is the same.

    ``by_kind`` of the result is empty (:func:`sequencematch_loss` fills it).

    Raises:
        ValueError: a batch with no expert transition (without its total).
    """
    objective = ObjectiveConfig() if objective is None else objective
    phi = get_phi(objective.divergence)
    gamma, alpha, beta = objective.gamma, objective.alpha, objective.beta
    data_total, model_total = (None, None) if totals is None else totals
    if data_total is None:
        _require_transitions(data_t, "data")
    r_data = data_t.reward(gamma)  # [B, T]
    value_data = _weighted_mean(data_t.value_difference(gamma), data_t, gamma, data_total)
    r_square = r_data
    if objective.data_regulariser == "value":  # the same r, its log pi part detached
        log_pi = data_t.q - data_t.v  # [B, T]
        r_square = r_data - log_pi + log_pi.detach()  # [B, T]
    square_data = _weighted_mean(r_square.square(), data_t, gamma, data_total)
    if objective.divergence == "chi2":
        imitation = -_weighted_mean(r_data, data_t, gamma, data_total)
    else:
        imitation = -_weighted_mean(phi(r_data, alpha), data_t, gamma, data_total)

    r_parts = [r_data.detach()[data_t.mask]]  # [N_data] rewards, for statistics
    v_parts = [data_t.v.detach()[data_t.mask]]  # [N_data]
    if model_t is None:
        value, square = value_data, square_data
    else:
        if model_total is None:
            _require_transitions(model_t, "model")
        r_model = model_t.reward(gamma)  # [B', T']
        value_model = _weighted_mean(model_t.value_difference(gamma), model_t, gamma, model_total)
        square_model = _weighted_mean(r_model.square(), model_t, gamma, model_total)
        value = beta * value_data + (1.0 - beta) * value_model
        if objective.balance_noise and beta < 1.0:  # the wrong tokens' share of the telescoping sum
            noise_value = _weighted_mean(data_t.value_difference(gamma), data_t, gamma,
                                         data_total, over=data_t.noise)  # fmt: skip
            value = value - (1.0 - beta) * noise_value
        square = beta * square_data + (1.0 - beta) * square_model
        r_parts.append(r_model.detach()[model_t.mask].to(r_data.device))  # [N_model]
        v_parts.append(model_t.v.detach()[model_t.mask].to(r_data.device))  # [N_model]

    if objective.divergence == "chi2":
        regulariser = square / (4.0 * alpha)
    else:
        regulariser = torch.zeros((), dtype=data_t.q.dtype, device=data_t.q.device)
    loss = imitation + value + regulariser

    r_flat = torch.cat(r_parts)  # [N] every expert transition of both batches
    nan = torch.full((), float("nan"), dtype=r_flat.dtype, device=r_flat.device)
    return SequenceMatchTerms(
        loss=loss,
        imitation=imitation,
        value=value,
        regulariser=regulariser,
        v_mean=torch.cat(v_parts).mean(),
        r_mean=r_flat.mean(),
        r_std=r_flat.std(correction=0),
        r_data_mean=r_parts[0].mean(),
        r_model_mean=r_parts[1].mean() if len(r_parts) > 1 else nan,
    )


def objective_transitions(
    data_logits: torch.Tensor | ChunkedLogits,
    data: Batch,
    model_logits: torch.Tensor | ChunkedLogits | None,
    model: Batch | None,
    bkspc_id: int | None,
    eos_id: int | None,
    objective: ObjectiveConfig,
    offsets: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
) -> tuple[Transitions, Transitions | None, dict[str, float]]:
    """The data rows' and (when given) the model rows' transitions as ``objective`` reads Q,
    and their statistics per kind of transition (``data/...``, ``model/...``).

    ``offsets``: ``(data_offsets, model_offsets)``, a learned per-state value offset ``b(s)``
    of each batch (``[B, T]``, or ``None``); with ``objective.q_reading`` and
    ``terminal_value`` they say how Q is read, see :func:`transitions`. None of them changes
    the policy.

    Raises:
        ValueError: mismatched logits, offsets under ``q_reading none``, or whatever
        :func:`transitions` refuses.
    """
    if (model_logits is None) != (model is None):
        raise ValueError("model_logits and model must be given together (or both None)")
    if model_logits is not None:
        if model_logits.dim() != 3 or model_logits.shape[-1] != data_logits.shape[-1]:
            raise ValueError(
                f"model_logits {tuple(model_logits.shape)} and data_logits "
                f"{tuple(data_logits.shape)} must both be [batch, time, vocab] over the "
                "same vocabulary"
            )
        if model_logits.dtype != data_logits.dtype:
            raise ValueError(
                f"model_logits ({model_logits.dtype}) and data_logits ({data_logits.dtype}) "
                "must share a dtype"
            )
    data_offsets, model_offsets = (None, None) if offsets is None else offsets
    if objective.q_reading == "none" and (data_offsets is not None or model_offsets is not None):
        raise ValueError("offsets are read under q_reading offset or normalised, not none")
    reading = dict(normalise=objective.normalise, learned_terminal=objective.learned_terminal)
    data_t = transitions(data_logits, data, bkspc_id, eos_id, offsets=data_offsets, **reading)
    by_kind = transition_statistics(data_t, data.sequences, bkspc_id, objective.gamma, "data/")
    if model is None:
        return data_t, None, by_kind
    model_t = transitions(model_logits, model, bkspc_id, eos_id, offsets=model_offsets,
                          **reading)  # fmt: skip
    by_kind |= transition_statistics(model_t, model.sequences, bkspc_id, objective.gamma,
                                     "model/")  # fmt: skip
    return data_t, model_t, by_kind


def sequencematch_loss(
    data_logits: torch.Tensor | ChunkedLogits,
    data: Batch,
    model_logits: torch.Tensor | ChunkedLogits | None,
    model: Batch | None,
    bkspc_id: int | None,
    eos_id: int | None,
    objective: ObjectiveConfig | None = None,
    *,
    totals: tuple[float | None, float | None] | None = None,
    offsets: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
) -> SequenceMatchTerms:
    """:func:`sequencematch_terms` of the transitions read off the logits of the data rows
    and, when given, the model rows (:func:`objective_transitions`, ``offsets`` there), with
    ``by_kind``: r, V and log pi per kind of transition.

    Raises:
        ValueError: bad hyper-parameters, mismatched shapes, or a batch with no expert
        transition.
    """
    objective = ObjectiveConfig() if objective is None else objective
    data_t, model_t, by_kind = objective_transitions(
        data_logits, data, model_logits, model, bkspc_id, eos_id, objective, offsets
    )
    terms = sequencematch_terms(data_t, model_t, objective, totals=totals)
    return dataclasses.replace(terms, by_kind=by_kind)


# --------------------------------------------------------------------------------------
# The training loss: MLE and SequenceMatch combined
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingLoss:
    """``loss = (1 - w) * mle + w * (imitation + value + regulariser)`` and its parts.

    The SequenceMatch terms are zero when ``w = 0`` (they are not computed then); the
    statistics ``v_mean``, ``r_mean`` and ``r_std`` are ``None`` then, and ``by_kind`` holds
    log pi per kind of transition only (r and V too otherwise).
    """

    loss: torch.Tensor
    mle: torch.Tensor
    imitation: torch.Tensor
    value: torch.Tensor
    regulariser: torch.Tensor
    v_mean: torch.Tensor | None = None
    r_mean: torch.Tensor | None = None
    r_std: torch.Tensor | None = None
    by_kind: dict[str, float] = field(default_factory=dict, compare=False)

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The terms by name; statistics detached, and left out when not computed
        (``by_kind``, plain floats, is read as an attribute)."""
        terms = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "by_kind"}
        return {
            name: value if name in ("loss", "mle", "imitation", "value", "regulariser")
            else value.detach()
            for name, value in terms.items()
            if value is not None
        }  # fmt: skip


@dataclass(frozen=True)
class LossTransitions:
    """What :func:`loss_from_transitions` reads of one batch: per-state ``[B, T]`` tensors.

    Attributes:
        mle: the data rows with ``Q = logits`` (no offsets, ``V(s') = 0`` after ``<eos>``),
            for the MLE term.
        data: the data rows as the objective reads Q, for the SequenceMatch terms; ``None``
            when their weight is 0.
        model: the model rows read the same way (kind ``online``), or ``None``.
        by_kind: statistics per kind of transition, for metrics (``data/...``,
            ``model/...``: :func:`~sequencematch.core.transition_stats.transition_statistics`).
    """

    mle: Transitions
    data: Transitions | None = None
    model: Transitions | None = None
    by_kind: dict[str, float] = field(default_factory=dict, compare=False)


def _sm_weight(
    objective: ObjectiveConfig, sm_weight: float | None, with_model: bool | None
) -> float:
    """``sm_weight`` (default ``objective.sm_weight``), checked against ``objective`` and,
    unless ``with_model`` is ``None``, against whether model rows are given."""
    weight = objective.sm_weight if sm_weight is None else sm_weight
    if not (isinstance(weight, (int, float)) and 0.0 <= weight <= 1.0):
        raise ValueError(f"sm_weight must lie in [0, 1], got {weight!r}")
    if objective.kind == "mle" and weight != 0.0:
        raise ValueError(f"kind mle is MLE alone: sm_weight must be 0, got {weight!r}")
    if objective.kind == "online" and with_model is False:
        raise ValueError("kind online needs model rows (model_logits and model)")
    if objective.kind == "offline" and with_model:
        raise ValueError("kind offline reads data rows only: pass model_logits and model None")
    return weight


def loss_transitions(
    data_logits: torch.Tensor | ChunkedLogits,
    data: Batch,
    model_logits: torch.Tensor | ChunkedLogits | None,
    model: Batch | None,
    bkspc_id: int | None,
    eos_id: int | None,
    objective: ObjectiveConfig,
    *,
    sm_weight: float | None = None,
    offsets: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
) -> LossTransitions:
    """Read off the logits what :func:`training_loss` needs (arguments as there): the data
    rows with ``Q = logits`` for the MLE term and, when the SequenceMatch weight is not 0,
    the data and model rows as ``objective`` reads Q (:func:`objective_transitions`)."""
    weight = _sm_weight(objective, sm_weight, model is not None or model_logits is not None)
    plain = transitions(data_logits, data, bkspc_id, eos_id,
                        learned_terminal=False)  # fmt: skip  # Q = logits: log pi = q - v
    if weight == 0.0:
        by_kind = transition_statistics(plain, data.sequences, bkspc_id, objective.gamma,
                                        "data/", with_values=False)  # fmt: skip
        return LossTransitions(plain, by_kind=by_kind)
    data_t, model_t, by_kind = objective_transitions(
        data_logits, data, model_logits, model, bkspc_id, eos_id, objective, offsets
    )
    return LossTransitions(plain, data_t, model_t, by_kind)


def loss_from_transitions(
    trans: LossTransitions,
    objective: ObjectiveConfig,
    *,
    sm_weight: float | None = None,
    totals: tuple[float | None, float | None, float | None] | None = None,
) -> TrainingLoss:
    """The training loss ``(1 - w) * MLE + w * L_SM`` of per-state transitions (see
    :func:`training_loss`): :func:`mle_term` of ``trans.mle`` (``gamma = 1``) and
    :func:`sequencematch_terms` of ``trans.data`` and ``trans.model`` (``beta = 1`` for kind
    ``offline``); ``trans.by_kind`` passes through.

    Raises:
        ValueError: ``sm_weight`` outside ``[0, 1]`` (or not 0 for kind ``mle``), transitions
        missing for a weight above 0, model rows that do not fit the kind, or a batch with
        no expert transition (without its total).
    """
    with_model = None if trans.data is None else trans.model is not None
    weight = _sm_weight(objective, sm_weight, with_model)
    mle_total, data_total, model_total = (None, None, None) if totals is None else totals
    mle = mle_term(trans.mle, 1.0, mle_total)
    if weight == 0.0:
        zero = torch.zeros((), dtype=mle.dtype, device=mle.device)
        return TrainingLoss(mle, mle, zero, zero, zero, by_kind=trans.by_kind)
    if trans.data is None:
        raise ValueError("a SequenceMatch weight above 0 needs the data rows' transitions")
    if objective.kind == "offline":
        objective = objective.replace(beta=1.0)
    terms = sequencematch_terms(trans.data, trans.model, objective,
                                totals=(data_total, model_total))  # fmt: skip
    return TrainingLoss(
        loss=(1.0 - weight) * mle + weight * terms.loss,
        mle=mle,
        imitation=terms.imitation,
        value=terms.value,
        regulariser=terms.regulariser,
        v_mean=terms.v_mean.detach(),
        r_mean=terms.r_mean.detach(),
        r_std=terms.r_std.detach(),
        by_kind=trans.by_kind,
    )


def training_loss(
    data_logits: torch.Tensor | ChunkedLogits,
    data: Batch,
    model_logits: torch.Tensor | ChunkedLogits | None,
    model: Batch | None,
    bkspc_id: int | None,
    eos_id: int | None,
    objective: ObjectiveConfig,
    *,
    sm_weight: float | None = None,
    totals: tuple[float | None, float | None, float | None] | None = None,
    offsets: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
) -> TrainingLoss:
    """The loss a training step minimises: ``(1 - w) * MLE + w * L_SM``.

    ``MLE`` is :func:`mle_loss` on the data rows (``gamma = 1``: the plain per-action mean);
    ``L_SM`` is :func:`sequencematch_loss` as ``objective`` says: on the data rows alone for
    kind ``offline`` (``beta = 1``), on the data and the model rows for kind ``online``; kind
    ``mle`` is MLE alone and never reads model rows. ``w = sm_weight``, by default
    ``objective.sm_weight`` (``1 - lambda_mle``: docs/method.md's
    ``lambda_mle * L_MLE + (1 - lambda_mle) * L_SM``); a schedule may pass another (a ramp).

    ``totals``: ``(mle_total, data_total, model_total)`` normalisers of the whole step when
    these rows are one micro-batch of it (:func:`weight_total`; gamma 1 for the first).
    ``offsets``: the value offsets ``b(s)`` of the data and model rows (:func:`transitions`);
    the MLE term does not depend on them, nor on how ``objective`` reads Q.

    The same as :func:`loss_from_transitions` of :func:`loss_transitions`.

    Raises:
        ValueError: ``sm_weight`` outside ``[0, 1]`` (or not 0 for kind ``mle``), model rows
        missing for kind ``online`` or given for kind ``offline``, or whatever the two losses
        refuse.
    """
    trans = loss_transitions(data_logits, data, model_logits, model, bkspc_id, eos_id,
                             objective, sm_weight=sm_weight, offsets=offsets)  # fmt: skip
    return loss_from_transitions(trans, objective, sm_weight=sm_weight, totals=totals)


def gradient_shares(result: TrainingLoss, weight: float, logits: torch.Tensor) -> dict[str, float]:
    """Each weighted term's share of the summed gradient norms at the logits: which term
    moves the policy (a term acting on the value head alone has share 0)."""
    parts = {"mle": (1.0 - weight) * result.mle, "imitation": weight * result.imitation,
             "value": weight * result.value,
             "regulariser": weight * result.regulariser}  # fmt: skip
    norms = {}
    for name, term in parts.items():
        if not term.requires_grad:
            continue
        (gradient,) = torch.autograd.grad(term, logits, retain_graph=True, allow_unused=True)
        norms[name] = 0.0 if gradient is None else float(torch.linalg.vector_norm(gradient))
    total = sum(norms.values())
    return {f"grad_share/{name}": norm / total for name, norm in norms.items()} if total else {}
