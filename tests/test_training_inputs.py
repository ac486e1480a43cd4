"""What a run reads from the user: held-out data checked before training, the trained model
saved before anything can fail at the end, literal special-token text kept as text, and the
data and base model a resume must find unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sequencematch.apps.cli import main
from sequencematch.apps.setup import prepare_run
from sequencematch.training.config import TrainConfig
from sequencematch.training.trainer import Trainer

TINY = ["--model", "tiny_gpt2", "--hidden-size", "16", "--num-layers", "1", "--num-heads", "2",
        "--batch-size", "4", "--method", "mle", "--progress", "false"]  # fmt: skip


def fails(capsys, argv: list[str], message: str) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0], lines[0]
    return lines[0]


def write_pairs(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in pairs))
    return path


def pairs_config(tmp_path: Path, **changes) -> TrainConfig:
    train = write_pairs(tmp_path / "train.jsonl", [(f"{w}:", w[::-1]) for w in ("ab", "cd")] * 4)
    values = dict(task="jsonl", train_file=str(train), model="tiny_gpt2", hidden_size=16,
                  num_layers=1, num_heads=2, batch_size=4, method="mle", steps=2,
                  progress=False, output_dir=str(tmp_path / "run"))  # fmt: skip
    return TrainConfig(**(values | changes)).validate()


# ---------------------------------------------------------------------- the end of a run


def test_a_validation_prompt_longer_than_the_model_is_refused_before_training(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    write_pairs(pairs, [("ab:", "ba"), ("cd:", "dc")])
    valid = write_pairs(tmp_path / "valid.jsonl", [("ab:", "ba"), ("a" * 600 + ":", "a")])
    run = tmp_path / "run"
    fails(capsys, ["train", "--task", "jsonl", "--train-file", str(pairs), "--valid-file",
                   str(valid), "--output-dir", str(run), "--steps", "2", *TINY],
          "validation data: prompt 2 has 602 tokens")  # fmt: skip
    assert not (run / "metrics.jsonl").exists()


def test_eval_data_longer_than_the_model_is_one_line(tmp_path, capsys):
    config = pairs_config(tmp_path)
    inputs = prepare_run(config)
    Trainer(config, inputs.model, inputs.tokenizer, inputs.train,
            model_files={"task.json": json.dumps(inputs.task_info)}).train()  # fmt: skip
    data = write_pairs(tmp_path / "long.jsonl", [("a" * 600 + ":", "a")])
    argv = ["eval", "--model", str(tmp_path / "run" / "model"), "--data", str(data)]
    fails(capsys, argv, f"{data}: prompt 1 has 602 tokens")


def test_the_model_is_saved_before_the_final_evaluation(tmp_path):
    config = pairs_config(tmp_path)
    inputs = prepare_run(config)

    def evaluate(model):
        raise RuntimeError("the evaluation failed")

    trainer = Trainer(config, inputs.model, inputs.tokenizer, inputs.train, evaluate=evaluate)
    with pytest.raises(RuntimeError, match="the evaluation failed"):
        trainer.train()
    run = tmp_path / "run"
    assert (run / "model" / "model.safetensors").is_file()
    assert (run / "checkpoints" / "step-00000002").is_dir()
