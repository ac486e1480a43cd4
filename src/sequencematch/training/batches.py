"""Building each step's batches: data rows (with noise), model rows, micro-batches, totals.

Every choice is a function of ``(seed, step)``, and every process builds the same global
batch before taking its share, so a resumed run and a run on ``k`` processes see exactly
the batches of an uninterrupted single-process run.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import NamedTuple

from ..core.actions import Batch, NoiseSource, augment_with_noise, collate
from ..core.examples import Example
from ..core.objectives import weight_total
from .distributed import World
from .replay import Trace


class DataRows(NamedTuple):
    """The global data batch of a step: prompts, (noise-augmented) actions, expert flags."""

    prompts: list[list[int]]
    actions: list[list[int]]
    experts: list[list[bool]]


class Totals(NamedTuple):
    """Normalisers of the whole step (all micro-batches, all processes): the MLE weight
    (gamma 1), the data weight and the model weight (``None`` without model rows)."""

    mle: float
    data: float
    model: float | None


class MicroBatch(NamedTuple):
    """One forward/backward: data rows first, then ``len - data_count`` model rows."""

    batch: Batch
    data_count: int
    totals: Totals


class DataOrder:
    """Which examples each step trains on: epoch-wise shuffles seeded by ``seed``."""

    def __init__(self, examples: Sequence[Example], seed: int, batch_size: int) -> None:
        if not examples:
            raise ValueError("no training examples")
        self.examples = list(examples)
        self.seed = seed
        self.batch_size = batch_size
        self._orders: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(len(self.examples)))
            random.Random(f"{self.seed}-order-{epoch}").shuffle(order)
            self._orders = {epoch: order}
        return self._orders[epoch]

    def examples_at(self, step: int) -> list[Example]:
        """The global data batch of ``step`` (steps count from 1)."""
        size, count = self.batch_size, len(self.examples)
        picked = []
        for position in range((step - 1) * size, step * size):
            epoch, offset = divmod(position, count)
            picked.append(self.examples[self._order(epoch)[offset]])
        return picked


def data_rows(
    examples: Sequence[Example],
    *,
    step: int,
    seed: int,
    bkspc_id: int | None,
    p_noise: float,
    noise: NoiseSource | Sequence[NoiseSource] | None,
    max_noise_run: int = 1,
    noise_in_loss: bool = False,
) -> DataRows:
    """Rows of ``examples``, each completion noise-augmented (docs/method.md, "Noise rows")
    from ``noise``:
    one source for all rows, one per row, or ``None`` for clean rows. Inserted wrong tokens
    are non-expert unless ``noise_in_loss``."""
    rng = random.Random(f"{seed}-noise-{step}")
    rows = DataRows([], [], [])
    for index, example in enumerate(examples):
        source = noise[index] if isinstance(noise, Sequence) else noise
        if source is None or bkspc_id is None or p_noise == 0:
            actions, expert = list(example.completion), [True] * len(example.completion)
        else:
            actions, expert = augment_with_noise(
                example.prompt, example.completion, bkspc_id, p_noise, source, rng,
                max_noise_run,
            )  # fmt: skip
            if noise_in_loss:
                expert = [True] * len(actions)
        rows.prompts.append(list(example.prompt))
        rows.actions.append(actions)
        rows.experts.append(expert)
    return rows


def step_totals(rows: DataRows, traces: Sequence[Trace], gamma: float) -> Totals:
    """The normalisers of the whole step, computed once from every row of every process."""
    data = collate(rows.prompts, rows.actions, rows.experts)
    model = None
    if traces:
        model = weight_total(collate([t.prompt for t in traces], [t.actions for t in traces]),
                             gamma)  # fmt: skip
    return Totals(weight_total(data, 1.0), weight_total(data, gamma), model)


def micro_batches(
    rows: DataRows,
    traces: Sequence[Trace],
    *,
    gamma: float,
    grad_accum: int,
    world: World,
    pad_id: int,
) -> list[MicroBatch]:
    """This process's ``grad_accum`` micro-batches of the step.

    Data rows and model rows are each sharded over processes, then dealt round-robin into
    micro-batches; every micro-batch carries the whole step's :class:`Totals`, so that the
    micro-batch losses sum to the loss of the whole step.
    """
    totals = step_totals(rows, traces, gamma)
    count = len(rows.prompts)
    data_share = list(range(count))[world.shard(count)]
    model_share = list(traces)[world.shard(len(traces))]
    parts = []
    for part in range(grad_accum):
        data_part = data_share[part::grad_accum]
        model_part = model_share[part::grad_accum]
        batch = collate(
            [rows.prompts[i] for i in data_part] + [t.prompt for t in model_part],
            [rows.actions[i] for i in data_part] + [t.actions for t in model_part],
            [rows.experts[i] for i in data_part] + [[True] * len(t.actions) for t in model_part],
            pad_id,
        )
        parts.append(MicroBatch(batch, len(data_part), totals))
    return parts
