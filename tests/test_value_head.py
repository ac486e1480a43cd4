"""The learned value offset b(s) in training: it trains, resumes exactly, follows data
parallelism, and never enters the saved policy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_trainer import parameters, run, small_config, train_in_one_and_two_processes

from sequencematch.training.checkpoints import latest_checkpoint, load_state
from sequencematch.training.value_head import ValueHead


def head_parameters(trainer) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in trainer.value_head.parameters()])


@pytest.mark.parametrize("reading", ["offset", "normalised"])
def test_the_value_head_trains_and_the_saved_model_holds_only_the_policy(tmp_path, reading):
    trainer = run(small_config(tmp_path, reading, steps=6, mle_warmup_steps=2,
                               value_head=reading))  # fmt: skip
    assert head_parameters(trainer).abs().max() > 1e-4  # it left its zero initialisation
    saved = load_file(Path(trainer.config.output_dir) / "model" / "model.safetensors")
    policy = trainer.model.state_dict()
    tied = {"lm_head.weight"} if trainer.model.config.tie_word_embeddings else set()
    assert set(saved) == set(policy) - tied  # the policy's weights, nothing more or less
    assert all(torch.equal(saved[name], policy[name]) for name in saved)


def test_mle_runs_build_no_value_head(tmp_path):
    trainer = run(small_config(tmp_path, "mle", method="mle", steps=2, value_head="offset"))
    assert trainer.value_head is None


def test_the_reading_changes_the_sequencematch_update(tmp_path):
    """Not a no-op: from the same start and data, offset and plain reading train differently."""
    plain = run(small_config(tmp_path, "plain", steps=5, mle_warmup_steps=1, value_head="none"))
    offset = run(small_config(tmp_path, "offset", steps=5, mle_warmup_steps=1,
                              value_head="normalised"))  # fmt: skip
    assert (parameters(plain.model) - parameters(offset.model)).abs().max() > 1e-5


def test_a_resumed_run_with_a_value_head_equals_an_uninterrupted_one(tmp_path):
    changes = dict(steps=8, mle_warmup_steps=2, value_head="offset")
    straight = run(small_config(tmp_path, "straight", **changes))
    first = run(small_config(tmp_path, "split", stop_at=4, **changes))
    assert latest_checkpoint(Path(first.config.output_dir)) is not None
    resumed = run(small_config(tmp_path, "split", resume=True, **changes))
    assert (parameters(straight.model) - parameters(resumed.model)).abs().max() <= 1e-6
    assert (head_parameters(straight) - head_parameters(resumed)).abs().max() <= 1e-6
    assert (head_parameters(first) - head_parameters(resumed)).abs().max() > 1e-5


def test_the_value_head_has_its_own_learning_rate(tmp_path):
    config = small_config(tmp_path, "lr", steps=3, mle_warmup_steps=1, warmup_steps=0,
                          min_lr_ratio=1.0, value_head="offset", value_head_lr=0.02)  # fmt: skip
    trainer = run(config)
    group = trainer.optimizer.param_groups[-1]
    assert group["params"][0] is next(trainer.value_head.parameters())
    assert group["lr"] == pytest.approx(0.02)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(trainer.config.lr)


def test_value_head_reads_detached_hidden_states():
    head = ValueHead(4)
    torch.nn.init.ones_(head.linear.weight)
    hidden = torch.randn(2, 3, 4, requires_grad=True)
    head(hidden).sum().backward()
    assert hidden.grad is None and head.linear.weight.grad is not None


@pytest.mark.parametrize("value", ["learned", ""])
def test_unknown_readings_are_refused(tmp_path, value):
    with pytest.raises(ValueError, match="value_head must be one of"):
        small_config(tmp_path, "bad", value_head=value)


def test_torchrun_two_processes_match_one_with_a_value_head(tmp_path):
    flags = [
        "--method", "sequencematch", "--steps", "3", "--mle-warmup-steps", "1",
        "--value-head", "normalised", "--sample-temperature", "0", "--n-train", "32",
        "--n-valid", "4", "--n-test", "4", "--difficulty", "2", "4", "--hidden-size", "32",
        "--num-layers", "2", "--num-heads", "2", "--batch-size", "8", "--model-batch-size", "4",
        "--samples-per-refresh", "8", "--replay-size", "16", "--refresh-every", "2",
        "--max-new-tokens", "6", "--progress", "false", "--p-noise", "0.2", "--save-every", "0",
        "--lr", "3e-3", "--keep-checkpoints", "1",
    ]  # fmt: skip
    train_in_one_and_two_processes(flags, tmp_path)
    heads = []
    for name in ("one", "two"):
        state = load_state(latest_checkpoint(tmp_path / name))
        heads.append(torch.cat([t.flatten() for t in state["value_head"].values()]))
    assert heads[0].abs().max() > 1e-4
    assert (heads[0] - heads[1]).abs().max() <= 1e-5


def test_auto_reads_plain_logits_from_scratch_and_normalised_on_a_trained_model(tmp_path):
    scratch = run(small_config(tmp_path, "scratch", steps=3, mle_warmup_steps=1))
    assert scratch.objective.q_reading == "none" and scratch.value_head is None
    folder = Path(scratch.config.output_dir) / "model"
    tuned = run(small_config(tmp_path, "tuned", model=str(folder), steps=3, mle_warmup_steps=1))
    assert tuned.objective.q_reading == "normalised" and tuned.value_head is not None
    explicit = run(small_config(tmp_path, "explicit", model=str(folder), steps=2,
                                mle_warmup_steps=1, value_head="none"))  # fmt: skip
    assert explicit.value_head is None
