"""Training set-ups for pretrained models: bf16 SequenceMatch, LoRA, chat prompts, resumes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_trainer import make_trainer, small_config

from sequencematch.apps.setup import task_file
from sequencematch.models.presets import tiny_model
from sequencematch.training.schedule import objective_at
from sequencematch.training.trainer import Trainer

BF16_SM = dict(method="sequencematch", steps=4, mle_warmup_steps=0, p_noise=0.2)


def sequencematch_step_loss(trainer, after_refill=None) -> dict[str, torch.Tensor]:
    """The loss terms of step 1 (SequenceMatch phase, after the first refill; then
    ``after_refill()`` when given)."""
    trainer._refresh(1)
    if after_refill is not None:
        after_refill()
    micro = trainer._micro_batches(1, "sequencematch")[0]
    objective = objective_at(trainer.objective, trainer.config, 1)
    weight = trainer.sm_weight(1)
    return trainer.optimiser_step.loss(*micro, objective, weight, True)[0].as_dict()


def watch_dtypes(model) -> dict[str, set[torch.dtype]]:
    """The dtypes seen from now on: output of the body's first linear layer (``body``),
    input and output of the LM head (``head_in``, ``head_out``; calls on no position, which
    only fetch the body's output, left out); hooks stay registered."""
    seen: dict[str, set[torch.dtype]] = {"body": set(), "head_in": set(), "head_out": set()}
    linear = next(m for m in model.base_model.modules()
                  if type(m).__name__ in ("Linear", "Conv1D"))  # fmt: skip
    linear.register_forward_hook(lambda module, inputs, output: seen["body"].add(output.dtype))

    def head_hook(module, inputs, output) -> None:
        if output.numel() == 0:
            return
        seen["head_in"].add(inputs[0].dtype)
        seen["head_out"].add(output.dtype)

    model.get_output_embeddings().register_forward_hook(head_hook)
    return seen


def test_sequencematch_trains_in_bf16_with_float32_losses(tmp_path: Path):
    """bf16 runs the transformer body in bfloat16 and the LM head in float32: the loss is a
    float32 tensor, close to the float32 run's loss on the same batch, and steps run."""
    fp32 = make_trainer(small_config(tmp_path, "fp32", precision="fp32", **BF16_SM))
    bf16 = make_trainer(small_config(tmp_path, "bf16", precision="bf16", **BF16_SM))
    torch.manual_seed(0)
    exact = sequencematch_step_loss(fp32)
    torch.manual_seed(0)
    seen: dict[str, set[torch.dtype]] = {}
    # the model samples (plain float32 forwards) before the watch starts
    mixed = sequencematch_step_loss(bf16, lambda: seen.update(watch_dtypes(bf16.model)))
    assert seen == {"body": {torch.bfloat16}, "head_in": {torch.float32},
                    "head_out": {torch.float32}}  # fmt: skip
    assert all(mixed[name].dtype == torch.float32 for name in ("loss", "mle", "regulariser"))
    for name in ("loss", "mle", "regulariser"):
        want, got = float(exact[name].detach()), float(mixed[name].detach())
        assert got == pytest.approx(want, rel=2e-2, abs=2e-3), name
    bf16.optimizer.zero_grad(set_to_none=True)
    metrics = bf16._train_step(1)
    assert torch.isfinite(torch.tensor(metrics["loss"])) and metrics["grad_norm"] > 0


LORA = dict(method="sequencematch", steps=6, mle_warmup_steps=2, lora_r=4, lora_alpha=8.0,
            lora_dropout=0.1, lr=1e-2)  # fmt: skip


def trainable(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])


def test_lora_run_resumed_equals_an_uninterrupted_one(tmp_path: Path):
    straight = make_trainer(small_config(tmp_path, "straight", **LORA))
    straight.train()
    first = make_trainer(small_config(tmp_path, "split", stop_at=3, **LORA))
    first.train()
    resumed = make_trainer(small_config(tmp_path, "split", resume=True, **LORA))
    assert resumed.step == 3
    resumed.train()
    assert (trainable(straight.model) - trainable(resumed.model)).abs().max().item() <= 1e-6
    assert (trainable(first.model) - trainable(resumed.model)).abs().max().item() > 1e-4
    assert straight.replay.traces == resumed.replay.traces


def test_lora_trains_only_adapters_and_the_bkspc_row(tmp_path: Path):
    """The optimiser holds only adapters and the <bkspc> row; the saved model/ folder is the
    merged model, loadable by from_pretrained, differing from the base only in the adapted
    linear layers and the <bkspc> embedding row; the adapter is saved beside it."""
    from transformers import AutoModelForCausalLM

    from sequencematch.apps.setup import load_trained, prepare_run
    from sequencematch.models.backspace import add_backspace

    config = small_config(tmp_path, "lora", **(LORA | dict(lora_targets="q_proj,v_proj")))
    trainer = make_trainer(config)
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    names = [n for n, p in trainer.model.named_parameters() if id(p) in optimised]
    assert names and all("lora_" in n or "trainable_tokens" in n for n in names), names
    trainer.train()
    folder = tmp_path / "lora" / "model"
    assert (folder / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(folder)
    inputs = prepare_run(config)  # the same base, rebuilt from the seed
    base = inputs.model
    bk = add_backspace(base, inputs.tokenizer)
    base_weights = dict(base.named_parameters())
    changed = set()
    for name, weight in merged.named_parameters():
        difference = (weight - base_weights[name]).abs()
        if name.endswith("embed_tokens.weight"):
            assert difference[:bk].max().item() == 0.0 and difference[bk].max().item() > 0
        elif difference.max().item() > 0:
            changed.add(name.rsplit(".", 2)[-2])
    assert changed == {"q_proj", "v_proj"}
    assert load_trained(folder, task="arithmetic").bkspc_id == bk


def test_gradient_checkpointing_and_logit_chunks_give_the_same_loss(tmp_path: Path):
    plain = make_trainer(small_config(tmp_path, "plain", **BF16_SM))
    saving = make_trainer(small_config(tmp_path, "saving", gradient_checkpointing=True,
                                       logits_chunk_mb=1, **BF16_SM))  # fmt: skip
    torch.manual_seed(0)
    want = sequencematch_step_loss(plain)
    torch.manual_seed(0)
    got = sequencematch_step_loss(saving)
    assert float(got["loss"].detach()) == pytest.approx(float(want["loss"].detach()), abs=1e-5)
    want["loss"].backward()
    got["loss"].backward()
    for a, b in zip(plain.model.parameters(), saving.model.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-5)


CHAT_TEMPLATE = "{% for m in messages %}is {{ m['content'] }}{% endfor %} t"


def chat_model_config(tmp_path: Path):
    """A one-step MLE run with ``chat_template`` of a tiny model saved with a chat template
    (a character tokenizer of the arithmetic alphabet)."""
    from sequencematch.tasks.arithmetic_task import ArithmeticTask
    from sequencematch.tasks.base import TaskOptions

    tokenizer = ArithmeticTask(TaskOptions()).preset_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    model = tiny_model("tiny_llama", tokenizer, hidden_size=32, num_hidden_layers=1,
                       num_attention_heads=2)  # fmt: skip
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    return small_config(tmp_path, "chat", model=str(tmp_path / "base"), method="mle",
                        steps=1, chat_template=True)  # fmt: skip


def test_chat_template_formats_training_and_generate_prompts_alike(tmp_path: Path):
    from sequencematch.apps.setup import load_trained, prepare_run

    config = chat_model_config(tmp_path)
    inputs = prepare_run(config)
    first = inputs.tokenizer.decode(inputs.train[0].prompt, skip_special_tokens=True)
    assert first.startswith("is In base ") and first.endswith(" t")
    assert all(p.prompt.startswith("is ") for p in inputs.valid)
    assert inputs.task_info["chat_template"] is True
    Trainer(config, inputs.model, inputs.tokenizer, inputs.train,
            model_files=task_file(inputs.task_info)).train()  # fmt: skip
    trained = load_trained(tmp_path / "chat" / "model")
    assert trained.prompt_text("In base 7, what is 1 + 2?") == "is In base 7, what is 1 + 2? =  t"
    plain = small_config(tmp_path, "plain", chat_template=True)  # a preset: no template
    with pytest.raises(ValueError, match="chat template"):
        prepare_run(plain)


def test_eval_scores_prompts_in_the_chat_template_the_model_was_trained_with(
    tmp_path: Path, monkeypatch
):
    """eval of a model trained with chat_template: every task (arithmetic, jsonl, text)
    generates from prompts that encode to the template's tokens, as training's were."""
    import json

    from sequencematch.apps.cli import main
    from sequencematch.apps.setup import load_trained, prepare_run
    from sequencematch.core.examples import encode_prompt, with_bos
    from sequencematch.tasks.arithmetic_task import ArithmeticTask
    from sequencematch.tasks.base import choose_pairs
    from sequencematch.tasks.jsonl_task import JsonlTask
    from sequencematch.tasks.text_task import TextTask

    config = chat_model_config(tmp_path)
    inputs = prepare_run(config)
    Trainer(config, inputs.model, inputs.tokenizer, inputs.train,
            model_files=task_file(inputs.task_info)).train()  # fmt: skip
    folder = str(tmp_path / "chat" / "model")
    tokenizer = load_trained(folder).tokenizer
    seen: dict[str, list[str]] = {}
    for task in (ArithmeticTask, JsonlTask, TextTask):
        original = task.evaluate

        def spy(self, model, tok, pairs, *, _original=original, **kwargs):
            seen[self.name] = [p.prompt for p in pairs]
            return _original(self, model, tok, pairs, **kwargs)

        monkeypatch.setattr(task, "evaluate", spy)
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "1 + 2 =", "completion": " 3"}) + "\n")
    assert main(["eval", "--model", folder, "--n", "2"]) == 0
    assert main(["eval", "--model", folder, "--task", "jsonl", "--data", str(data)]) == 0
    assert main(["eval", "--model", folder, "--task", "text", "--data", str(data),
                 "--no-mauve"]) == 0  # fmt: skip
    test_split = choose_pairs(ArithmeticTask(inputs.task.options).splits["test"], 2, seed=0)
    # the same test questions as training formats them
    assert seen["arithmetic"] == [p.prompt for p in choose_pairs(inputs.test, 2, seed=0)]
    raw = {
        "arithmetic": [p.prompt for p in test_split],
        "jsonl": ["1 + 2 ="],
        "text": ["1 + 2 ="],
    }
    assert set(seen) == set(raw)
    for name, prompts in seen.items():
        assert len(prompts) == len(raw[name]), name
        for prompt, text in zip(prompts, raw[name], strict=True):
            template = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True,
                return_dict=True,
            )["input_ids"]  # fmt: skip
            assert encode_prompt(tokenizer, prompt) == with_bos(tokenizer, template), name
            assert prompt == f"is {text} t", name


def test_a_fraction_warm_up_stays_put_when_a_resume_changes_steps(tmp_path: Path):
    changes = dict(method="sequencematch", mle_warmup_fraction=0.5)
    first = make_trainer(small_config(tmp_path, "run", steps=8, stop_at=2, **changes))
    first.train()
    assert first.config.mle_warmup() == 4
    resumed = make_trainer(small_config(tmp_path, "run", steps=16, resume=True, **changes))
    assert resumed.step == 2 and resumed.config.mle_warmup() == 4  # not 8
    assert resumed._phase(5) == "sequencematch"
    resumed.config = resumed.config.replace(stop_at=3)
    resumed.train()
    again = make_trainer(small_config(tmp_path, "run", steps=16, resume=True, **changes))
    assert again.step == 3 and again.config.mle_warmup() == 4
