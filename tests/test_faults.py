"""Fault injection: ``kill -9`` a real ``sequencematch train`` process, then resume it.

Three kills per run of the suite: one while the training state of a checkpoint is half written,
one after a checkpoint folder is in place but before ``latest`` names it, and one at a
random step (seeded). Checkpoints (every 7 steps) and metrics lines (every 5) fall on
different steps. The resumed run must end with the model of an uninterrupted run, bit for
bit, and the same ``metrics.jsonl`` line for line; resuming it once more changes nothing.
``python -m experiments.soak --kills N`` runs the same protocol for as long as you like.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

STEPS = 20
ARGS = ["train", "--model", "tiny_gpt2", "--hidden-size", "16", "--num-layers", "1",
        "--num-heads", "2", "--n-train", "32", "--n-valid", "2", "--n-test", "2",
        "--batch-size", "4", "--method", "sequencematch", "--mle-warmup-steps", "4",
        "--refresh-every", "6", "--samples-per-refresh", "8", "--replay-size", "16",
        "--model-batch-size", "4", "--max-new-tokens", "6", "--warmup-steps", "2",
        "--steps", str(STEPS), "--save-every", "7", "--log-every", "5",
        "--progress", "false"]  # fmt: skip

# Runs the command line, first arranging a SIGKILL of this very process at a named point
# inside a checkpoint write of a given step (KILL_AT="point:step").
LAUNCHER = """
import os, signal, sys
from sequencematch.training import checkpoints
point, step = (os.environ.get("KILL_AT") or ":0").split(":")
step = int(step)
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if point == "state":
    real_write_state = checkpoints.write_state
    def write_state(folder, state):
        if state.get("step") == step:
            (folder / "state.safetensors").write_bytes(b"half a safetensors file")
            die()
        real_write_state(folder, state)
    checkpoints.write_state = write_state
if point == "latest":
    real_write = checkpoints.atomic_write_text
    def write(path, text, tag=""):
        if text.strip() == f"step-{step:08d}":
            die()
        real_write(path, text, tag)
    checkpoints.atomic_write_text = write
from sequencematch.apps.cli import main
sys.exit(main(sys.argv[1:]))
"""


def environment(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **extra)
    source = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    return env


def launch(folder: Path, kill_at: str = "") -> subprocess.Popen:
    command = [sys.executable, "-c", LAUNCHER, *ARGS, "--output-dir", str(folder),
               "--resume", "true"]  # fmt: skip
    return subprocess.Popen(
        command, env=environment(KILL_AT=kill_at), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def last_step(folder: Path) -> int:
    try:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(line)["step"] for line in lines if line.endswith("}")]
    return max(steps, default=0)


def kill_after_step(folder: Path, step: int) -> int:
    """Start a run and SIGKILL it as soon as ``step`` is logged; return its exit code."""
    process = launch(folder)
    while process.poll() is None and last_step(folder) < step:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    return process.returncode


def metrics(folder: Path) -> list[dict]:
    """The records of ``metrics.jsonl`` without their wall-clock times."""
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in lines]


def same_weights(first: Path, second: Path) -> bool:
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_kill_9_anywhere_then_resume_equals_an_uninterrupted_run(tmp_path):
    reference = launch(tmp_path / "reference")
    output, _ = reference.communicate()
    assert reference.returncode == 0, output

    folder = tmp_path / "run"
    for kill_at in ("state:7", "latest:14"):  # inside two checkpoint writes
        process = launch(folder, kill_at)
        output, _ = process.communicate()
        assert process.returncode == -signal.SIGKILL, output
        if kill_at == "state:7":  # a half-written staging folder, no step-7 checkpoint
            assert list((folder / "checkpoints").glob(".step-00000007.tmp-*"))
            assert not (folder / "checkpoints" / "step-00000007").exists()
    assert last_step(folder) == 11 and (folder / "checkpoints" / "step-00000014").is_dir()
    assert (folder / "checkpoints" / "latest").read_text().strip() == "step-00000007"
    random_step = random.Random(0).randrange(15, STEPS)
    assert kill_after_step(folder, random_step) == -signal.SIGKILL

    final = launch(folder)
    output, _ = final.communicate()
    assert final.returncode == 0, output
    assert same_weights(folder / "model", tmp_path / "reference" / "model")
    records = metrics(folder)
    assert records == metrics(tmp_path / "reference")  # line for line, the same values
    evaluations = [r["step"] for r in records if any(k.startswith("eval/") for k in r)]
    assert evaluations == [STEPS]  # the validation at the end, once
    assert not list(folder.rglob("*.tmp-*"))  # the staging leftovers were cleaned

    weights = (folder / "model" / "model.safetensors").stat().st_mtime_ns
    again = launch(folder)  # a finished run: nothing is trained, evaluated or rewritten
    output, _ = again.communicate()
    assert again.returncode == 0 and "finished at step 20 already" in output, output
    assert metrics(folder) == records
    assert (folder / "model" / "model.safetensors").stat().st_mtime_ns == weights
