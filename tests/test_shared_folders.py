"""Folders from someone else, and the last ways of losing a run.

Each security test builds a malicious folder (a run folder, a model folder, a demo folder)
whose payload would touch a file in the test's own tmp dir, and checks that the command
refuses in one line and the payload did nothing. The others reproduce a way a run or a demo
lost files (a resume without checkpoints, two demos at once, a signal, a kill during the
final save) and check what the folders hold afterwards.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY
from test_checkpoints import config_for, logged_steps, same_weights, snapshot, train

from sequencematch.apps.cli import main
from sequencematch.apps.demos import harness
from sequencematch.apps.demos.arithmetic_demo import DemoSettings
from sequencematch.apps.demos.harness import prepare_output, run_comparison, with_overrides
from sequencematch.storage.files import OutsideFolderError, sha256_of
from sequencematch.training import checkpoints
from sequencematch.training.checkpoints import CheckpointError
from sequencematch.training.run_folder import LOCK_FILE, MARKER_FILE, RunFolder, RunFolderError
from sequencematch.training.state_files import StateFileError, read_state, write_state

SRC = str(Path(__file__).resolve().parents[1] / "src")
DEMO = ["demo", "--quick", "--seeds", "1", "--warmup-steps", "4", "--steps", "2",
        "--n-train", "32", "--n-test", "4", "--progress", "false"]  # fmt: skip


class Payload:
    """Unpickling this creates ``path``: proof that loading ran code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def one_error_line(capsys, argv: list[str], message: str, code: int = 2) -> str:
    capsys.readouterr()
    assert main(argv) == code
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert message in lines[0], lines[0]
    return lines[0]


def set_marker(folder: Path, **changes) -> None:
    path = folder / MARKER_FILE
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def environment() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, env.get("PYTHONPATH")]))
    return env


def wait_for(condition, process: subprocess.Popen, limit: float = 300.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the process never got there"
        time.sleep(0.05)


# ---------------------------------------------------------------------- 1. no code on load


def test_a_checkpoint_whose_state_is_a_pickle_is_refused_and_never_unpickled(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--output-dir", str(run), "--steps", "4", "--stop-at", "2", *TINY]) == 0
    checkpoint = run / "checkpoints" / "step-00000002"
    for name in ("state.json", "state.safetensors"):
        (checkpoint / name).unlink()
    pwned = tmp_path / "pwned"
    (checkpoint / "state.pt").write_bytes(pickle.dumps(Payload(pwned)))
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    checkpoints.write_manifest(checkpoint, manifest["run_id"], step=2)  # the hashes match
    resume = ["train", "--output-dir", str(run), "--steps", "4", "--resume", "true", *TINY]
    one_error_line(capsys, resume, "earlier version of sequencematch (state.pt)")
    assert not pwned.exists()


def test_training_state_round_trips_as_data_only(tmp_path):
    state = {"optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2)}},
                           "param_groups": [{"betas": (0.9, 0.99), "params": [0]}]},
             "scale": float("inf"), "replay": [([1, 2], [3], 4)], "view": torch.arange(6)[2:4],
             "tags": {"__tuple__": 1}, "none": None}  # fmt: skip
    write_state(tmp_path, state)
    back = read_state(tmp_path)
    assert back["optimizer"]["state"][0]["exp_avg"].tolist() == [1.0, 1.0]
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert back["scale"] == float("inf") and back["replay"] == [([1, 2], [3], 4)]
    assert back["view"].tolist() == [2, 3] and back["tags"] == {"__tuple__": 1}
    (tmp_path / "state.json").write_text('{"x": {"__tensor__": "t99"}}')
    with pytest.raises(StateFileError, match="names a tensor 't99'"):
        read_state(tmp_path)


# Seeded random bytes that torch's tensors-only unpickler refuses with each of the errors it
# raises on such input: UnpicklingError (seed 0), IndexError (2), KeyError (20) and
# UnicodeDecodeError (195).
@pytest.mark.parametrize("content", ["payload", 0, 2, 20, 195])
def test_a_pickled_model_file_is_refused_in_one_line(model_folder, tmp_path, capsys, content):
    folder = tmp_path / "model"
    shutil.copytree(model_folder, folder)
    (folder / "model.safetensors").unlink()
    (folder / "manifest.json").unlink()
    pwned = tmp_path / "pwned"
    if content == "payload":
        data = pickle.dumps(Payload(pwned))
    else:
        data = random.Random(content).randbytes(256)
    (folder / "pytorch_model.bin").write_bytes(data)
    message = f"{folder}: a pytorch_model.bin cannot be read safely (pytorch_model.bin was"
    one_error_line(capsys, ["generate", "--model", str(folder), "--prompt", "1 + 1?"], message)
    one_error_line(capsys, ["eval", "--model", str(folder)], message)
    train_from = ["train", "--output-dir", str(tmp_path / "run"), *TINY, "--model", str(folder)]
    one_error_line(capsys, train_from, message)
    assert not pwned.exists()


# ---------------------------------------------------------------------- 2. paths stay inside


def outside_entries(tmp_path: Path, folder: Path) -> dict[str, str]:
    """Entry kinds -> an entry of a file in ``folder`` naming ``tmp_path/victim.txt``."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = folder / "link.txt"
    link.symlink_to(victim)
    climb = os.path.relpath(victim, folder)
    return {"climbing": climb, "absolute": str(victim), "symbolic link": link.name}


@pytest.mark.parametrize("kind", ["climbing", "absolute", "symbolic link"])
def test_rotation_never_follows_a_manifest_out_of_its_checkpoint(tmp_path, capsys, kind):
    run = tmp_path / "run"
    assert main(["train", "--output-dir", str(run), "--steps", "6", "--stop-at", "2",
                 "--save-every", "2", "--keep-checkpoints", "1", *TINY]) == 0  # fmt: skip
    checkpoint = run / "checkpoints" / "step-00000002"
    entry = outside_entries(tmp_path, checkpoint)[kind]
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"][entry] = sha256_of(tmp_path / "victim.txt")
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    resume = ["train", "--output-dir", str(run), "--steps", "6", "--save-every", "2",
              "--keep-checkpoints", "1", "--resume", "true", *TINY]  # fmt: skip
    line = one_error_line(capsys, resume, f"lists {entry!r}, which is not inside")
    assert "manifest.json" in line
    assert (tmp_path / "victim.txt").read_text() == "precious"


def test_latest_naming_a_path_is_refused(tmp_path):
    run = tmp_path / "run"
    train(config_for(run, steps=4, stop_at=2))
    (tmp_path / "elsewhere").mkdir()
    (run / "checkpoints" / "latest").write_text("../../elsewhere\n")
    with pytest.raises(CheckpointError, match="not the name of a checkpoint"):
        train(config_for(run, steps=4, resume=True))


@pytest.mark.parametrize("kind", ["climbing", "absolute", "symbolic link"])
def test_overwrite_never_follows_a_marker_out_of_its_folder(tmp_path, capsys, kind):
    run = tmp_path / "run"
    assert main(["train", "--output-dir", str(run), "--steps", "2", *TINY]) == 0
    entry = outside_entries(tmp_path, run)[kind]
    set_marker(run, outputs=["metrics.jsonl", "model", entry])
    overwrite = ["train", "--output-dir", str(run), "--steps", "2", "--overwrite", "true", *TINY]
    one_error_line(capsys, overwrite, f"lists {entry!r}, which is not inside")
    assert (tmp_path / "victim.txt").read_text() == "precious"


def test_a_demo_overwrite_never_follows_its_marker_out(tmp_path):
    out = tmp_path / "demo"
    settings = DemoSettings.quick()
    prepare_output(out, settings, resume=False)
    victims = tmp_path / "logs"
    victims.mkdir()
    (victims / "events.out.tfevents.1").write_text("someone's training logs")
    set_marker(out, outputs=["report.md", "../logs"])
    with pytest.raises(OutsideFolderError, match="lists '../logs', which is not inside"):
        prepare_output(out, settings, resume=False, overwrite=True)
    (out / "seed-0").symlink_to(victims)
    set_marker(out, outputs=["report.md", "seed-0"])
    with pytest.raises(RunFolderError, match="seed-0 is a symbolic link"):
        prepare_output(out, settings, resume=False, overwrite=True)
    assert (victims / "events.out.tfevents.1").exists()


# ---------------------------------------------------------------------- 3. writes stay inside


@pytest.mark.parametrize("link", ["symbolic", "hard"])
def test_the_lock_file_is_never_written_through_a_link(tmp_path, capsys, link):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for kind, folder in (("train", tmp_path / "run"), ("demo", tmp_path / "demo")):
        folder.mkdir()
        lock = folder / LOCK_FILE
        lock.symlink_to(victim) if link == "symbolic" else os.link(victim, lock)
        with pytest.raises(RunFolderError, match="link"):
            RunFolder(folder, kind, ()).lock()
    train_into = ["train", "--output-dir", str(tmp_path / "run"), "--steps", "2", *TINY]
    one_error_line(capsys, train_into, LOCK_FILE)
    one_error_line(capsys, [*DEMO, "--out", str(tmp_path / "demo")], LOCK_FILE)
    assert victim.read_text() == "precious"


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo"
    assert main([*DEMO, "--out", str(out), "--workers", "1"]) == 0
    return out


def test_a_demo_resume_writes_nothing_through_links(demo_folder, tmp_path, capsys):
    out = tmp_path / "demo"
    shutil.copytree(demo_folder, out, symlinks=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    resume = [*DEMO, "--out", str(out), "--workers", "1", "--resume"]
    for name in ("report.md", "results.json", "settings.json"):
        (out / name).unlink()
        (out / name).symlink_to(victim)
        one_error_line(capsys, resume, f"{out / name} is a symbolic link")
        (out / name).unlink()
    record = out / "seed-0" / "mle" / "record.json"
    record.unlink()
    record.symlink_to(victim)  # recorded as the run's output: a link out is refused
    one_error_line(capsys, resume, "lists 'record.json', which is not inside")
    set_marker(record.parent, outputs=["metrics.jsonl", "model"])  # as older demos left it
    assert main(resume) == 0  # read as "not finished": the job runs again, replacing the link
    assert victim.read_text() == "precious"
    assert not record.is_symlink() and json.loads(record.read_text())["train_seconds"] >= 0
    assert (out / "report.md").is_file() and not (out / "report.md").is_symlink()


# ---------------------------------------------------------------------- 5. resume, no checkpoint


def test_resuming_a_finished_run_without_checkpoints_is_refused(tmp_path):
    run = tmp_path / "run"
    train(config_for(run, steps=4))
    shutil.rmtree(run / "checkpoints")  # to save space, as the demo does
    before = snapshot(run)
    with pytest.raises(CheckpointError, match=r"--overwrite true.*--model .*run/model"):
        train(config_for(run, steps=8, resume=True))
    assert snapshot(run) == before


# ---------------------------------------------------------------------- 7, 8. demo folders


def test_a_demo_holds_its_folder_for_its_whole_run(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    seen = []

    def jobs_run_while_locked(jobs, workers, progress, then=None):
        try:
            RunFolder(out, "demo", ()).lock().release()
        except RunFolderError as error:
            seen.append(str(error))
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr(harness, "run_jobs", jobs_run_while_locked)
    with pytest.raises(KeyboardInterrupt):
        run_comparison(out, with_overrides(DemoSettings.quick(), seeds=1), workers=1)
    assert len(seen) == 1 and "in use by another sequencematch process" in seen[0]
    RunFolder(out, "demo", ()).lock().release()  # released when the demo ends, however


@pytest.mark.parametrize("obstacle", ["a user's file", "a run in use"])
def test_a_demo_overwrite_checks_every_nested_run_before_deleting(tmp_path, obstacle):
    out = tmp_path / "demo"
    settings = with_overrides(DemoSettings.quick(), seeds=1)
    prepare_output(out, settings, resume=False)
    for name in ("warmup", "mle"):
        train(config_for(out / "seed-0" / name, steps=2))
    (out / "results.json").write_text("{}")
    (out / "report.md").write_text("the report")
    held = None
    if obstacle == "a user's file":
        (out / "seed-0" / "mle" / "model" / "extra.txt").write_text("mine")
    else:
        held = RunFolder(out / "seed-0" / "mle", "train", ()).lock()
    before = snapshot(out)
    message = "seed-0/mle/model/extra.txt" if held is None else "in use by another"
    with pytest.raises(RunFolderError, match=message):
        prepare_output(out, settings, resume=False, overwrite=True)
    assert snapshot(out) == before
    if held is not None:
        held.release()
    else:
        (out / "seed-0" / "mle" / "model" / "extra.txt").unlink()
    prepare_output(out, settings, resume=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted([LOCK_FILE, MARKER_FILE,
                                                            "settings.json"])  # fmt: skip


# ---------------------------------------------------------------------- 9. signals


def process_status(pid: int | str) -> dict[str, str]:
    try:
        text = (Path("/proc") / str(pid) / "status").read_text()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def children(parent: int) -> list[int]:
    """Processes whose parent is ``parent`` (from /proc)."""
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()
            and process_status(entry.name).get("PPid", "").strip() == str(parent)]  # fmt: skip


def alive(pid: int) -> bool:
    return process_status(pid).get("State", "Z").strip()[:1] not in ("Z", "X")


def test_sigterm_stops_a_demo_and_its_workers_in_one_line(tmp_path):
    out = tmp_path / "demo"
    command = [sys.executable, "-m", "sequencematch.apps.cli", *DEMO, "--out", str(out),
               "--workers", "2", "--steps", "400"]  # fmt: skip
    demo = subprocess.Popen(command, env=environment(), stderr=subprocess.PIPE, text=True,
                            stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        first = out / "seed-0" / "sequencematch-chi2-bkspc" / "metrics.jsonl"
        wait_for(first.exists, demo)
        workers = children(demo.pid)
        demo.send_signal(signal.SIGTERM)
        _, err = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 143, err
    lines = err.splitlines()
    assert len(lines) == 1 and "stopped by SIGTERM" in lines[0] and "--resume" in lines[0]
    deadline = time.monotonic() + 60
    while any(map(alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(workers) >= 2 and not any(map(alive, workers))
    RunFolder(out, "demo", ()).lock().release()  # no lock is left held
    RunFolder(first.parent, "train", ()).lock().release()


def test_ctrl_c_on_train_writes_a_checkpoint_and_says_how_to_resume(tmp_path):
    run = tmp_path / "run"
    flags = ["train", "--output-dir", str(run), *TINY, "--steps", "100000", "--log-every", "1"]
    process = subprocess.Popen([sys.executable, "-m", "sequencematch.apps.cli", *flags],
                               env=environment(), stderr=subprocess.PIPE, text=True,
                               stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: (run / "metrics.jsonl").exists(), process)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130
    lines = [line for line in err.splitlines() if not line.startswith("stopping after")]
    assert len(lines) == 1 and "--resume true" in lines[0], err
    step = int(lines[0].split("stopped at step ")[1].split()[0])
    assert checkpoints.latest_checkpoint(run).name == f"step-{step:08d}"
    flags[flags.index("100000")] = str(step + 2)
    assert main([*flags, "--resume", "true"]) == 0
    assert logged_steps(run)[-1] == step + 2


# ---------------------------------------------------------------------- 10. final save


def test_leftovers_of_a_killed_final_model_save_are_cleaned(tmp_path, capsys):
    straight = tmp_path / "straight"
    train(config_for(straight, steps=4))
    run = tmp_path / "run"
    trainer = train(config_for(run, steps=4))
    run_id = trainer.run.run_id
    # killed between the two renames of a model save: the old model retired, the new staged
    os.replace(run / "model", run / f".model.old-{run_id}")
    staging = run / f".model.tmp-{run_id}-k1ll3d"
    shutil.copytree(run / f".model.old-{run_id}", staging)
    train(config_for(run, steps=4, resume=True))
    out = capsys.readouterr().out
    assert "restored .model" in out and "removed .model.tmp" in out
    assert not list(run.glob(".model.*")) and same_weights(run / "model", straight / "model")


def test_kill_9_during_the_final_model_save_then_resume(tmp_path):
    launcher = (
        "import os, signal, sys\n"
        "from sequencematch.training import checkpoints\n"
        "real = checkpoints.write_manifest\n"
        "def manifest(folder, run_id, **extra):\n"
        "    if folder.name.startswith('.model.tmp-'):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    real(folder, run_id, **extra)\n"
        "checkpoints.write_manifest = manifest\n"
        "from sequencematch.apps.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    run = tmp_path / "run"
    flags = ["train", "--output-dir", str(run), "--steps", "4", "--resume", "true", *TINY]
    killed = subprocess.run([sys.executable, "-c", launcher, *flags], env=environment(),
                            capture_output=True, text=True)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert list(run.glob(".model.tmp-*")) and not (run / "model").exists()
    assert main(flags) == 0
    assert not list(run.glob(".model.*")) and (run / "model" / "model.safetensors").exists()
