"""The trainer: resume exactness, data parallel equivalence, failures that keep data safe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from sequencematch.apps.setup import prepare_run
from sequencematch.models.backspace import add_backspace
from sequencematch.training.checkpoints import CheckpointError, latest_checkpoint
from sequencematch.training.config import TrainConfig
from sequencematch.training.run_folder import RunFolderError
from sequencematch.training.trainer import Trainer, TrainingError

SMALL = dict(
    n_train=64, n_valid=8, n_test=8, difficulty=[2.0, 5.0], hidden_size=32, num_layers=2,
    num_heads=2, batch_size=8, model_batch_size=4, samples_per_refresh=8, replay_size=16,
    refresh_every=3, max_new_tokens=8, warmup_steps=2, log_every=1, save_every=0,
    progress=False, p_noise=0.2, lr=3e-3,
)  # fmt: skip


def small_config(tmp_path: Path, name: str, **changes) -> TrainConfig:
    return TrainConfig(output_dir=str(tmp_path / name), **(SMALL | changes)).validate()


def run(config: TrainConfig, trainer_hook=None) -> Trainer:
    inputs = prepare_run(config)
    trainer = Trainer(config, inputs.model, inputs.tokenizer, inputs.train)
    if trainer_hook is not None:
        trainer_hook(trainer)
    trainer.train()
    return trainer


def parameters(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("method", ["mle", "sequencematch"])
def test_resume_continues_exactly(tmp_path, method):
    changes = dict(method=method, steps=8, mle_warmup_steps=2)
    straight = run(small_config(tmp_path, "straight", **changes))
    first = run(small_config(tmp_path, "split", stop_at=4, **changes))
    assert first.step == 4 and latest_checkpoint(Path(first.config.output_dir)) is not None
    resumed = run(small_config(tmp_path, "split", resume=True, **changes))
    assert resumed.step == 8
    difference = (parameters(straight.model) - parameters(resumed.model)).abs().max().item()
    assert difference <= 1e-6
    if method == "sequencematch":
        assert [t.actions for t in straight.replay] == [t.actions for t in resumed.replay]
    # and the split did change the model (the comparison is not vacuous)
    assert (parameters(first.model) - parameters(resumed.model)).abs().max().item() > 1e-4


def test_a_run_folder_is_never_reused_without_resume(tmp_path):
    config = small_config(tmp_path, "run", steps=2, method="mle")
    run(config)
    with pytest.raises(RunFolderError, match="already holds a run"):
        run(config)


def test_corrupt_checkpoint_is_refused_and_left_untouched(tmp_path):
    config = small_config(tmp_path, "run", steps=4, stop_at=2, method="mle")
    run(config)
    state = latest_checkpoint(Path(config.output_dir)) / "state.pt"
    state.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or incomplete"):
        run(config.replace(resume=True))
    assert state.read_bytes() == b"not a checkpoint"


def test_incompatible_checkpoint_is_refused(tmp_path):
    config = small_config(tmp_path, "run", steps=4, stop_at=2, method="mle")
    run(config)
    with pytest.raises(CheckpointError, match="weight_decay: 0.01 -> 0.1"):
        run(config.replace(resume=True, weight_decay=0.1))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    config = small_config(tmp_path, "run", steps=10, save_every=2, method="sequencematch",
                          mle_warmup_steps=1)  # fmt: skip
    calls = {"n": 0}

    def poison_after_step_3(trainer):
        def hook(module, inputs, output):
            calls["n"] += 1
            return output * float("nan") if trainer.step >= 3 else output

        trainer.model.get_output_embeddings().register_forward_hook(hook)

    with pytest.raises(TrainingError, match=r"non-finite loss at step 4 \(sequencematch phase\)"):
        run(config, poison_after_step_3)
    good = latest_checkpoint(Path(config.output_dir))
    assert good.name == "step-00000002"
    model = AutoModelForCausalLM.from_pretrained(good)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_sequencematch_learns_to_backspace_on_noisy_prefixes(tmp_path):
    """SequenceMatch on noise-augmented data lowers its loss and deletes wrong tokens more
    readily than an MLE model trained with the same compute."""
    common = dict(steps=40, n_train=128, difficulty=[2.0, 4.0], lr=1e-2, log_every=1,
                  hidden_size=48, refresh_every=10)  # fmt: skip
    mle = run(small_config(tmp_path, "mle", method="mle", p_noise=0.0, **common))
    sm = run(small_config(tmp_path, "sm", method="sequencematch", p_noise=0.25, alpha=1.0,
                          mle_warmup_steps=0, **common))  # fmt: skip
    lines = (Path(sm.config.output_dir) / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in lines if '"loss"' in line]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5

    def bkspc_probability(trainer) -> float:
        model, bk = trainer.model.eval(), trainer.bkspc_id
        probabilities = []
        for example in trainer.train_examples[:32]:
            correct = example.completion[0]
            wrong = (correct + 1) if correct + 1 < bk else correct - 1  # a different token
            state = torch.tensor([example.prompt + [wrong]])
            with torch.no_grad():
                logits = model(input_ids=state).logits[0, -1]
            probabilities.append(logits.softmax(-1)[bk].item())
        return sum(probabilities) / len(probabilities)

    mle_bk = mle.bkspc_id
    assert mle_bk is not None  # the MLE model has the action, but never saw it used
    assert bkspc_probability(sm) > bkspc_probability(mle) + 0.05


def test_torchrun_two_processes_match_one(tmp_path):
    """2 CPU processes (gloo) compute the same update as 1 process with the same batch."""
    flags = [
        "--method", "sequencematch", "--steps", "4", "--mle-warmup-steps", "1",
        "--sample-temperature", "0", "--n-train", "32", "--n-valid", "4", "--n-test", "4",
        "--difficulty", "2", "4", "--hidden-size", "32", "--num-layers", "2", "--num-heads", "2",
        "--batch-size", "8", "--model-batch-size", "4", "--samples-per-refresh", "8",
        "--replay-size", "16", "--refresh-every", "2", "--max-new-tokens", "6",
        "--progress", "false", "--p-noise", "0.2", "--save-every", "0", "--lr", "3e-3",
    ]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "sequencematch.apps.cli", "train"]
    single = subprocess.run(cli + flags + ["--output-dir", str(tmp_path / "one")], env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert single.returncode == 0, single.stderr[-2000:]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", "-m", "sequencematch.apps.cli", "train"]  # fmt: skip
    double = subprocess.run(launcher + flags + ["--output-dir", str(tmp_path / "two")], env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert double.returncode == 0, double.stderr[-2000:]
    one = AutoModelForCausalLM.from_pretrained(tmp_path / "one" / "model")
    two = AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "model")
    assert (parameters(one) - parameters(two)).abs().max().item() <= 1e-5
    init = prepare_run(TrainConfig(**(SMALL | {"hidden_size": 32})))
    add_backspace(init.model, init.tokenizer)
    assert (parameters(one) - parameters(init.model)).abs().max().item() > 1e-4


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    changes = dict(method="sequencematch", steps=3, mle_warmup_steps=1, sample_temperature=0.0)
    whole = run(small_config(tmp_path, "whole", **changes))
    split = run(small_config(tmp_path, "split", grad_accum=2, **changes))
    assert (parameters(whole.model) - parameters(split.model)).abs().max().item() <= 1e-5


def test_resume_redoes_steps_after_the_checkpoint_once(tmp_path):
    config = small_config(tmp_path, "run", steps=6, save_every=2, method="mle")
    run(config.replace(stop_at=5))  # checkpoints at 2 and 4 (and 5 at the stop)
    folder = Path(config.output_dir)
    (folder / "checkpoints" / "latest").write_text("step-00000004\n")  # as if 5 crashed
    resumed = run(config.replace(resume=True))
    steps = [
        json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()
    ]
    assert resumed.step == 6 and steps == sorted(set(steps)) and steps[-1] == 6
    assert (folder / "checkpoints" / "step-00000006").is_dir()
    assert not (folder / "checkpoints" / "step-00000004").exists()  # keep_checkpoints=2


def test_sequencematch_weight_ramps_after_the_warm_up(tmp_path):
    config = small_config(tmp_path, "run", steps=1, method="sequencematch", mle_warmup_steps=2,
                          sm_ramp_steps=4, lambda_mle=0.5)  # fmt: skip
    inputs = prepare_run(config)
    trainer = Trainer(config, inputs.model, inputs.tokenizer, inputs.train)
    assert [trainer.sm_weight(s) for s in (3, 4, 6, 10)] == [0.125, 0.25, 0.5, 0.5]
    assert trainer._phase(2) == "mle" and trainer._phase(3) == "sequencematch"


def test_model_sample_noise_inserts_wrong_tokens_then_backspaces(tmp_path):
    config = small_config(tmp_path, "run", steps=2, method="mle", noise_source="model",
                          p_noise=0.5)  # fmt: skip
    inputs = prepare_run(config)
    trainer = Trainer(config, inputs.model, inputs.tokenizer, inputs.train)
    prompts, actions, experts = trainer._data_rows(1)
    inserted = [a for row, flags in zip(actions, experts, strict=True)
                for a, e in zip(row, flags, strict=True) if not e]  # fmt: skip
    assert inserted and trainer.bkspc_id not in inserted
    assert not set(inserted) & set(inputs.tokenizer.all_special_ids)
    trainer.train()
    assert trainer.step == 2


def test_regularised_warmup_adds_the_data_regulariser_and_samples_nothing(tmp_path):
    """With regularise_warmup the warm-up loss is (lambda MLE + (1 - lambda) data-only SM):
    the chi2 regulariser is logged and moves the logit level, yet no model sample is drawn."""
    changes = dict(method="sequencematch", steps=3, mle_warmup_steps=3, alpha=0.05,
                   lambda_mle=0.5)  # fmt: skip
    plain = run(small_config(tmp_path, "plain", **changes))
    regularised = run(small_config(tmp_path, "reg", regularise_warmup=True, **changes))
    assert not regularised.replay  # the warm-up never samples from the model
    lines = Path(regularised.config.output_dir, "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert all(r["phase"] == "mle" and r["regulariser"] > 0 for r in records)
    assert all(r["loss"] != pytest.approx(r["mle"]) for r in records)
    plain_lines = Path(plain.config.output_dir, "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line)["regulariser"] == 0 for line in plain_lines)
    difference = parameters(plain.model) - parameters(regularised.model)
    assert difference.abs().max().item() > 1e-4
    assert regularised.sm_weight(10) == pytest.approx(0.5)  # no ramp after such a warm-up
