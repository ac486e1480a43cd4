"""What each optimiser step does: its phase, the SequenceMatch weight, its learning rate.

Steps are counted from 1. A SequenceMatch run has two phases: a warm-up of
:meth:`TrainConfig.mle_warmup` steps on data alone (plain MLE, or the data-only objective
with ``regularise_warmup``), then the SequenceMatch phase, which adds the model's own
samples. An MLE run is one phase, and so is an offline run (the data-only objective
throughout, logged as phase ``mle``: no model samples).
"""

from __future__ import annotations

import math

from ..core.objectives import ObjectiveConfig
from .config import TrainConfig


def phase_at(config: TrainConfig, step: int) -> str:
    """``"mle"`` (no model samples) or ``"sequencematch"`` at ``step``."""
    if config.method == "mle" or step <= config.mle_warmup():
        return "mle"
    return "sequencematch"


def sm_weight(config: TrainConfig, step: int) -> float:
    """Weight ``w`` of the SequenceMatch loss at ``step``; the MLE loss gets ``1 - w``.

    0 for MLE and for a plain warm-up; ``1 - lambda_mle`` through a regularised warm-up
    and after it; after a plain warm-up, ``1 - lambda_mle`` reached linearly over
    ``sm_ramp_steps``.
    """
    if config.method == "mle":
        return 0.0
    full = 1.0 - config.lambda_mle
    warmup = config.mle_warmup()
    if config.regularise_warmup or config.method == "offline":
        return full
    if step <= warmup:
        return 0.0
    return full * min(1.0, (step - warmup) / max(1, config.sm_ramp_steps))


def objective_at(objective: ObjectiveConfig, config: TrainConfig, step: int) -> ObjectiveConfig:
    """The run's ``objective`` as ``step`` reads it: kind ``mle`` for method ``mle`` and a
    plain warm-up, ``online`` where model rows join (:func:`phase_at`), ``offline`` for the
    data-only objective before (a regularised warm-up, or method ``offline``)."""
    if config.method == "mle":
        kind = "mle"
    elif phase_at(config, step) == "sequencematch":
        kind = "online"
    else:
        kind = "offline" if sm_weight(config, step) > 0.0 else "mle"
    return objective if objective.kind == kind else objective.replace(kind=kind)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total`` steps.

    ``step`` counts from 0 (the scheduler's index: step ``s`` is optimiser step ``s + 1``).
    """
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_at(config: TrainConfig, index: int) -> float:
    """The learning-rate factor of scheduler index ``index`` (optimiser step ``index + 1``).

    ``cosine``: one warm-up and one cosine over all ``steps``. ``per_phase``: the warm-up
    phase and the SequenceMatch phase each get their own linear warm-up (``warmup_steps``,
    at most half the phase) and a cosine down to ``min_ratio`` over the phase, so the
    SequenceMatch phase starts at the peak learning rate instead of the tail of one cosine.
    """
    boundary = config.mle_warmup()
    if config.lr_schedule == "cosine" or not 0 < boundary < config.steps:
        return lr_factor(index, config.warmup_steps, config.steps, config.min_lr_ratio)
    start, length = (0, boundary) if index < boundary else (boundary, config.steps - boundary)
    warmup = min(config.warmup_steps, length // 2)
    return lr_factor(index - start, warmup, length, config.min_lr_ratio)
