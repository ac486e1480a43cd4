"""The trainer's AdamW: fused on CPU float32, the same updates as the unfused loop, and the
choice kept across a checkpoint written with the other one."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from test_trainer import make_trainer, small_config

from sequencematch.models.presets import char_tokenizer, tiny_model
from sequencematch.training.optimizer import (
    build_adamw,
    fused_adamw_supported,
    is_fused,
    keep_implementation,
)


def groups(model: torch.nn.Module) -> list[dict]:
    """The trainer's grouping: weight decay on matrices only."""
    params = list(model.parameters())
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny_model("tiny_llama", char_tokenizer("0123456789+-="), hidden_size=32,
                      num_hidden_layers=2, num_attention_heads=2)  # fmt: skip


def train_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    ids = torch.randint(0, 10, (4, 12), generator=torch.Generator().manual_seed(1))  # [B, T]
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_the_trainers_optimiser_is_fused_on_cpu_float32(tmp_path: Path):
    trainer = make_trainer(small_config(tmp_path, "run", method="mle", steps=1))
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    assert is_fused(trainer.optimizer)
    assert all(group["fused"] for group in trainer.optimizer.param_groups)


def test_fused_and_unfused_adamw_steps_agree():
    fused_model = small_model()
    plain_model = copy.deepcopy(fused_model)
    fused = build_adamw(groups(fused_model), lr=1e-2)
    plain = torch.optim.AdamW(groups(plain_model), lr=1e-2, fused=False)
    assert is_fused(fused) and not is_fused(plain)
    start = flat(fused_model)
    train_steps(fused_model, fused, 3)
    train_steps(plain_model, plain, 3)
    assert (flat(fused_model) - start).abs().max().item() > 1e-3  # the steps moved the weights
    assert (flat(fused_model) - flat(plain_model)).abs().max().item() <= 1e-6


def test_parameters_the_fused_kernel_does_not_take_keep_the_default():
    floats = torch.nn.Parameter(torch.zeros(2, 2))
    assert fused_adamw_supported([floats])
    assert not fused_adamw_supported([])
    assert not fused_adamw_supported([floats, torch.zeros(2, dtype=torch.int64)])
    assert not fused_adamw_supported([floats, torch.zeros(2, device="meta")])

    class Wrapped(torch.Tensor):  # a tensor subclass, as FSDP's DTensor is
        pass

    assert not fused_adamw_supported([torch.zeros(2).as_subclass(Wrapped)])
    optimizer = build_adamw([{"params": [torch.zeros(2, device="meta")]}], lr=1e-3)
    assert not is_fused(optimizer) and optimizer.defaults["fused"] is None


def test_a_state_saved_with_the_other_implementation_loads_into_the_chosen_one():
    """A checkpoint's optimiser state carries the saving run's fused flag; after loading,
    the optimiser still steps as it was built to, and continues as the saver would."""
    model = small_model()
    plain = torch.optim.AdamW(groups(model), lr=1e-2, fused=False)
    train_steps(model, plain, 2)
    saved = copy.deepcopy(plain.state_dict())
    reference = copy.deepcopy(model)
    fused = build_adamw(groups(model), lr=1e-2)
    fused.load_state_dict(copy.deepcopy(saved))  # loading shares the tensors it is given
    assert not all(group["fused"] for group in fused.param_groups)  # the saved flag
    keep_implementation(fused)
    assert all(group["fused"] for group in fused.param_groups)
    continued = torch.optim.AdamW(groups(reference), lr=1e-2, fused=False)
    continued.load_state_dict(copy.deepcopy(saved))
    train_steps(model, fused, 1)
    train_steps(reference, continued, 1)
    assert (flat(model) - flat(reference)).abs().max().item() <= 1e-6
    back = torch.optim.AdamW(groups(model), lr=1e-2)  # unfused, from a fused state
    back.load_state_dict(fused.state_dict())
    keep_implementation(back)
    assert not any(group["fused"] for group in back.param_groups)
    train_steps(model, back, 1)
