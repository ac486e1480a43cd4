"""Run folders and checkpoints: nothing a user wrote is lost, a checkpoint called good is good.

Each test reproduces a way of losing files or resuming from a bad state (a user's folder,
a deleted ``latest``, two processes, a NaN update, a flipped byte, a torn metrics line, a
moved folder, crash leftovers) and checks what the run folder holds afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sequencematch.apps.demos.demo_folder import clear_previous_runs
from sequencematch.apps.setup import prepare_run
from sequencematch.training import checkpoints
from sequencematch.training.checkpoints import CheckpointError, latest_checkpoint
from sequencematch.training.config import TrainConfig
from sequencematch.training.run_folder import LOCK_FILE, MARKER_FILE, RunFolderError, read_marker
from sequencematch.training.trainer import Trainer, TrainingError

SMALL = dict(
    method="mle", model="tiny_gpt2", n_train=32, n_valid=4, n_test=4, difficulty=[2.0, 5.0],
    hidden_size=16, num_layers=1, num_heads=2, batch_size=4, warmup_steps=1, log_every=1,
    save_every=2, progress=False, p_noise=0.2, lr=3e-3, steps=6,
)  # fmt: skip
METHODS = ("mle", "mle-bkspc", "sequencematch-chi2-bkspc")


def config_for(folder: Path | str, **changes) -> TrainConfig:
    return TrainConfig(output_dir=str(folder), **(SMALL | changes)).validate()


def train(config: TrainConfig, hook=None) -> Trainer:
    inputs = prepare_run(config)
    trainer = Trainer(config, inputs.model, inputs.tokenizer, inputs.train)
    if hook is not None:
        hook(trainer)
    trainer.train()
    return trainer


def logged_steps(folder: Path) -> list[int]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (the lock file aside) and its bytes."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != LOCK_FILE
    }


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def same_weights(first: Path, second: Path) -> bool:
    a, b = weights(first), weights(second)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------- 1. ownership


def test_files_no_run_wrote_are_never_deleted_or_trained_over(tmp_path):
    folder = tmp_path / "run"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "pytorch_model.bin").write_bytes(b"the user's own weights")
    (folder / "checkpoints" / "step-00000002").mkdir(parents=True)
    (folder / "checkpoints" / "step-00000002" / "weights.bin").write_bytes(b"theirs")
    (folder / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    before = snapshot(folder)
    for changes in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(RunFolderError, match="no sequencematch run recorded writing"):
            train(config_for(folder, **changes))
    assert snapshot(folder) == before
    assert not (folder / LOCK_FILE).exists() and not (folder / MARKER_FILE).exists()


def test_a_run_leaves_unrelated_files_of_its_folder_alone(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.yaml").write_text("steps: 4\n")
    train(config_for(folder, steps=4))
    assert (folder / "run.yaml").read_text() == "steps: 4\n"
    assert logged_steps(folder) == [1, 2, 3, 4]


def test_overwrite_deletes_exactly_what_the_earlier_run_wrote(tmp_path, capsys):
    folder = tmp_path / "run"
    train(config_for(folder, steps=4))
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match=r"already holds a run .*--overwrite true"):
        train(config_for(folder, steps=4, lr=1e-2))
    replaced = train(config_for(folder, steps=4, lr=1e-2, overwrite=True))
    assert logged_steps(folder) == [1, 2, 3, 4]  # the earlier run's lines are gone, not doubled
    assert (folder / "notes.txt").read_text() == "mine"
    assert read_marker(folder).run_id == replaced.run.run_id
    # a file the user put inside the run's model folder stops the next overwrite, untouched
    (folder / "model" / "my_notes.txt").write_text("also mine")
    before = snapshot(folder)
    with pytest.raises(RunFolderError, match="model/my_notes.txt"):
        train(config_for(folder, steps=4, overwrite=True))
    assert snapshot(folder) == before


def test_a_demo_replaces_only_its_own_outputs_and_only_when_asked(tmp_path, capsys):
    out = tmp_path / "demo"
    (out / "mle").mkdir(parents=True)
    (out / "mle" / "notes.txt").write_text("notes")
    (out / "report.md").write_text("my report")
    before = snapshot(out)
    for overwrite in (False, True):
        with pytest.raises(RunFolderError, match="no sequencematch run recorded writing"):
            clear_previous_runs(out, METHODS, overwrite)
    assert snapshot(out) == before
    # an earlier demo: its marker lists what it writes; one of its runs trained in mle/
    shutil.rmtree(out)
    clear_previous_runs(out, METHODS)
    train(config_for(out / "mle", steps=2))
    (out / "report.md").write_text("the demo's report")
    (out / "mle" / "notes.txt").write_text("notes")  # added by the user since
    (out / "mine.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="already holds a run .*--overwrite"):
        clear_previous_runs(out, METHODS)
    assert (out / "report.md").exists()
    clear_previous_runs(out, METHODS, overwrite=True)
    assert "replacing the previous demo run" in capsys.readouterr().out
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert left == sorted([LOCK_FILE, MARKER_FILE, "mine.txt", "mle/notes.txt"])


def test_a_demo_overwrite_touches_nothing_when_a_run_holds_a_strangers_file(tmp_path):
    out = tmp_path / "demo"
    clear_previous_runs(out, METHODS)
    train(config_for(out / "mle", steps=2))
    (out / "results.json").write_text("{}")
    (out / "mle" / "model" / "extra.txt").write_text("mine")
    before = snapshot(out)
    with pytest.raises(RunFolderError, match="mle/model/extra.txt inside it was not written"):
        clear_previous_runs(out, METHODS, overwrite=True)
    assert snapshot(out) == before


# ---------------------------------------------------------------------- 2. a missing pointer


@pytest.mark.parametrize("pointer", ["deleted", "empty", "names a missing folder"])
def test_resume_without_latest_uses_the_newest_intact_checkpoint(tmp_path, pointer):
    straight = train(config_for(tmp_path / "straight", steps=8))
    folder = tmp_path / "run"
    train(config_for(folder, steps=8, stop_at=5))  # checkpoints 4 and 5
    latest = folder / "checkpoints" / "latest"
    if pointer == "deleted":
        latest.unlink()
    else:
        latest.write_text("" if pointer == "empty" else "step-00000099\n")
    resumed = train(config_for(folder, steps=8, resume=True))
    assert resumed.step == 8 and logged_steps(folder) == list(range(1, 9))
    assert same_weights(folder / "model", tmp_path / "straight" / "model")
    assert straight.step == 8


def test_resume_refuses_when_no_checkpoint_of_the_run_is_intact(tmp_path):
    folder = tmp_path / "run"
    train(config_for(folder, steps=8, stop_at=4, keep_checkpoints=1))
    (folder / "checkpoints" / "latest").unlink()
    (folder / "checkpoints" / "step-00000004" / "manifest.json").write_text("{")
    before = snapshot(folder)
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        train(config_for(folder, steps=8, resume=True))
    assert snapshot(folder) == before


def test_a_run_stopped_before_its_first_checkpoint_starts_again_once(tmp_path):
    folder = tmp_path / "run"

    def crash_at_step_3(trainer):
        original = trainer._train_step

        def step(number):
            if number == 3:
                raise KeyboardInterrupt
            return original(number)

        trainer._train_step = step

    with pytest.raises(KeyboardInterrupt):
        train(config_for(folder, save_every=0), crash_at_step_3)
    assert logged_steps(folder) == [1, 2] and not (folder / "checkpoints").exists()
    train(config_for(folder, save_every=0, resume=True))
    assert logged_steps(folder) == list(range(1, 7))


# ---------------------------------------------------------------------- 3. one writer


def test_a_second_process_is_refused_and_a_killed_ones_lock_is_no_obstacle(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom sequencematch.training.run_folder import RunFolder\n"
         f"held = RunFolder({str(folder)!r}, 'train', ()).lock()\nprint('locked', flush=True)\n"
         "time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match=f"in use by another .* \\(pid {holder.pid}\\)"):
            train(config_for(folder, steps=2))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    train(config_for(folder, steps=2))
    assert logged_steps(folder) == [1, 2]


# ---------------------------------------------------------------------- 4. finite checkpoints


def test_a_non_finite_gradient_is_never_applied_nor_checkpointed(tmp_path):
    folder = tmp_path / "run"

    def poison_gradients_from_step_3(trainer):
        parameter = next(trainer.model.parameters())
        parameter.register_hook(lambda grad: grad * float("nan") if trainer.step >= 2 else grad)

    trainer = None

    def keep(t):
        nonlocal trainer
        trainer = t
        poison_gradients_from_step_3(t)

    with pytest.raises(TrainingError, match="non-finite gradient norm at step 3") as error:
        train(config_for(folder, save_every=1), keep)
    assert "step-00000002" in str(error.value) and "--lr" in str(error.value)
    saved = weights(folder / "checkpoints" / "step-00000002")
    current = {k: v.detach() for k, v in trainer.model.state_dict().items()}
    assert all(torch.equal(saved[k], current[k]) for k in saved)  # step 3 changed nothing


def test_a_diverging_run_keeps_only_finite_checkpoints(tmp_path, capsys):
    folder = tmp_path / "run"
    with pytest.raises(TrainingError, match="non-finite gradient norm") as error:
        train(config_for(folder, steps=40, lr=1e3, warmup_steps=0, save_every=1))
    named = latest_checkpoint(folder)
    assert named is not None and f"checkpoint is {named}:" in str(error.value)
    for checkpoint in (folder / "checkpoints").glob("step-*"):
        assert all(torch.isfinite(t).all() for t in weights(checkpoint).values())
        state = checkpoints.load_state(checkpoint)
        moments = [t for s in state["optimizer"]["state"].values() for t in s.values()]
        assert all(torch.isfinite(t).all() for t in moments)
    # the advice is followed: a lower lr is accepted and the checkpoint restores cleanly; these
    # weights are already too large to train on, which the run says again, in the same words
    with pytest.raises(TrainingError, match="non-finite gradient norm.*start again"):
        train(config_for(folder, steps=40, lr=1e-3, warmup_steps=0, resume=True))
    assert f"resumed from {named}" in capsys.readouterr().out
    steps = logged_steps(folder)
    assert steps == sorted(set(steps))


def test_a_stop_between_log_steps_resumes_to_the_uninterrupted_metrics(tmp_path):
    def records(folder: Path) -> list[dict]:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in lines]

    train(config_for(tmp_path / "whole", log_every=4, steps=8, n_valid=0))
    train(config_for(tmp_path / "stopped", log_every=4, steps=8, n_valid=0, stop_at=3))
    written = tmp_path / "stopped" / "metrics.jsonl"
    assert not written.exists() or not written.read_text()  # step 3 is not a log step
    train(config_for(tmp_path / "stopped", log_every=4, steps=8, n_valid=0, resume=True))
    assert logged_steps(tmp_path / "whole") == [4, 8]
    assert records(tmp_path / "stopped") == records(tmp_path / "whole")


def test_a_checkpoint_with_non_finite_parameters_is_refused(tmp_path):
    folder = tmp_path / "run"
    trainer = train(config_for(folder, steps=4, stop_at=2))
    with torch.no_grad():
        next(trainer.model.parameters())[0] = float("inf")
    trainer.step = 3
    trainer.run.lock()
    with pytest.raises(CheckpointError, match="not finite; the last good checkpoint is"):
        trainer.save_checkpoint()
    trainer.close()
    assert not (folder / "checkpoints" / "step-00000003").exists()
    assert latest_checkpoint(folder).name == "step-00000002"


# ---------------------------------------------------------------------- 5. allowed changes


def test_resume_may_change_the_learning_rate_but_not_the_objective(tmp_path, capsys):
    folder = tmp_path / "run"
    train(config_for(folder, stop_at=2, warmup_steps=0, min_lr_ratio=1.0))
    with pytest.raises(CheckpointError, match=r"alpha: 10.0 -> 0.5\), which cannot change") as e:
        train(config_for(folder, resume=True, alpha=0.5))
    assert "these can: " in str(e.value) and " lr, " in str(e.value)
    train(config_for(folder, resume=True, lr=3e-4, warmup_steps=0, min_lr_ratio=1.0))
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in records] == pytest.approx([3e-3, 3e-3, 3e-4, 3e-4, 3e-4, 3e-4])


def test_an_offline_run_written_the_older_way_resumes_as_method_offline(tmp_path):
    """``sequencematch`` with a warm-up as long as the run is the offline objective: a run
    checkpointed in that form resumes under ``method offline`` and goes on exactly as an
    uninterrupted ``offline`` run; an online run is still refused as offline."""
    offline = dict(method="offline", backspace=True, p_noise=0.2, regularise_warmup=True)
    older = dict(offline, method="sequencematch", mle_warmup_steps=6)
    whole = tmp_path / "whole"
    train(config_for(whole, **offline))
    folder = tmp_path / "run"
    train(config_for(folder, **older, stop_at=4))
    train(config_for(folder, **offline, resume=True))
    assert logged_steps(folder) == list(range(1, 7)) and _same_but_time(folder, whole)
    with pytest.raises(CheckpointError, match="method: 'offline' -> 'sequencematch'"):
        train(config_for(folder, **dict(older, mle_warmup_steps=2), resume=True, steps=8))


def _same_but_time(a: Path, b: Path) -> bool:
    """Two metrics files equal in every field but the wall-clock ones."""

    def read(folder: Path) -> list[dict]:
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if "elapsed" not in k and "per_s" not in k and
                 not k.endswith("_s")} for r in rows]  # fmt: skip

    return read(a) == read(b)


# ---------------------------------------------------------------------- 6. checksums


def flip_bytes(path: Path, count: int = 200) -> None:
    data = bytearray(path.read_bytes())
    start = len(data) - count - 16
    for index in range(start, start + count):
        data[index] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_corrupt_checkpoint_is_refused_and_the_intact_one_is_kept(tmp_path):
    folder = tmp_path / "run"
    train(config_for(folder, steps=8, stop_at=6))  # checkpoints 4 and 6
    flip_bytes(folder / "checkpoints" / "step-00000006" / "model.safetensors")
    before = snapshot(folder)
    with pytest.raises(CheckpointError, match="model.safetensors does not match its sha256") as e:
        train(config_for(folder, steps=8, resume=True))
    assert "newest intact checkpoint is step-00000004" in str(e.value)
    assert snapshot(folder) == before
    shutil.move(folder / "checkpoints" / "step-00000006", tmp_path / "corrupt-step-6")
    train(config_for(folder, steps=8, resume=True))
    assert logged_steps(folder) == list(range(1, 9))


def test_rotation_keeps_the_older_checkpoints_when_the_new_one_fails_verification(
    tmp_path, monkeypatch
):
    folder = tmp_path / "run"
    trainer = train(config_for(folder, steps=8, stop_at=4, keep_checkpoints=1))
    real = checkpoints.write_manifest

    def manifest_then_bit_rot(staging, run_id, **extra):
        real(staging, run_id, **extra)
        flip_bytes(staging / "state.safetensors", 8)

    monkeypatch.setattr(checkpoints, "write_manifest", manifest_then_bit_rot)
    trainer.run.lock()
    trainer.step = 5
    with pytest.raises(CheckpointError, match="state.safetensors does not match"):
        trainer.save_checkpoint()
    trainer.close()
    assert latest_checkpoint(folder).name == "step-00000004"
    checkpoints.verify_folder(folder / "checkpoints" / "step-00000004")


# ---------------------------------------------------------------------- 7. metrics.jsonl


def test_a_torn_last_metrics_line_is_dropped_and_other_bad_lines_are_named(tmp_path, capsys):
    folder = tmp_path / "run"
    train(config_for(folder, stop_at=4))
    metrics = folder / "metrics.jsonl"
    with open(metrics, "a") as handle:
        handle.write('{"step": 5, "phase": "mle", "loss": 1.2')  # a full disk cut it short
    train(config_for(folder, stop_at=5, resume=True))
    assert "dropped a torn last line" in capsys.readouterr().out
    assert logged_steps(folder) == [1, 2, 3, 4, 5]
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    with pytest.raises(TrainingError, match=r"metrics.jsonl:line 2: not a metrics record"):
        train(config_for(folder, resume=True))


# ---------------------------------------------------------------------- 8. paths


def test_a_run_resumes_by_any_spelling_of_its_paths_and_after_a_move(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "completion": str(i + 1)}) + "\n"
                            for i in range(16)))  # fmt: skip
    common = dict(task="jsonl", steps=8, p_noise=0.0)
    train(config_for("half", train_file="pairs.jsonl", stop_at=2, **common))
    train(config_for("./half", train_file=str(data), stop_at=4, resume=True, **common))
    train(config_for(tmp_path / "half", train_file="./pairs.jsonl", stop_at=6, resume=True,
                     **common))  # fmt: skip
    shutil.move(tmp_path / "half", tmp_path / "moved")
    train(config_for("moved", train_file="pairs.jsonl", resume=True, **common))
    assert logged_steps(tmp_path / "moved") == list(range(1, 9))


# ---------------------------------------------------------------------- 9. leftovers


def test_stale_staging_folders_of_the_run_are_cleaned_and_others_kept(tmp_path, capsys):
    folder = tmp_path / "run"
    train(config_for(folder, stop_at=2))
    run_id = read_marker(folder).run_id
    ours = folder / "checkpoints" / f".step-00000003.tmp-{run_id}-k1ll3d"
    theirs = folder / "checkpoints" / ".step-00000003.tmp-0123456789abcdef-x"
    for staging in (ours, theirs):
        staging.mkdir()
        (staging / "config.json").write_text("{}")
    temporary = folder / f"..sequencematch-run.json.{run_id}-zz.tmp"
    temporary.write_text("{")
    train(config_for(folder, resume=True))
    assert not ours.exists() and not temporary.exists() and theirs.exists()
    assert "removed checkpoints/.step-00000003" in capsys.readouterr().out


class Crash(BaseException):
    """A crash at a chosen point of a write (in place of ``kill -9``)."""


def test_a_crash_while_the_final_save_replaces_a_model_leaves_the_new_model(
    tmp_path, monkeypatch, capsys
):
    """A finished run resumed with more steps replaces its model; a crash between renaming
    the old model aside and the new one into place puts the old one back, and the resume
    (at the last step already) must write the new one, not keep the old as final."""
    folder = tmp_path / "run"
    train(config_for(folder, steps=4))
    rename = os.replace

    def crash_after_retiring_the_model(source, target):
        rename(source, target)
        if Path(target).name.startswith(".model.old-"):
            raise Crash

    with monkeypatch.context() as patched:
        patched.setattr(os, "replace", crash_after_retiring_the_model)
        with pytest.raises(Crash):
            train(config_for(folder, steps=6, resume=True))
    assert list(folder.glob(".model.old-*")) and not (folder / "model").exists()
    train(config_for(folder, steps=6, resume=True))
    assert "restored .model.old-" in capsys.readouterr().out
    assert same_weights(folder / "model", folder / "checkpoints" / "step-00000006")
    assert not list(folder.glob(".model.*"))


def test_removing_a_finished_runs_checkpoints_keeps_its_model_and_strangers_files(tmp_path):
    """What a comparison does once a job's model is saved: every checkpoint the run wrote
    goes, and a checkpoint holding a file the run did not write stays, with that file."""
    from sequencematch.training.run_folder import RunFolder
    from sequencematch.training.trainer import TRAIN_OUTPUTS

    folder = tmp_path / "run"
    train(config_for(folder, steps=6, save_every=2, keep_checkpoints=2))
    saved = sorted(p.name for p in (folder / "checkpoints").glob("step-*"))
    assert saved == ["step-00000004", "step-00000006"]
    stranger = folder / "checkpoints" / "step-00000004" / "notes.txt"
    stranger.write_text("mine")
    model_files = snapshot(folder / "model")
    with RunFolder(folder, "train", TRAIN_OUTPUTS) as run:
        left = checkpoints.remove_checkpoints(run)
    assert left == [folder / "checkpoints" / "step-00000004"] and stranger.read_text() == "mine"
    assert not (folder / "checkpoints" / "step-00000006").exists()
    assert snapshot(folder / "model") == model_files  # the model folder is untouched
    stranger.unlink()
    with RunFolder(folder, "train", TRAIN_OUTPUTS) as run:
        assert checkpoints.remove_checkpoints(run) == []
    assert not (folder / "checkpoints").exists()
    assert (folder / "model" / "config.json").exists() and logged_steps(folder)[-1] == 6
