"""A model folder's ``task.json``: read as data from someone else, never as code unless asked,
never guessed when missing, and its file paths the ones training read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import TINY, fails

from sequencematch.apps.cli import main
from sequencematch.tasks.base import TaskOptions
from sequencematch.tasks.jsonl_task import JsonlTask

PROMPT = "In base 7, what is 1 + 1?"

PAYLOAD = """
from pathlib import Path
Path(__file__).with_name("imported.txt").write_text("this module ran")
"""


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("tasks") / "run"
    assert (
        main(["train", "--output-dir", str(run), "--steps", "2", "--save-every", "1", *TINY]) == 0
    )
    return run


@pytest.fixture
def model_copy(run_folder, tmp_path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(run_folder / "model", copy)
    (copy / "manifest.json").unlink()  # a folder edited by someone else
    return copy


def test_a_task_class_named_by_a_shared_folder_is_not_imported_without_consent(
    model_copy, tmp_path, capsys, monkeypatch
):
    (tmp_path / "payload_tasks.py").write_text(PAYLOAD)
    monkeypatch.syspath_prepend(str(tmp_path))  # as when run from the folder holding it
    info = json.loads((model_copy / "task.json").read_text())
    (model_copy / "task.json").write_text(json.dumps({**info, "task": "payload_tasks:Task"}))
    for command in (["generate", "--prompt", PROMPT], ["eval"]):
        fails(capsys, [*command, "--model", str(model_copy)], "pass --trust-task-code")
        assert not (tmp_path / "imported.txt").exists()
    fails(capsys, ["eval", "--model", str(model_copy), "--trust-task-code"], "has no attribute")
    assert (tmp_path / "imported.txt").exists()  # imported: the user said so


def test_built_in_tasks_need_no_consent(run_folder, capsys):
    assert main(["generate", "--model", str(run_folder / "model"), "--prompt", PROMPT]) == 0


def test_a_folder_without_task_json_is_refused_not_guessed(run_folder, capsys):
    checkpoint = run_folder / "checkpoints" / "step-00000001"
    assert not (checkpoint / "task.json").exists()
    for command in (["generate", "--prompt", PROMPT], ["eval"]):
        fails(capsys, [*command, "--model", str(checkpoint)], "pass --task NAME")
    argv = ["generate", "--model", str(checkpoint), "--prompt", PROMPT, "--task", "arithmetic"]
    assert main(argv) == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"task": "arithmetic",', "task.json is not valid JSON"),
        ("[1, 2]", "task.json must hold a JSON object, not list"),
        ('{"task": "arithmetic", "n_test": "x"}', "n_test must be a whole number"),
        ('{"task": "arithmetic", "difficulty": 5}', "difficulty must be a list of two numbers"),
        ('{"task": 3}', "names no task"),
        ('{"task": "arithmetic", "max_new_tokens": "7"}', "max_new_tokens must be"),
    ],
)
def test_a_bad_task_json_is_one_line_naming_it(model_copy, capsys, text, message):
    (model_copy / "task.json").write_text(text)
    line = fails(capsys, ["eval", "--model", str(model_copy)], message)
    assert str(model_copy / "task.json") in line


def test_task_json_records_data_files_as_resolved_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("pairs.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    info = JsonlTask(TaskOptions(train_file="pairs.jsonl")).info()
    assert info["train_file"] == str((tmp_path / "pairs.jsonl").resolve())
