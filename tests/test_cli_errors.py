"""Bad input through the command line: one line on stderr and exit code 2, never a traceback,
and never a silent guess (a one-line warning where a default is right)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import TINY, fails

from sequencematch.apps.cli import main
from sequencematch.training.run_folder import LOCK_FILE


@pytest.fixture
def model_copy(model_folder, tmp_path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(model_folder, copy)
    return copy


def write_lines(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ---------------------------------------------------------------------- checkpoints and disks


def test_a_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--output-dir", str(run), "--steps", "4", "--stop-at", "2", *TINY]) == 0
    state = run / "checkpoints" / "step-00000002" / "state.safetensors"
    state.write_bytes(state.read_bytes()[:100])
    fails(capsys, ["train", "--output-dir", str(run), "--steps", "4", "--resume", "true", *TINY],
          "state.safetensors does not match its sha256")  # fmt: skip


def test_corrupt_model_weights_are_one_line(model_copy, capsys):
    weights = model_copy / "model.safetensors"
    weights.write_bytes(b"\xff" * 64 + weights.read_bytes()[64:])
    generate = ["generate", "--model", str(model_copy), "--prompt", "In base 7, what is 1 + 1?"]
    fails(capsys, generate, "model.safetensors does not match its sha256")
    (model_copy / "manifest.json").unlink()  # a folder from elsewhere: the loader's own error
    fails(capsys, generate, f"{model_copy}: the model weights cannot be read (Error while")


def test_a_full_disk_while_saving_a_checkpoint_says_so(tmp_path, capsys, monkeypatch):
    from safetensors.torch import save

    from sequencematch.training import state_files

    def save_to_a_full_disk(tensors, path, *args, **kwargs):
        with open("/dev/full", "wb") as full:
            full.write(save(tensors))

    monkeypatch.setattr(state_files, "save_file", save_to_a_full_disk)
    run = tmp_path / "run"
    fails(capsys, ["train", "--output-dir", str(run), "--steps", "2", "--save-every", "1", *TINY],
          "no space left on device (writing")  # fmt: skip
    assert not list((run / "checkpoints").iterdir())  # the staging folder was removed


# ---------------------------------------------------------------------- lengths


def test_examples_longer_than_the_model_are_refused_before_training(tmp_path, capsys):
    # completions are cut at max_completion_tokens; a prompt is never cut
    pairs = [{"prompt": "1+1=", "completion": "2"}, {"prompt": "x" * 600, "completion": "7"}]
    data = write_lines(tmp_path / "long.jsonl", pairs)
    run = tmp_path / "run"
    fails(capsys, ["train", "--output-dir", str(run), "--task", "jsonl", "--train-file",
                   str(data), "--steps", "1", *TINY],
          "training example 2 has 603 tokens (prompt 601, completion 2), more than the model's "
          "512 positions")  # fmt: skip


def test_a_prompt_longer_than_the_model_is_refused(model_folder, capsys):
    fails(capsys, ["generate", "--model", str(model_folder), "--prompt", "1" * 3000],
          "the prompt has 3004 tokens")  # fmt: skip


def test_zero_new_tokens_is_refused_not_replaced_by_a_default(model_folder, capsys):
    fails(capsys, ["generate", "--model", str(model_folder), "--prompt", "In base 7, what is 1?",
                   "--max-new-tokens", "0"], "--max-new-tokens must be at least 1")  # fmt: skip


# ---------------------------------------------------------------------- silent guesses


def test_characters_the_tokenizer_does_not_know_are_named(model_folder, capsys):
    capsys.readouterr()
    assert main(["generate", "--model", str(model_folder), "--prompt",
                 "In base 7, what is 1 + 1é?"]) == 0  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert err == (
        "warning: the prompt holds characters the model's tokenizer does not know ('é'); they "
        "are read as <unk>"
    )


def test_eval_without_task_json_asks_for_the_task(model_copy, tmp_path, capsys):
    (model_copy / "task.json").unlink()
    data = write_lines(tmp_path / "q.jsonl", [{"question": "In base 7, what is 1 + 1?",
                                               "answer": "2"}])  # fmt: skip
    fails(capsys, ["eval", "--model", str(model_copy), "--data", str(data)],
          "has no task.json (sequencematch train writes one), so the task it was trained on is "
          "unknown: pass --task NAME (arithmetic, jsonl or text)")  # fmt: skip
    capsys.readouterr()
    assert main(["eval", "--model", str(model_copy), "--data", str(data), "--task", "arithmetic",
                 "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["n"] == 1


def test_mauve_on_a_handful_of_samples_is_flagged(model_folder, tmp_path, capsys, monkeypatch):
    from sequencematch.tasks.text_task import TextTask

    monkeypatch.setattr(TextTask, "evaluate", _stop)
    text = tmp_path / "short.txt"
    text.write_text("In base 7, what is 1 + 1? = 2\n" * 10)
    capsys.readouterr()
    assert main(["eval", "--model", str(model_folder), "--task", "text", "--data", str(text)]) == 2
    warning = capsys.readouterr().err.splitlines()[0]
    assert warning.startswith("warning: MAUVE from 3 samples is unreliable")


def _stop(*args, **kwargs):
    raise ValueError("stopped before sampling")


@pytest.mark.parametrize("where", ["eval", "generate"])
def test_a_base_outside_2_to_16_is_refused(model_folder, tmp_path, capsys, where):
    question = "In base 99, what is 1 + 1?"
    if where == "generate":
        fails(capsys, ["generate", "--model", str(model_folder), "--prompt", question],
              "base 99 is out of range: arithmetic questions are in bases 2 to 16")  # fmt: skip
        return
    data = write_lines(tmp_path / "q.jsonl", [{"question": question, "answer": "2"}])
    fails(capsys, ["eval", "--model", str(model_folder), "--data", str(data)],
          "q.jsonl:line 1: base 99 is out of range")  # fmt: skip


# ---------------------------------------------------------------------- data files


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"prompt": "1+1=", "completion": "2"}\n{"prompt": "2\xff", "completion": "3"}\n',
         "pairs.jsonl: not UTF-8 text at line 2 (byte 0xff at column 14)"),
        (b'{"prompt": null, "completion": "2"}\n', "pairs.jsonl:line 1: 'prompt' must be a "
         "string, got null"),
        (b'{"prompt": "", "completion": ""}\n', "pairs.jsonl:line 1: the completion is empty"),
        (b'{"question": "In base 99, what is 1 + 1?", "answer": "2"}\n',
         "pairs.jsonl:line 1: base 99 is out of range"),
    ],
)  # fmt: skip
def test_bad_training_files_name_the_file_and_line(tmp_path, capsys, content, message):
    data = tmp_path / "pairs.jsonl"
    data.write_bytes(content)
    fails(capsys, ["train", "--output-dir", str(tmp_path / "run"), "--task", "jsonl",
                   "--train-file", str(data), *TINY], message)  # fmt: skip


def test_bad_yaml_through_the_command_line_is_one_line(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text('steps: "three"\nlr: "1e-3"\n')
    fails(capsys, ["train", "--config", str(config)],
          "invalid training configuration: steps must be a whole number, got the text 'three' "
          "(write it as the option expects); lr must be a finite number")  # fmt: skip
    fails(capsys, ["train", "--config", str(tmp_path / "missing.yaml")],
          f"{tmp_path / 'missing.yaml'}: No such file or directory")  # fmt: skip


# ---------------------------------------------------------------------- models


def test_a_model_name_that_is_neither_preset_nor_folder(tmp_path, capsys):
    fails(capsys, ["train", "--output-dir", str(tmp_path / "run"), "--model", "tiny_gtp2"],
          "model 'tiny_gtp2' is neither a preset (tiny_gpt2, tiny_llama), a known pretrained "
          "model (smollm2-135m), a model folder nor a .gguf file")  # fmt: skip
    fails(capsys, ["generate", "--model", str(tmp_path / "nothing"), "--prompt", "1"],
          f"--model: {tmp_path / 'nothing'} does not exist")  # fmt: skip


def test_a_model_folder_without_its_tokenizer(model_copy, tmp_path, capsys):
    (model_copy / "tokenizer.json").unlink()
    fails(capsys, ["generate", "--model", str(model_copy), "--prompt", "1"],
          "has no tokenizer (no tokenizer.json)")  # fmt: skip
    fails(capsys, ["train", "--output-dir", str(tmp_path / "run"), "--model", str(model_copy)],
          "has no tokenizer (no tokenizer.json)")  # fmt: skip


# ---------------------------------------------------------------------- run folders


def test_demo_refuses_a_folder_holding_the_users_files(tmp_path, capsys):
    out = tmp_path / "d"
    (out / "mle").mkdir(parents=True)
    (out / "mle" / "notes.txt").write_text("notes")
    (out / "report.md").write_text("my report")
    for extra in ([], ["--overwrite"]):
        fails(capsys, ["demo", "--quick", "--out", str(out), *extra],
              "which no sequencematch run recorded writing")  # fmt: skip
    assert (out / "mle" / "notes.txt").read_text() == "notes"
    assert (out / "report.md").read_text() == "my report"
    assert sorted(p.name for p in out.iterdir()) == ["mle", "report.md"]
    assert not (out / LOCK_FILE).exists()


def test_a_second_train_into_a_finished_run_names_the_flags(tmp_path, capsys):
    run = ["train", "--output-dir", str(tmp_path / "run"), "--steps", "1", *TINY]
    assert main(run) == 0
    fails(capsys, run, "already holds a run (checkpoints/latest, checkpoints/step-00000001, "
          "metrics.jsonl, model); pass --resume true to continue it, --overwrite true to "
          "replace it")  # fmt: skip
    capsys.readouterr()
    assert main([*run, "--overwrite", "true"]) == 0
