"""Shared fixtures: tiny random models built from configs (no network, no weights)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Spinning OpenMP threads stall small ops 10-50x when a vCPU is descheduled; sleep instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

from sequencematch.apps.cli import main  # noqa: E402
from sequencematch.core.objectives import (  # noqa: E402
    ObjectiveConfig,
    sequencematch_loss,
    training_loss,
)
from sequencematch.models.backspace import add_backspace  # noqa: E402
from sequencematch.models.presets import char_tokenizer, tiny_model  # noqa: E402

ALPHABET = "0123456789abcdef -+=?,"


def make_model(preset: str, dtype: torch.dtype = torch.float64, attn: str = "sdpa", seed: int = 0):
    """A tiny model with <bkspc> added, in eval mode; returns (model, tokenizer, bkspc_id)."""
    torch.manual_seed(seed)
    tokenizer = char_tokenizer(ALPHABET)
    model = tiny_model(preset, tokenizer, attn_implementation=attn).to(dtype).eval()
    bkspc_id = add_backspace(model, tokenizer)
    return model, tokenizer, bkspc_id


@pytest.fixture(scope="session", params=["tiny_gpt2", "tiny_llama"])
def float64_model(request):
    return make_model(request.param)


def boost_logit(model, token_id: int, amount: float):
    """Add ``amount`` to one output logit through a forward hook (affects every forward)."""
    head = model.get_output_embeddings()

    def hook(module, inputs, output):
        output = output.clone()
        output[..., token_id] += amount
        return output

    return head.register_forward_hook(hook)


TINY = ["--model", "tiny_gpt2", "--hidden-size", "16", "--num-layers", "1", "--num-heads", "2",
        "--n-train", "16", "--n-valid", "2", "--n-test", "2", "--batch-size", "4",
        "--method", "mle", "--progress", "false"]  # fmt: skip
"""``sequencematch train`` options of a tiny run (seconds on a CPU)."""


def fails(capsys, argv: list[str], message: str) -> str:
    """Run the CLI, expect exit code 2 and exactly one stderr line holding ``message``."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory):
    """A tiny arithmetic model trained by the CLI (read only: copy it to change it)."""
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--output-dir", str(run), "--steps", "2", *TINY]) == 0
    return run / "model"


def objective(
    normalise: bool = False, learned_terminal: bool = True, offsets=None, **fields
) -> ObjectiveConfig:
    """An :class:`ObjectiveConfig` from the loss's reading flags: ``normalise`` (Q = log pi + b),
    ``learned_terminal`` and whether ``offsets`` are given (Q = logits + b)."""
    reading = "normalised" if normalise else "offset" if offsets is not None else "none"
    terminal = "learned" if learned_terminal else "zero"
    return ObjectiveConfig(q_reading=reading, terminal_value=terminal, **fields)


def sm_loss(*rows, totals=None, offsets=None, normalise=False, learned_terminal=True, **fields):
    """:func:`sequencematch_loss` with the objective's fields as keywords."""
    chosen = objective(normalise, learned_terminal, offsets, **fields)
    return sequencematch_loss(*rows, chosen, totals=totals, offsets=offsets)


def train_loss(
    *rows, sm_weight=None, totals=None, offsets=None, normalise=False, learned_terminal=True,
    **fields,
):  # fmt: skip
    """:func:`training_loss` with the objective's fields as keywords; the kind follows the
    rows: ``online`` with model rows, ``offline`` without (``mle`` at weight 0)."""
    kind = "online" if rows[2] is not None else "offline"
    kind = "mle" if sm_weight == 0.0 else kind
    chosen = objective(normalise, learned_terminal, offsets, kind=kind, **fields)
    return training_loss(*rows, chosen, sm_weight=sm_weight, totals=totals, offsets=offsets)
