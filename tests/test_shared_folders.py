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
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from sequencematch.apps.cli import main
from sequencematch.training import checkpoints
from sequencematch.training.run_folder import MARKER_FILE
from sequencematch.training.state_files import StateFileError, read_state, write_state

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = ["--model", "tiny_gpt2", "--hidden-size", "16", "--num-layers", "1", "--num-heads", "2",
        "--n-train", "16", "--n-valid", "2", "--n-test", "2", "--batch-size", "4",
        "--method", "mle", "--progress", "false"]  # fmt: skip
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


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("shared") / "run"
    assert main(["train", "--output-dir", str(run), "--steps", "2", *TINY]) == 0
    return run / "model"


@pytest.mark.parametrize("content", ["payload", "random bytes"])
def test_a_pickled_model_file_is_refused_in_one_line(model_folder, tmp_path, capsys, content):
    folder = tmp_path / "model"
    shutil.copytree(model_folder, folder)
    (folder / "model.safetensors").unlink()
    (folder / "manifest.json").unlink()
    pwned = tmp_path / "pwned"
    data = pickle.dumps(Payload(pwned)) if content == "payload" else os.urandom(256)
    (folder / "pytorch_model.bin").write_bytes(data)
    message = "pytorch_model.bin cannot be loaded: torch's tensors-only loader refused it"
    one_error_line(capsys, ["generate", "--model", str(folder), "--prompt", "1 + 1?"], message)
    one_error_line(capsys, ["eval", "--model", str(folder)], message)
    train_from = ["train", "--output-dir", str(tmp_path / "run"), *TINY, "--model", str(folder)]
    one_error_line(capsys, train_from, message)
    assert not pwned.exists()


# ---------------------------------------------------------------------- 2. paths stay inside


# ---------------------------------------------------------------------- 3. writes stay inside


# ---------------------------------------------------------------------- 5. resume, no checkpoint


# ---------------------------------------------------------------------- 7, 8. demo folders


# ---------------------------------------------------------------------- 9. signals


# ---------------------------------------------------------------------- 10. final save
