"""What each step does: phases, the SequenceMatch weight, the learning-rate schedules,
and the defaults that set them."""

from __future__ import annotations

import pytest

from sequencematch.training.config import TrainConfig
from sequencematch.training.schedule import lr_at, lr_factor, objective_at, phase_at, sm_weight


def test_defaults_run_sequencematch_as_measured_to_work():
    config = TrainConfig().validate()
    assert config.method == "sequencematch"
    assert (config.alpha, config.lambda_mle, config.regularise_warmup) == (10.0, 0.5, True)
    assert config.refresh_every == 25 and config.sm_ramp_steps == 0
    assert config.mle_warmup() == 660  # about two thirds of the 1000 steps
    assert config.replace(steps=300).mle_warmup() == 198  # the warm-up scales with steps
    assert config.replace(steps=300, mle_warmup_steps=50).mle_warmup() == 50
    assert config.replace(method="mle").mle_warmup() == 0


def test_phases_and_weights_of_a_regularised_warm_up():
    config = TrainConfig(steps=30, mle_warmup_steps=20, lambda_mle=0.25)
    assert [phase_at(config, s) for s in (1, 20, 21, 30)] == ["mle"] * 2 + ["sequencematch"] * 2
    assert {sm_weight(config, s) for s in (1, 20, 21, 30)} == {0.75}  # data terms throughout
    mle = config.replace(method="mle")
    assert {phase_at(mle, s) for s in (1, 30)} == {"mle"} and sm_weight(mle, 25) == 0.0


def test_a_plain_warm_up_then_a_ramp():
    config = TrainConfig(steps=30, mle_warmup_steps=2, sm_ramp_steps=4, lambda_mle=0.5,
                         regularise_warmup=False)  # fmt: skip
    assert [sm_weight(config, s) for s in (1, 2, 3, 4, 6, 10)] == [0, 0, 0.125, 0.25, 0.5, 0.5]


def test_cosine_leaves_the_sequencematch_phase_the_tail_per_phase_restarts_it():
    config = TrainConfig(steps=100, mle_warmup_steps=60, warmup_steps=10, min_lr_ratio=0.1)
    cosine = [lr_at(config, i) for i in range(100)]
    assert cosine == [lr_factor(i, 10, 100, 0.1) for i in range(100)]
    assert cosine[60] < 0.5
    per_phase = [lr_at(config.replace(lr_schedule="per_phase"), i) for i in range(100)]
    # warm-up phase: its own warm-up and cosine over 60 steps, down to min_lr_ratio
    assert per_phase[9] == pytest.approx(1.0) and per_phase[59] == pytest.approx(0.1, abs=0.01)
    # SequenceMatch phase (optimiser steps 61..100): warm-up again, then the peak and a cosine
    assert per_phase[60] == pytest.approx(0.1) and per_phase[69] == pytest.approx(1.0)
    assert per_phase[99] == pytest.approx(0.1, abs=0.01)
    # an MLE run, or no warm-up at all, is one phase whatever the choice
    mle = config.replace(method="mle", lr_schedule="per_phase")
    assert [lr_at(mle, i) for i in range(100)] == cosine


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lr_schedule": "linear"}, "lr_schedule must be one of"),
        ({"replay_draw": "newest"}, "replay_draw must be one of"),
        ({"mle_warmup_fraction": 1.5}, "mle_warmup_fraction must lie in"),
        ({"mle_warmup_steps": -1}, "mle_warmup_steps must be >= 0"),
    ],
)
def test_bad_schedule_settings_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes).validate()


def test_method_offline_is_a_warm_up_as_long_as_the_run():
    """``method offline`` steps exactly as the data-only arm first written as sequencematch
    with ``mle_warmup_steps = steps``, and each step's objective has the kind it trains."""
    offline = TrainConfig(method="offline", steps=12, lr_schedule="per_phase")
    legacy = TrainConfig(method="sequencematch", steps=12, mle_warmup_steps=12,
                         lr_schedule="per_phase")  # fmt: skip
    for step in range(1, 13):
        assert phase_at(offline, step) == phase_at(legacy, step) == "mle"
        assert sm_weight(offline, step) == sm_weight(legacy, step) == 0.5
        assert lr_at(offline, step - 1) == lr_at(legacy, step - 1)
        assert objective_at(offline.objective(), offline, step).kind == "offline"
        assert objective_at(legacy.objective(), legacy, step).kind == "offline"
    assert offline.mle_warmup() == 12 and not offline.samples_model()


def test_each_step_reads_the_objective_of_its_phase():
    plain = TrainConfig(steps=10, mle_warmup_steps=4, regularise_warmup=False, sm_ramp_steps=2)
    kinds = [objective_at(plain.objective(), plain, step).kind for step in (1, 4, 5, 10)]
    assert kinds == ["mle", "mle", "online", "online"]
    regularised = TrainConfig(steps=10, mle_warmup_steps=4)
    kinds = [objective_at(regularised.objective(), regularised, s).kind for s in (1, 4, 5)]
    assert kinds == ["offline", "offline", "online"]
    mle = TrainConfig(method="mle", steps=10)
    assert {objective_at(mle.objective(), mle, s).kind for s in range(1, 11)} == {"mle"}
