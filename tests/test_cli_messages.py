"""Input that used to end in a traceback or a silent choice: one ``error:`` line naming what
was wrong and what to do, exit code 2."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
from conftest import TINY, fails

from sequencematch.apps.cli import build_parser, main

PROMPT = "In base 7, what is 1 + 1?"


@pytest.fixture
def model_copy(model_folder, tmp_path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(model_folder, copy)
    (copy / "manifest.json").unlink()  # a folder from elsewhere
    return copy


# ---------------------------------------------------------------------- data files


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "a", "completion": "b", "prompt": "c"}', "'prompt' appears twice"),
        ('{"prompt": "a\\ud800b", "completion": "b"}', "lone surrogate escape"),
        ('{"prompt": ' + "[" * 100_000 + "]" * 100_000 + ', "completion": "b"}', "too deeply"),
    ],
)
def test_a_jsonl_line_that_json_reads_silently_or_not_at_all_is_refused(
    tmp_path, capsys, line, message
):
    data = tmp_path / "pairs.jsonl"
    data.write_text(line + "\n")
    argv = ["train", "--task", "jsonl", "--train-file", str(data), "--output-dir",
            str(tmp_path / "run"), "--steps", "1", *TINY]  # fmt: skip
    fails(capsys, argv, f"{data}:line 1: ")
    fails(capsys, argv, message)


def test_a_text_corpus_line_with_a_key_twice_is_refused(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "one", "text": "two"}\n')
    argv = ["train", "--task", "text", "--train-file", str(corpus), "--output-dir",
            str(tmp_path / "run"), "--steps", "1", *TINY]  # fmt: skip
    fails(capsys, argv, f"{corpus}:line 1: the key 'text' appears twice")


def test_a_yaml_option_given_twice_is_refused(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("steps: 3\nlr: 0.001\nsteps: 5\n")
    fails(capsys, ["train", "--config", str(config)], "line 3, column 1: 'steps' is given twice")


# ---------------------------------------------------------------------- options


def test_an_unknown_device_is_one_line(tmp_path, capsys):
    argv = ["train", "--output-dir", str(tmp_path / "run"), "--steps", "1", *TINY]
    fails(capsys, [*argv, "--device", "tpu"], "device must be auto, cpu, cuda or cuda:N")


@pytest.mark.parametrize("command", ["train", "generate", "demo"])
def test_a_seed_out_of_range_is_one_line_naming_it(model_folder, tmp_path, capsys, command):
    huge = str(10**23)
    argv = {
        "train": ["train", "--output-dir", str(tmp_path / "run"), *TINY, "--seed", huge],
        "generate": ["generate", "--model", str(model_folder), "--prompt", PROMPT, "--seed", huge],
        "demo": ["demo", "--quick", "--out", str(tmp_path / "demo"), "--seed", huge],
    }[command]
    fails(capsys, argv, "seed")
    fails(capsys, argv, "must lie in [0, 4294967295]")


def test_an_infinite_temperature_is_one_line(model_folder, capsys):
    argv = ["generate", "--model", str(model_folder), "--prompt", PROMPT, "--sample"]
    fails(capsys, [*argv, "--temperature", "inf"], "--temperature must be a positive number")
    fails(capsys, ["eval", "--model", str(model_folder), "--temperature", "inf"], "--temperature")


def test_train_help_gives_each_default_once(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "optimiser steps (default: 1000)" in text
    assert not re.search(r"\(default: [^)]*\) \(default:", text)


# ---------------------------------------------------------------------- model folders


@pytest.mark.parametrize("payload", ["pickle", "random"])
def test_a_pytorch_model_bin_that_cannot_be_read_safely_is_one_line(
    model_copy, tmp_path, capsys, payload
):
    import os

    import torch

    class Touch:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    (model_copy / "model.safetensors").unlink()
    weights = model_copy / "pytorch_model.bin"
    if payload == "pickle":
        torch.save({"weight": Touch()}, weights)
    else:
        weights.write_bytes(bytes(range(256)) * 4)
    argv = ["generate", "--model", str(model_copy), "--prompt", PROMPT]
    fails(capsys, argv, f"{model_copy}: a pytorch_model.bin cannot be read safely")
    assert not (tmp_path / "ran").exists()


def test_an_invalid_tokenizer_json_is_named(model_copy, capsys):
    (model_copy / "tokenizer.json").write_text('{"version":')
    line = fails(capsys, ["eval", "--model", str(model_copy)], "tokenizer.json is not valid JSON")
    assert str(model_copy / "tokenizer.json") in line


def test_eval_json_is_json_even_when_a_number_is_not_finite(model_folder, capsys, monkeypatch):
    from sequencematch.tasks.arithmetic_task import ArithmeticTask

    real = ArithmeticTask.record
    monkeypatch.setattr(ArithmeticTask, "record", lambda self, r: real(self, r) | {"x": math.nan})
    capsys.readouterr()
    assert main(["eval", "--model", str(model_folder), "--json"]) == 0

    def refuse(constant: str):
        raise AssertionError(f"{constant} is not JSON")

    record = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert record["x"] is None and record["n"] == 2


def test_saved_files_are_readable_by_others(model_folder):
    private = [
        str(path) for path in model_folder.parent.rglob("*")
        if path.is_file() and path.stat().st_mode & 0o044 != 0o044
    ]  # fmt: skip
    assert private == []


def test_the_demo_s_disk_full_advice_is_its_own_resume_flag():
    from sequencematch.apps.cli import describe_error
    from sequencematch.storage.files import disk_full_error

    line = describe_error(disk_full_error("out/report.md"), "demo")
    assert "a demo continues with --resume)" in line and "--resume true" not in line
    assert "--resume true" in describe_error(disk_full_error("run/x"), "train")
