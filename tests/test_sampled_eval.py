"""Sampled evaluation of exact-match tasks: ``eval --sample --temperature T``, seeded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_model

from sequencematch.apps.cli import main
from sequencematch.tasks.arithmetic import make_splits, write_jsonl
from sequencematch.tasks.exact_match import evaluate_exact_match

TINY = ["--model", "tiny_gpt2", "--hidden-size", "16", "--num-layers", "1", "--num-heads", "2",
        "--n-train", "16", "--n-valid", "2", "--n-test", "2", "--batch-size", "4",
        "--method", "mle", "--p-noise", "0.2", "--progress", "false"]  # fmt: skip


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("sampled") / "run"
    assert main(["train", "--output-dir", str(run), "--steps", "2", *TINY]) == 0
    return run / "model"


@pytest.fixture(scope="module")
def questions(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("questions") / "questions.jsonl"
    write_jsonl(make_splits(0, 0, 24, seed=5)["test"], path)
    return path


def evaluate(capsys, model: Path, data: Path, *flags: str) -> dict:
    capsys.readouterr()
    assert main(["eval", "--model", str(model), "--data", str(data), "--json", *flags]) == 0
    return json.loads(capsys.readouterr().out)


def test_sampled_eval_says_so_and_is_seeded(model_folder, questions, capsys):
    greedy = evaluate(capsys, model_folder, questions)
    assert greedy["decoding"] == "greedy" and greedy["temperature"] is None
    sampled = evaluate(capsys, model_folder, questions, "--sample", "--seed", "3")
    assert sampled["decoding"] == "sample" and sampled["temperature"] == 1.0
    assert set(sampled) == set(greedy)  # accuracy, interval, <bkspc> rate, ... as greedy has
    assert sampled["n"] == 24 and 0.0 <= sampled["accuracy"] <= 1.0
    assert 0.0 <= sampled["bkspc_rate"] <= 1.0
    assert sampled != {**greedy, "decoding": "sample", "temperature": 1.0}  # other answers
    assert evaluate(capsys, model_folder, questions, "--sample", "--seed", "3") == sampled
    other_seed = evaluate(capsys, model_folder, questions, "--sample", "--seed", "4")
    assert other_seed != sampled


def test_temperature_applies_to_sampled_answers(model_folder, questions, capsys):
    hot = evaluate(capsys, model_folder, questions, "--sample", "--temperature", "3")
    cold = evaluate(capsys, model_folder, questions, "--sample", "--temperature", "1e-6")
    assert hot["temperature"] == 3.0 and cold["temperature"] == 1e-6
    assert hot["mean_actions"] != cold["mean_actions"]


def _predictions(model, tokenizer, bk, pairs, **kwargs) -> list[str]:
    result = evaluate_exact_match(model, tokenizer, pairs, bkspc_id=bk, max_new_tokens=6,
                                  batch_size=4, num_examples=len(pairs), **kwargs)  # fmt: skip
    return [example["prediction"] for example in result.examples]


def test_sampled_answers_are_those_of_the_seed_and_near_greedy_when_cold():
    model, tokenizer, bk = make_model("tiny_llama", dtype=torch.float32, seed=2)
    pairs = [(f"{a}+{b}=", str(a + b)) for a in range(4) for b in range(3)]
    sampled = _predictions(model, tokenizer, bk, pairs, do_sample=True, seed=7)
    assert _predictions(model, tokenizer, bk, pairs, do_sample=True, seed=7) == sampled
    assert _predictions(model, tokenizer, bk, pairs, do_sample=True, seed=8) != sampled
    greedy = _predictions(model, tokenizer, bk, pairs)
    assert sampled != greedy
    cold = _predictions(model, tokenizer, bk, pairs, do_sample=True, temperature=1e-6, seed=7)
    assert cold == greedy


def test_summary_names_the_decoding(model_folder, questions, capsys):
    capsys.readouterr()
    assert main(["eval", "--model", str(model_folder), "--data", str(questions),
                 "--sample", "--temperature", "0.7"]) == 0  # fmt: skip
    assert "sampled at temperature 0.7" in capsys.readouterr().out
    assert main(["eval", "--model", str(model_folder), "--data", str(questions)]) == 0
    assert "greedy" in capsys.readouterr().out


def test_temperature_without_sample_is_flagged_for_exact_match(model_folder, questions, capsys):
    capsys.readouterr()
    assert main(["eval", "--model", str(model_folder), "--data", str(questions), "--json",
                 "--temperature", "0.5"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert json.loads(captured.out)["decoding"] == "greedy"
    assert "warning: --temperature applies to arithmetic answers only with --sample" in (
        captured.err
    )


def test_jsonl_pairs_are_sampled_too(model_folder, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"In base 7, what is {a} + 1? = ",
                                         "completion": str(a + 1)}) + "\n"
                             for a in range(5)))  # fmt: skip
    flags = ("--task", "jsonl", "--sample", "--seed", "1")
    sampled = evaluate(capsys, model_folder, pairs, *flags)
    assert sampled["decoding"] == "sample" and sampled["n"] == 5
    assert evaluate(capsys, model_folder, pairs, *flags) == sampled
