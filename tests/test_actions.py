"""Actions: visible tokens after backspaces, noise augmentation, batching."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sequencematch.core.actions import (
    UniformNoise,
    UnigramNoise,
    apply_backspaces,
    augment_with_noise,
    collate,
)
from sequencematch.core.layout import visible_lengths

BK = 100


def test_apply_backspaces_examples():
    assert apply_backspaces([1, 2, BK, 3], BK) == [1, 3]
    assert apply_backspaces([1, BK, 2, BK], BK) == []
    assert apply_backspaces([1, 2, 3], None) == [1, 2, 3]
    assert apply_backspaces([BK, 2], None) == [BK, 2]


def test_apply_backspaces_refuses_deleting_nothing():
    with pytest.raises(ValueError, match="nothing to delete"):
        apply_backspaces([1, BK, BK], BK)


@given(
    st.lists(st.integers(0, 20), max_size=20),
    st.floats(0.0, 1.0),
    st.integers(1, 3),
    st.integers(0, 10_000),
)
def test_augmentation_keeps_the_data_and_flags_only_noise(completion, p_noise, max_run, seed):
    prompt = [1, 2]
    actions, expert = augment_with_noise(
        prompt, completion, BK, p_noise, UniformNoise(21), random.Random(seed), max_run
    )
    assert len(actions) == len(expert)
    # after the backspaces the visible text is exactly the data
    assert apply_backspaces(actions, BK) == completion
    # the non-expert actions are exactly the inserted wrong tokens, each later deleted
    assert [a for a, e in zip(actions, expert, strict=True) if e and a != BK] == completion
    assert all(a != BK for a, e in zip(actions, expert, strict=True) if not e)
    assert sum(1 for a in actions if a == BK) == expert.count(False)


def test_augmentation_wrong_token_differs_from_the_data_token():
    rng = random.Random(0)
    completion = [3] * 200
    actions, expert = augment_with_noise([1], completion, BK, 1.0, UniformNoise(5), rng)
    inserted = [a for a, e in zip(actions, expert, strict=True) if not e]
    assert len(inserted) == 200 and 3 not in inserted
    assert actions[:3] == [inserted[0], BK, 3]


def test_augmentation_runs_have_matching_backspaces():
    rng = random.Random(1)
    actions, _ = augment_with_noise([1], [5] * 300, BK, 0.9, UniformNoise(10), rng, max_run=3)
    runs = []
    count = 0
    for a in actions:
        if a == BK:
            count += 1
        elif count:
            runs.append(count)
            count = 0
    assert set(runs) == {1, 2, 3}


def test_augmentation_zero_noise_is_identity():
    actions, expert = augment_with_noise([1], [4, 5, 6], BK, 0.0, UniformNoise(10), random.Random())
    assert actions == [4, 5, 6] and all(expert)


def test_unigram_noise_follows_counts_and_skips_zero_counts():
    source = UnigramNoise([0, 10, 0, 30], exclude=[])
    rng = random.Random(0)
    draws = [source([], -1, rng) for _ in range(4000)]
    assert set(draws) == {1, 3}
    assert 0.7 < draws.count(3) / len(draws) < 0.8
    assert {source([], 3, rng) for _ in range(100)} == {1}


def test_noise_sources_refuse_degenerate_pools():
    with pytest.raises(ValueError, match="at least two"):
        UniformNoise(3, exclude=[0, 1])
    with pytest.raises(ValueError, match="at least two"):
        UnigramNoise([0, 5, 0])


def test_noise_source_returning_bkspc_is_refused():
    with pytest.raises(ValueError, match="returned <bkspc>"):
        augment_with_noise([1], [2], BK, 1.0, lambda prefix, c, rng: BK, random.Random())


def test_collate_pads_and_marks_expert_actions():
    batch = collate([[1, 2], [3]], [[4, BK, 5], [6]], [[False, True, True], [True]], pad_id=0)
    assert batch.sequences.tolist() == [[1, 2, 4, BK, 5], [3, 6, 0, 0, 0]]
    assert batch.prompt_lengths.tolist() == [2, 1]
    assert batch.lengths.tolist() == [5, 2]
    assert batch.expert.tolist() == [
        [False, False, False, True, True],
        [False, True, False, False, False],
    ]
    depths = visible_lengths(batch.sequences, batch.prompt_lengths, batch.lengths, BK)
    assert depths.tolist() == [[1, 2, 3, 2, 3], [1, 2, 2, 2, 2]]
    assert isinstance(batch.to("cpu").sequences, torch.Tensor)


def test_model_sample_noise_reads_the_sample_of_the_right_state():
    from sequencematch.training.model_noise import ModelSampleNoise

    # samples[t, k]: the k-th wrong token of a run inserted after element t of [1, 2, 3, 4]
    samples = torch.tensor([[5, 6], [4, 7], [8, 9], [0, 0]])
    source = ModelSampleNoise(samples, [1, 2, 3, 4])
    rng = random.Random(0)
    assert source([1], 2, rng) == 5  # the state after [1]
    assert source([1, 2], 3, rng) == 4  # the state after [1, 2]
    # inside a run the run's first state is reused, with the run's next sample
    assert source([1, 2, 4], -1, rng) == 7
