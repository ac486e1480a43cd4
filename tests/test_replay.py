"""The replay buffer: eviction order, sample age, the two draws, state round trip."""

from __future__ import annotations

from collections import Counter

import pytest

from sequencematch.training.replay import ReplayBuffer, Trace


def refill(buffer: ReplayBuffer, step: int, count: int) -> None:
    """``count`` samples at ``step``, told apart by their prompt ``[step, index]``."""
    buffer.add([([step, index], [index % 3, 7]) for index in range(count)], step)


def test_the_oldest_samples_leave_first():
    buffer = ReplayBuffer(capacity=5)
    refill(buffer, 1, 3)
    refill(buffer, 4, 3)
    assert [t.prompt for t in buffer] == [[1, 1], [1, 2], [4, 0], [4, 1], [4, 2]]
    refill(buffer, 7, 2)
    assert [t.sampled_at for t in buffer] == [4, 4, 4, 7, 7]
    assert len(buffer) == 5


def test_sample_age_counts_steps_since_sampling():
    buffer = ReplayBuffer(capacity=8)
    refill(buffer, 3, 2)
    refill(buffer, 5, 2)
    assert ReplayBuffer.mean_age(list(buffer), 5) == pytest.approx(1.0)  # ages 2, 2, 0, 0
    assert ReplayBuffer.mean_age(list(buffer)[:2], 10) == pytest.approx(7.0)


def test_uniform_draws_with_replacement_over_the_whole_buffer():
    buffer = ReplayBuffer(capacity=4, seed=3)
    refill(buffer, 1, 2)
    refill(buffer, 2, 2)
    drawn = buffer.draw(64, step=9, how="uniform")
    assert len(drawn) == 64 and {t.sampled_at for t in drawn} == {1, 2}
    assert max(Counter(map(id, drawn)).values()) > 1  # with replacement
    assert buffer.draw(64, step=9) == drawn  # a function of (seed, step)
    assert buffer.draw(64, step=10) != drawn


def test_fresh_draws_take_the_newest_refill_without_replacement():
    buffer = ReplayBuffer(capacity=12, seed=0)
    refill(buffer, 1, 4)
    refill(buffer, 5, 4)
    refill(buffer, 9, 4)
    drawn = buffer.draw(3, step=9, how="fresh")
    assert {t.sampled_at for t in drawn} == {9} and len({id(t) for t in drawn}) == 3
    # the steps after a refill cycle through it: steps 9..12 use each trace 3 times
    uses = Counter(id(t) for step in range(9, 13) for t in buffer.draw(3, step, how="fresh"))
    assert sorted(uses.values()) == [3, 3, 3, 3]
    # a step that needs more than the newest refill continues with the next newest
    wide = buffer.draw(6, step=10, how="fresh")
    ages = Counter(t.sampled_at for t in wide)
    assert ages == {9: 4, 5: 2} and len({id(t) for t in wide}) == 6
    assert ReplayBuffer.mean_age(wide, 10) < ReplayBuffer.mean_age(buffer.draw(6, 10), 10)


def test_fresh_draws_repeat_only_when_the_buffer_is_too_small():
    buffer = ReplayBuffer(capacity=4)
    refill(buffer, 2, 3)
    drawn = buffer.draw(5, step=2, how="fresh")
    assert len(drawn) == 5 and len({id(t) for t in drawn}) == 3


def test_state_dict_round_trip_and_the_older_format():
    buffer = ReplayBuffer(capacity=6)
    refill(buffer, 2, 3)
    refill(buffer, 4, 2)
    restored = ReplayBuffer(capacity=6)
    restored.load_state_dict(buffer.state_dict())
    assert restored.traces == buffer.traces
    assert restored.draw(4, 6, "fresh") == buffer.draw(4, 6, "fresh")
    older = ReplayBuffer(capacity=6)
    older.load_state_dict([([1, 2], [3]), ([4], [5, 6])], step=11)
    assert older.traces == [Trace([1, 2], [3], 11), Trace([4], [5, 6], 11)]


def test_bad_use_is_refused():
    with pytest.raises(ValueError, match="capacity must be at least 1"):
        ReplayBuffer(0)
    with pytest.raises(ValueError, match="buffer is empty"):
        ReplayBuffer(2).draw(1, 1)
    buffer = ReplayBuffer(2)
    refill(buffer, 1, 1)
    with pytest.raises(ValueError, match="unknown replay draw 'newest'"):
        buffer.draw(1, 1, how="newest")
