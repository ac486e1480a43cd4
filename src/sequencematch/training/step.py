"""One optimiser step, top to bottom: micro-batches -> forward (dense or chunked logits) ->
the per-state ``[B, T]`` tensors read off them (Q of the action taken, V, V' and flags:
``loss_transitions``) -> the loss, a pure function of those (``loss_from_transitions``, both
in :mod:`~sequencematch.core.objectives`) -> backward -> clip -> optimiser update. The loop
around it lives in :mod:`.trainer`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..core.actions import Batch
from ..core.forward import loss_logits, precision_body_dtype
from ..core.objectives import (
    ObjectiveConfig,
    TrainingLoss,
    gradient_shares,
    loss_from_transitions,
    loss_transitions,
)
from .batches import MicroBatch, Totals
from .bkspc_row import RowLearningRate
from .distributed import World, all_ranks_true, sum_over_ranks
from .errors import TrainingError
from .sharding import gradient_norm, gradient_sync
from .value_head import ValueHead, average_gradients

LOSS_TERMS = ("loss", "mle", "imitation", "value", "regulariser")
STATISTICS = ("v_mean", "r_mean", "r_std")  # means over micro-batches and processes


@dataclass
class TrainStep:
    """What one step updates and reads: the model (``network``: its DDP wrapper, or itself),
    the optimiser, its schedule and fp16 scaler, and the value head ``b(s)`` when Q reads one.
    ``advice()`` says where a stopped run can continue from."""

    model: torch.nn.Module
    network: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    value_head: ValueHead | None
    row_lr: RowLearningRate | None
    world: World
    device: torch.device
    precision: str
    sharded: bool
    clip_grad: float
    logits_chunk_mb: int
    vocab_size: int
    head_rows: int  # the embedding's rows, read once (under peft .weight builds a merged copy)
    bkspc_id: int | None
    eos_id: int | None
    advice: Callable[[], str]

    def __call__(
        self, step: int, phase: str, micro: list[MicroBatch], objective: ObjectiveConfig,
        weight: float, logged: bool, extra: dict[str, float],
    ) -> dict[str, Any]:  # fmt: skip
        """Train on this process's micro-batches of ``step``; return its metrics (``extra``
        joins the summed terms)."""
        sums: dict[str, float] = {}
        kinds: dict[str, float] = {}  # statistics per kind of transition: this process's
        finite, bad_term = True, ""
        for index, (batch, data_count, totals) in enumerate(micro):
            with gradient_sync(self.network, sync=index == len(micro) - 1):  # one reduction
                result, shares = self.loss(batch, data_count, totals, objective, weight, logged)
                terms = result.as_dict()
                for name, value in (result.by_kind | shares).items():  # means over micro-batches
                    kinds[name] = kinds.get(name, 0.0) + value / len(micro)
                for name in LOSS_TERMS:
                    value = float(terms[name].detach())
                    if not math.isfinite(value) and finite:
                        finite, bad_term = False, name
                    sums[name] = sums.get(name, 0.0) + value
                for name in STATISTICS:
                    if name in terms:
                        sums[name] = sums.get(name, 0.0) + float(terms[name]) / len(micro)
                # every process must agree before backward, or the gradient all-reduce hangs
                finite = all_ranks_true(self.world, finite, self.device)
                if finite:
                    self.scaler.scale(terms["loss"] * self.world.size).backward()
            if not finite:
                self.fail(f"non-finite {bad_term or 'loss (on another process)'} at step "
                          f"{step} ({phase} phase); training stopped.")  # fmt: skip
        sums = sum_over_ranks(self.world, sums, self.device)
        for name in STATISTICS:  # statistics: mean over processes
            if name in sums:
                sums[name] /= self.world.size
        self.scaler.unscale_(self.optimizer)
        if self.value_head is not None and not average_gradients(self.value_head, self.world):
            self.fail(f"non-finite value-head gradient at step {step}; training stopped.")
        grad_norm = gradient_norm(self.model, self.clip_grad, self.sharded)
        # fp16's scaler skips such a step itself (and lowers its scale); elsewhere it is fatal
        if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
            self.fail(f"non-finite gradient norm at step {step} ({phase} phase); the update "
                      "was not applied and training stopped.")  # fmt: skip
        if self.row_lr is not None:
            self.row_lr.before_step()
        self.scaler.step(self.optimizer)
        if self.row_lr is not None:
            self.row_lr.after_step()  # the <bkspc> row's update at its own learning rate
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        return {**sums, **extra, **kinds, "grad_norm": grad_norm, "lr": lr}

    def loss(self, batch: Batch, data_count: int, totals: Totals, objective: ObjectiveConfig,
             weight: float, logged: bool) -> tuple[TrainingLoss, dict[str, float]]:  # fmt: skip
        """A micro-batch's loss (its first ``data_count`` rows are data, the rest model rows)
        and, on a ``logged`` step, each term's share of the gradient (dense logits only)."""
        # sharded: the blocks' own mixed-precision policy casts (no autocast); the root
        # (final norm, LM head) is float32, so a plain forward's logits are float32 already
        body_dtype = None if self.sharded else precision_body_dtype(self.precision)
        chunk = None  # states per chunk of logits (None: the whole [B, T, V] tensor at once)
        if self.logits_chunk_mb and self.head_rows == self.vocab_size:
            chunk = max(1, self.logits_chunk_mb * 2**20 // (4 * self.head_rows))
        batch = batch.to(self.device)
        logits, hidden = loss_logits(
            self.network, batch, self.bkspc_id, self.vocab_size, body_dtype=body_dtype,
            chunk_tokens=chunk, with_hidden=self.value_head is not None,
        )  # fmt: skip  # [B, T, V] float32, [B, T, H] or None
        data = Batch(*(t[:data_count] for t in batch.__dict__.values()))
        model = Batch(*(t[data_count:] for t in batch.__dict__.values()))
        with_model = objective.kind == "online"
        offsets = None
        if self.value_head is not None:
            b = self.value_head(hidden)  # [B, T] b(s) of the state after each element
            offsets = (b[:data_count], b[data_count:] if with_model else None)
        trans = loss_transitions(  # [B, T] Q of the action taken, V, V' and flags of each row
            logits[:data_count], data, logits[data_count:] if with_model else None,
            model if with_model else None, self.bkspc_id, self.eos_id, objective,
            sm_weight=weight, offsets=offsets,
        )  # fmt: skip
        result = loss_from_transitions(trans, objective, sm_weight=weight, totals=totals)
        if not logged or not isinstance(logits, torch.Tensor) or weight == 0.0:
            return result, {}
        return result, gradient_shares(result, weight, logits)

    def fail(self, what: str) -> None:
        """Drop the step's gradients and stop, saying where the run can continue from."""
        self.optimizer.zero_grad(set_to_none=True)
        raise TrainingError(f"{what} {self.advice()}")
