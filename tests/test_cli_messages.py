"""Input that used to end in a traceback or a silent choice: one ``error:`` line naming what
was wrong and what to do, exit code 2."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sequencematch.apps.cli import main

TINY = ["--model", "tiny_gpt2", "--hidden-size", "16", "--num-layers", "1", "--num-heads", "2",
        "--n-train", "16", "--n-valid", "2", "--n-test", "2", "--batch-size", "4",
        "--method", "mle", "--progress", "false"]  # fmt: skip
PROMPT = "In base 7, what is 1 + 1?"


def fails(capsys, argv: list[str], message: str) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("messages") / "run"
    assert main(["train", "--output-dir", str(run), "--steps", "2", *TINY]) == 0
    return run / "model"


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
