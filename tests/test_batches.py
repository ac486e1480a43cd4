"""Batch building: data order, noise-augmented rows, micro-batches and their normalisers."""

from __future__ import annotations

import random

import pytest

from sequencematch.core.actions import UniformNoise, apply_backspaces, collate
from sequencematch.core.examples import Example
from sequencematch.core.objectives import weight_total
from sequencematch.training.batches import DataOrder, data_rows, micro_batches, step_totals
from sequencematch.training.distributed import World
from sequencematch.training.replay import Trace

BK = 9
EXAMPLES = [Example([1, i % 4 + 2], [i % 5 + 2, (i + 1) % 5 + 2, 8]) for i in range(10)]
TRACES = [Trace([1, 3], [4, BK, 5, 8]), Trace([1], [2, 2]), Trace([1, 2, 3], [8])]


def test_every_example_once_per_epoch_in_a_seeded_order():
    order = DataOrder(EXAMPLES, seed=1, batch_size=4)
    first_epoch = [e for step in (1, 2) for e in order.examples_at(step)]
    first_epoch += order.examples_at(3)[:2]  # step 3 spans the end of epoch 0
    assert sorted(map(id, first_epoch)) == sorted(map(id, EXAMPLES))
    assert order.examples_at(2) == DataOrder(EXAMPLES, 1, 4).examples_at(2)
    assert order.examples_at(2) != DataOrder(EXAMPLES, 2, 4).examples_at(2)
    with pytest.raises(ValueError, match="no training examples"):
        DataOrder([], 0, 4)


def test_noise_is_undone_and_never_an_expert_action():
    noise = UniformNoise(9, exclude=[0, 1, 8])
    rows = data_rows(EXAMPLES, step=3, seed=0, bkspc_id=BK, p_noise=0.5, noise=noise)
    inserted = 0
    for example, actions, expert in zip(EXAMPLES, rows.actions, rows.experts, strict=True):
        assert apply_backspaces(actions, BK) == example.completion
        wrong = [a for a, e in zip(actions, expert, strict=True) if not e]
        assert all(a != BK for a in wrong) and len(wrong) == actions.count(BK)
        inserted += len(wrong)
    assert inserted > 0
    again = data_rows(EXAMPLES, step=3, seed=0, bkspc_id=BK, p_noise=0.5, noise=noise)
    assert again == rows  # a function of (seed, step)
    loss_reading = data_rows(EXAMPLES, step=3, seed=0, bkspc_id=BK, p_noise=0.5, noise=noise,
                             noise_in_loss=True)  # fmt: skip
    assert loss_reading.actions == rows.actions
    assert all(all(flags) for flags in loss_reading.experts)


def test_clean_rows_without_noise_and_one_source_per_row():
    clean = data_rows(EXAMPLES, step=1, seed=0, bkspc_id=BK, p_noise=0.5, noise=None)
    assert clean.actions == [e.completion for e in EXAMPLES]

    def always(token: int):
        return lambda prefix, correct, rng: token

    per_row = [always(7 if i % 2 else 6) for i in range(len(EXAMPLES))]
    rows = data_rows(EXAMPLES, step=1, seed=0, bkspc_id=BK, p_noise=0.9, noise=per_row)
    for index, (actions, expert) in enumerate(zip(rows.actions, rows.experts, strict=True)):
        wrong = {a for a, e in zip(actions, expert, strict=True) if not e}
        assert wrong == {7 if index % 2 else 6}


@pytest.mark.parametrize(("processes", "grad_accum"), [(1, 1), (1, 2), (2, 1), (2, 2)])
def test_micro_batches_share_out_every_row_once_with_the_whole_steps_totals(processes, grad_accum):
    rows = data_rows(EXAMPLES[:8], step=1, seed=0, bkspc_id=BK, p_noise=0.3,
                     noise=UniformNoise(9, exclude=[0, 1, 8]))  # fmt: skip
    traces = TRACES + TRACES[:1]
    totals = step_totals(rows, traces, gamma=0.9)
    data_seen, model_seen = [], []
    for rank in range(processes):
        world = World(rank=rank, size=processes)
        parts = micro_batches(rows, traces, gamma=0.9, grad_accum=grad_accum, world=world,
                              pad_id=0)  # fmt: skip
        assert len(parts) == grad_accum
        for part in parts:
            assert part.totals == totals
            sequences, lengths = part.batch.sequences, part.batch.lengths
            for row in range(part.batch.sequences.shape[0]):
                tokens = sequences[row, : int(lengths[row])].tolist()
                (data_seen if row < part.data_count else model_seen).append(tokens)
    expected = [p + a for p, a in zip(rows.prompts, rows.actions, strict=True)]
    assert sorted(data_seen) == sorted(expected)
    assert sorted(model_seen) == sorted(t.prompt + t.actions for t in traces)


def test_totals_are_the_weights_of_the_whole_step():
    rows = data_rows(EXAMPLES[:4], step=1, seed=0, bkspc_id=BK, p_noise=0.0, noise=None)
    data = collate(rows.prompts, rows.actions, rows.experts)
    totals = step_totals(rows, TRACES, gamma=0.5)
    assert totals.mle == pytest.approx(weight_total(data, 1.0)) == 12.0  # 4 rows x 3 actions
    assert totals.data == pytest.approx(4 * (1 + 0.5 + 0.25))
    assert totals.model == pytest.approx((1 + 0.5 + 0.25 + 0.125) + (1 + 0.5) + 1)
    assert step_totals(rows, [], gamma=0.5).model is None


def test_a_noise_rng_per_step():
    noise = UniformNoise(9, exclude=[0, 1, 8])
    one = data_rows(EXAMPLES, step=1, seed=0, bkspc_id=BK, p_noise=0.5, noise=noise)
    two = data_rows(EXAMPLES, step=2, seed=0, bkspc_id=BK, p_noise=0.5, noise=noise)
    assert one.actions != two.actions
    random.seed(123)  # the global random state plays no part
    assert data_rows(EXAMPLES, step=1, seed=0, bkspc_id=BK, p_noise=0.5, noise=noise) == one
