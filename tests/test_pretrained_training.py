"""Training set-ups for pretrained models: bf16 SequenceMatch, LoRA, chat prompts, resumes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_trainer import make_trainer, small_config

BF16_SM = dict(method="sequencematch", steps=4, mle_warmup_steps=0, p_noise=0.2)


def sequencematch_step_loss(trainer) -> dict[str, torch.Tensor]:
    """The loss terms of step 1 (SequenceMatch phase, after the first refill)."""
    trainer._refresh(1)
    micro = trainer._micro_batches(1, "sequencematch")[0]
    return trainer._loss(*micro, "sequencematch", 1)


def test_sequencematch_trains_in_bf16_with_float32_losses(tmp_path: Path):
    """bf16 runs the transformer body in bfloat16 and the LM head in float32: the loss is a
    float32 tensor, close to the float32 run's loss on the same batch, and steps run."""
    fp32 = make_trainer(small_config(tmp_path, "fp32", precision="fp32", **BF16_SM))
    bf16 = make_trainer(small_config(tmp_path, "bf16", precision="bf16", **BF16_SM))
    torch.manual_seed(0)
    exact = sequencematch_step_loss(fp32)
    torch.manual_seed(0)
    mixed = sequencematch_step_loss(bf16)
    assert mixed["loss"].dtype == torch.float32
    for name in ("loss", "mle", "regulariser"):
        want, got = float(exact[name].detach()), float(mixed[name].detach())
        assert got == pytest.approx(want, rel=2e-2, abs=2e-3), name
    assert float(mixed["loss"]) != float(exact["loss"])  # the body did run in bfloat16
    bf16.optimizer.zero_grad(set_to_none=True)
    metrics = bf16._train_step(1)
    assert torch.isfinite(torch.tensor(metrics["loss"])) and metrics["grad_norm"] > 0
