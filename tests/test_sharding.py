"""FSDP2-sharded training under torchrun (2 CPU processes, gloo) against one process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from sequencematch.apps.setup import prepare_run
from sequencematch.training.config import TrainConfig
from sequencematch.training.trainer import Trainer

FLAGS = [
    "--method", "sequencematch", "--steps", "4", "--mle-warmup-steps", "1",
    "--sample-temperature", "0", "--n-train", "32", "--n-valid", "4", "--n-test", "4",
    "--difficulty", "2", "4", "--hidden-size", "32", "--num-layers", "2", "--num-heads", "2",
    "--batch-size", "8", "--model-batch-size", "4", "--samples-per-refresh", "8",
    "--replay-size", "16", "--refresh-every", "2", "--max-new-tokens", "6",
    "--progress", "false", "--p-noise", "0.2", "--save-every", "0", "--lr", "3e-3",
    "--clip-grad", "1.0",
]  # fmt: skip


def weights(folder) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(folder)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


GLOO_EXIT_ABORT = "terminate called without an active exception"
"""What a torchrun rank sometimes prints as gloo aborts it at exit (seen in about one run in
three when other tests ran before this one in the same session; never alone)."""


class GlooExitAbort(AssertionError):
    pass


def test_fsdp_two_processes_match_one_and_resume_exactly(tmp_path):
    """Sharded over 2 processes, stopped after a checkpoint at step 2 and resumed, a run ends
    with the weights of an uninterrupted single-process run. The whole scenario is retried
    once, in a new folder, only when a rank was aborted by gloo at exit (a known flake)."""
    try:
        _two_processes_match_one(tmp_path / "first")
    except GlooExitAbort:
        _two_processes_match_one(tmp_path / "again")


def _two_processes_match_one(tmp_path) -> None:
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "sequencematch.apps.cli", "train"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", "-m", "sequencematch.apps.cli", "train"]  # fmt: skip

    def train(command: list[str], *extra: str) -> None:
        done = subprocess.run(command + FLAGS + list(extra), env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        if done.returncode != 0 and GLOO_EXIT_ABORT in done.stderr:
            raise GlooExitAbort(done.stderr[-3000:])
        assert done.returncode == 0, done.stderr[-3000:]

    train(cli, "--output-dir", str(tmp_path / "one"))
    sharded = ["--fsdp", "true", "--output-dir", str(tmp_path / "two")]
    train(launcher, *sharded, "--stop-at", "2")
    assert (tmp_path / "two" / "checkpoints" / "step-00000002").is_dir()
    train(launcher, *sharded, "--resume", "true")
    one, two = weights(tmp_path / "one" / "model"), weights(tmp_path / "two" / "model")
    assert (one - two).abs().max().item() <= 1e-5
    start = weights(tmp_path / "two" / "checkpoints" / "step-00000002")
    assert (one - start).abs().max().item() > 1e-4  # the resumed steps changed the weights


def test_fsdp_in_one_process_is_refused(tmp_path):
    config = TrainConfig(
        output_dir=str(tmp_path / "run"), steps=1, n_train=8, n_valid=2, n_test=2,
        hidden_size=32, num_layers=1, num_heads=2, batch_size=2, fsdp=True, progress=False,
    )  # fmt: skip
    inputs = prepare_run(config)
    with pytest.raises(ValueError, match="fsdp needs more than one process"):
        Trainer(config, inputs.model, inputs.tokenizer, inputs.train)
