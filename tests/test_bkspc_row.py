"""The ``<bkspc>`` row: a linear-probe start with the body frozen, and its own learning rate."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch
from conftest import make_model
from test_trainer import run, small_config

from sequencematch.core.actions import UniformNoise, augment_with_noise, collate
from sequencematch.training.bkspc_row import RowLearningRate, probe_bkspc_row, probe_features
from sequencematch.training.config import TrainConfig


def noisy_batch(tokenizer, bkspc_id, rows=24, seed=0):
    rng = random.Random(seed)
    vocab = len(tokenizer)
    noise = UniformNoise(vocab, exclude=[bkspc_id, tokenizer.eos_token_id])
    prompts, actions, experts = [], [], []
    for _ in range(rows):
        prompt = [rng.randrange(10) for _ in range(3)]
        completion = [rng.randrange(10) for _ in range(5)] + [tokenizer.eos_token_id]
        acts, expert = augment_with_noise(prompt, completion, bkspc_id, 0.3, noise, rng)
        prompts.append(prompt)
        actions.append(acts)
        experts.append(expert)
    return collate(prompts, actions, experts)


def test_the_probe_fits_the_row_alone_and_raises_deletion_at_noise_states():
    model, tokenizer, bkspc_id = make_model("tiny_llama", dtype=torch.float32)
    before = copy.deepcopy(model.state_dict())
    features = probe_features(model, noisy_batch(tokenizer, bkspc_id), bkspc_id, len(tokenizer))
    stats = probe_bkspc_row(model, features, bkspc_id, steps=200, lr=0.05)

    assert stats["probe/nll_after"] < stats["probe/nll_before"] - 0.05
    assert stats["probe/p_bkspc_noise_after"] > 2 * stats["probe/p_bkspc_noise_before"]
    head = model.get_output_embeddings().weight
    changed = [name for name, value in model.state_dict().items()
               if not torch.equal(value, before[name])]  # fmt: skip
    assert changed  # the row moved ...
    for name in changed:  # ... and nothing else did
        value, old = model.state_dict()[name], before[name]
        assert value.shape == head.shape
        difference = (value != old).any(dim=-1).nonzero().flatten().tolist()
        assert difference == [bkspc_id], name


def test_the_rows_own_learning_rate_scales_its_adamw_update_and_nothing_else():
    model, tokenizer, bkspc_id = make_model("tiny_llama", dtype=torch.float32)
    batch = noisy_batch(tokenizer, bkspc_id, rows=4)

    def one_step(scale):
        copy_ = copy.deepcopy(model).train()
        optimiser = torch.optim.AdamW(copy_.parameters(), lr=1e-2, weight_decay=0.1)
        row = RowLearningRate(copy_, bkspc_id, scale) if scale else None
        logits = copy_(batch.sequences).logits  # any loss that reaches the row
        logits[..., bkspc_id].square().mean().add(logits.square().mean()).backward()
        if row:
            row.before_step()
        optimiser.step()
        if row:
            row.after_step()
        return copy_.get_output_embeddings().weight.detach()

    start = model.get_output_embeddings().weight.detach()
    plain, scaled = one_step(None), one_step(4.0)
    others = torch.ones(start.shape[0], dtype=torch.bool)
    others[bkspc_id] = False
    assert torch.equal(plain[others], scaled[others])
    update, scaled_update = plain[bkspc_id] - start[bkspc_id], scaled[bkspc_id] - start[bkspc_id]
    assert update.abs().max() > 0
    torch.testing.assert_close(scaled_update, 4.0 * update, rtol=1e-5, atol=1e-7)


def test_a_run_that_probes_the_row_logs_it_with_its_first_step(tmp_path):
    config = small_config(tmp_path, "probe", method="mle", steps=2, bkspc_init="probe",
                          bkspc_probe_rows=16, bkspc_probe_steps=50)  # fmt: skip
    run(config)
    first = json.loads((tmp_path / "probe" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1
    assert first["probe/nll_after"] < first["probe/nll_before"]
    assert first["probe/p_bkspc_noise_after"] > first["probe/p_bkspc_noise_before"]


def test_a_preset_from_scratch_keeps_the_mean_row_by_default(tmp_path):
    config = small_config(tmp_path, "mean", method="mle", steps=1)
    trainer = run(config)
    assert trainer.probe_stats == {}


def test_reprobe_refits_the_row_on_the_trained_features_and_moves_nothing_else(tmp_path):
    options = dict(method="mle", steps=3, bkspc_init="probe", bkspc_probe_rows=16,
                   bkspc_probe_steps=50)  # fmt: skip
    plain = run(small_config(tmp_path, "plain", **options))
    again = run(small_config(tmp_path, "again", **options, bkspc_reprobe=True))
    bkspc_id = plain.bkspc_id
    plain_state, again_state = plain.model.state_dict(), again.model.state_dict()
    rows = plain.model.get_output_embeddings().weight.shape[0]
    keep = torch.arange(rows) != bkspc_id  # [V] every row but <bkspc>'s
    for name, value in plain_state.items():  # the body: the same steps, bit for bit
        other = again_state[name]
        if value.dim() == 2 and value.shape[0] == rows:  # the head or tied embedding
            value, other = value[keep], other[keep]
        assert torch.equal(value, other), name
    head = again.model.get_output_embeddings().weight
    assert not torch.equal(head[bkspc_id], plain.model.get_output_embeddings().weight[bkspc_id])

    stats = plain._probe_bkspc_row()  # the same probe, by hand, on the plain run's model
    assert torch.equal(head[bkspc_id], plain.model.get_output_embeddings().weight[bkspc_id])
    lines = (tmp_path / "again" / "metrics.jsonl").read_text().splitlines()
    logged = next(json.loads(line) for line in lines if "reprobe/nll_after" in line)
    assert logged["step"] == 3
    assert logged["reprobe/nll_after"] == stats["probe/nll_after"]
    assert logged["reprobe/nll_after"] < logged["reprobe/nll_before"]


def test_reprobe_is_refused_where_it_cannot_write_the_row():
    for changes, message in (
        (dict(lora_r=4), "bkspc_reprobe writes the <bkspc> row of a full, unsharded model"),
        (dict(fsdp=True), "bkspc_reprobe writes the <bkspc> row of a full, unsharded model"),
        (dict(p_noise=0.0), "bkspc_reprobe needs backspace true and p_noise > 0"),
    ):
        with pytest.raises(ValueError, match=message):
            TrainConfig(bkspc_reprobe=True, **changes).validate()
