"""One optimiser step, top to bottom: micro-batches -> forward (dense or chunked logits) ->
the loss (:func:`~sequencematch.core.objectives.training_loss`, which reads each state's Q,
V and V' off the logits) -> backward -> clip -> optimiser update. The loop around it lives
in :mod:`.trainer`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..core.actions import Batch
from ..core.chunked_logits import ChunkedLogits
from ..core.forward import chunked_state_logits, precision_body_dtype, state_logits
from ..core.objectives import ObjectiveConfig, TrainingLoss, gradient_shares, training_loss
from .batches import MicroBatch, Totals
from .bkspc_row import RowLearningRate
from .distributed import World, all_ranks_true, sum_over_ranks
from .errors import TrainingError
from .sharding import gradient_sync, total_gradient_norm
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
        grad_norm = self.gradient_norm()
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
        batch = batch.to(self.device)
        logits, hidden = self.state_logits(batch)  # [B, T, V] float32, [B, T, H]
        data = Batch(*(t[:data_count] for t in batch.__dict__.values()))
        model = Batch(*(t[data_count:] for t in batch.__dict__.values()))
        with_model = objective.kind == "online"
        offsets = None
        if self.value_head is not None:
            b = self.value_head(hidden)  # [B, T] b(s) of the state after each element
            offsets = (b[:data_count], b[data_count:] if with_model else None)
        result = training_loss(
            logits[:data_count], data, logits[data_count:] if with_model else None,
            model if with_model else None, self.bkspc_id, self.eos_id, objective,
            sm_weight=weight, totals=totals, offsets=offsets,
        )  # fmt: skip
        if not logged or not isinstance(logits, torch.Tensor) or weight == 0.0:
            return result, {}
        return result, gradient_shares(result, weight, logits)

    def state_logits(
        self, batch: Batch
    ) -> tuple[torch.Tensor | ChunkedLogits, torch.Tensor | None]:
        """``[B, T, V]`` logits of the batch's states, float32 (padding rows of the vocabulary
        cut), and the ``[B, T, H]`` last hidden states when the value head reads them. fp32:
        one plain forward; bf16/fp16: the body under autocast and the LM head in float32
        (autocast over the whole model would round the logits, and the rewards
        ``r = Q - gamma V'`` read off them, to bf16's 0.125 steps at logit 16)."""
        # sharded: the blocks' own mixed-precision policy casts (no autocast); the root
        # (final norm, LM head) is float32, so a plain forward's logits are float32 already
        body_dtype = None if self.sharded else precision_body_dtype(self.precision)
        rows = (batch.sequences, batch.prompt_lengths, batch.lengths, self.bkspc_id)
        if self.logits_chunk_mb and self.head_rows == self.vocab_size:
            chunk = max(1, self.logits_chunk_mb * 2**20 // (4 * self.head_rows))
            chunked = chunked_state_logits(
                self.network, *rows, validate=False, body_dtype=body_dtype, chunk_tokens=chunk
            )  # [B, T, V] read a chunk of states at a time
            return chunked, chunked.hidden if self.value_head is not None else None
        hidden = None
        if body_dtype is None and self.value_head is None:
            logits = state_logits(self.network, *rows, validate=False)
        else:
            chunked = chunked_state_logits(
                self.network, *rows, validate=False, body_dtype=body_dtype, recompute=False
            )
            logits, hidden = chunked.dense(), chunked.hidden  # [B, T, V], [B, T, H]
        return logits[..., : self.vocab_size].float(), hidden

    def gradient_norm(self) -> float:
        """The global gradient norm (clipped to ``clip_grad`` when that is set)."""
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        if self.sharded:
            return total_gradient_norm(parameters, self.clip_grad)
        if self.clip_grad > 0:
            return float(torch.nn.utils.clip_grad_norm_(parameters, self.clip_grad))
        norms = [torch.linalg.vector_norm(p.grad.detach().float()) for p in parameters]
        return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0

    def fail(self, what: str) -> None:
        """Drop the step's gradients and stop, saying where the run can continue from."""
        self.optimizer.zero_grad(set_to_none=True)
        raise TrainingError(f"{what} {self.advice()}")
