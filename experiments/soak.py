"""Soak test of the promise "never lose a user's files or a good checkpoint".

Trains a tiny model with ``sequencematch train`` in subprocesses and, between runs, does
what machines and users do to run folders:

* ``kill -9`` at a random logged step, or at a named point inside a checkpoint write
  (half-written training state, before ``latest`` is updated, half-way through deleting an
  old checkpoint), then ``--resume true``;
* flips bytes in a random file of the latest checkpoint (resume must refuse, naming the
  file; the corrupt checkpoint is then moved aside as the message says) or tears the last
  line of ``metrics.jsonl`` (resume must drop it and say so);
* feeds a catalogue of bad inputs to the command line (each must give one ``error:`` line
  and exit code 2, no traceback).

Every finished run must equal an uninterrupted reference run bit for bit, with each step
exactly once in ``metrics.jsonl``. Prints a JSON summary on its last line.

    python -m experiments.soak --kills 25
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEPS = 16
TINY = ["--model", "tiny_gpt2", "--hidden-size", "16", "--num-layers", "1", "--num-heads", "2",
        "--n-train", "32", "--n-valid", "2", "--n-test", "2", "--batch-size", "4",
        "--progress", "false"]  # fmt: skip
TRAIN = ["train", *TINY, "--method", "sequencematch", "--mle-warmup-steps", "4",
         "--refresh-every", "3", "--samples-per-refresh", "8", "--replay-size", "16",
         "--model-batch-size", "4", "--max-new-tokens", "6", "--warmup-steps", "2",
         "--steps", str(STEPS), "--save-every", "2", "--log-every", "1",
         "--keep-checkpoints", "2"]  # fmt: skip
POINTS = ("step", "state", "latest", "rotation")
TORN = "dropped a torn last line"

# The command line, with a SIGKILL of this process arranged at KILL_AT="point:step".
LAUNCHER = """
import os, signal, sys
from sequencematch.training import checkpoints
point, step = (os.environ.get("KILL_AT") or ":0").split(":")
step = int(step)
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if point == "state":  # the state of checkpoint `step` half written in its staging folder
    real_write_state = checkpoints.write_state
    def write_state(folder, state):
        if state.get("step") == step:
            (folder / "state.safetensors").write_bytes(b"half a safetensors file")
            die()
        real_write_state(folder, state)
    checkpoints.write_state = write_state
if point == "latest":  # checkpoint `step` renamed into place, latest not yet updated
    real_write = checkpoints.atomic_write_text
    def write(path, text, tag=""):
        if text.strip() == f"step-{step:08d}":
            die()
        real_write(path, text, tag)
    checkpoints.atomic_write_text = write
if point == "rotation":  # one file of an old checkpoint deleted when `step` is saved
    real_remove = checkpoints.remove_written_folder
    def remove(folder, run_id):
        if (folder.parent / "latest").read_text().strip() == f"step-{step:08d}":
            next(p for p in sorted(folder.iterdir()) if p.name != "manifest.json").unlink()
            die()
        return real_remove(folder, run_id)
    checkpoints.remove_written_folder = remove
from sequencematch.apps.cli import main
sys.exit(main(sys.argv[1:]))
"""


def environment(kill_at: str = "") -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", KILL_AT=kill_at)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    source = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    return env


def launch(argv: list[str], kill_at: str = "") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, *argv], env=environment(kill_at),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def run(argv: list[str], kill_at: str = "") -> tuple[int, str, str]:
    process = launch(argv, kill_at)
    out, err = process.communicate()
    return process.returncode, out, err


def last_step(folder: Path) -> int:
    try:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return max((json.loads(line)["step"] for line in lines if line.endswith("}")), default=0)


def checkpoint_step(folder: Path) -> int:
    """The step of the checkpoint a resume would start from (0: none yet)."""
    try:
        return int((folder / "checkpoints" / "latest").read_text().strip().split("-")[1])
    except (FileNotFoundError, IndexError, ValueError):
        return 0


def kill_after_step(argv: list[str], folder: Path, step: int) -> tuple[int, str, str]:
    process = launch(argv)
    while process.poll() is None and last_step(folder) < step:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    out, err = process.communicate()
    return process.returncode, out, err


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def equal_models(first: Path, second: Path) -> bool:
    import torch

    a, b = weights(first), weights(second)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def corrupt_latest(folder: Path, rng: random.Random) -> str | None:
    """Flip bytes in a random file of the latest checkpoint; return its name."""
    latest = folder / "checkpoints" / "latest"
    if not latest.exists():
        return None
    checkpoint = folder / "checkpoints" / latest.read_text().strip()
    files = sorted(p for p in checkpoint.iterdir() if p.is_file())
    target = rng.choice(files)
    data = bytearray(target.read_bytes())
    for _ in range(min(200, len(data))):
        data[rng.randrange(len(data))] ^= 0xFF
    target.write_bytes(bytes(data))
    return f"{checkpoint.name}/{target.name}"


def one_line_error(code: int, err: str) -> bool:
    lines = [line for line in err.splitlines() if line and not line.startswith("warning: ")]
    return code == 2 and len(lines) == 1 and lines[0].startswith("error: ")


def soak_round(
    folder: Path, reference: Path, kills: int, rng: random.Random, figures: dict
) -> None:
    """Train one run folder to the end through ``kills`` faults and some corruptions."""
    argv = [*TRAIN, "--output-dir", str(folder), "--resume", "true"]
    folder.mkdir(parents=True)
    notes = folder / "notes.txt"  # a user's file beside the run: it must outlive everything
    notes.write_text(f"notes of round {figures['rounds']}\n")
    for _ in range(kills):
        point = rng.choice(POINTS)
        resumed = checkpoint_step(folder)
        lowest = resumed + 2 if point != "rotation" else max(6, resumed + 2)
        step = rng.randrange(lowest, STEPS + 1, 2) if lowest <= STEPS else STEPS
        if point == "step":
            target = rng.randrange(resumed + 1, STEPS) if resumed + 1 < STEPS else 0
            code, out, _ = kill_after_step(argv, folder, target)  # 0: at once, while starting
        else:
            code, out, _ = run(argv, f"{point}:{step}")
        figures["torn_lines_dropped"] += out.count(TORN)
        if code == 0:
            break  # the run finished before the fault point came
        if code != -signal.SIGKILL:
            raise SystemExit(f"run ended with {code} instead of the kill ({point}:{step})")
        figures["kills"] += 1
        figures["kill_points"][point] = figures["kill_points"].get(point, 0) + 1
        if rng.random() < 0.3:
            damaged = corrupt_latest(folder, rng)
            if damaged is not None:
                code, out, err = run(argv)
                figures["torn_lines_dropped"] += out.count(TORN)
                name = damaged.split("/")[1]
                if one_line_error(code, err) and name in err:
                    figures["corruptions_detected"] += 1
                else:
                    figures["corruptions_missed"].append({"file": damaged, "code": code})
                quarantine = folder.parent / f"{folder.name}-corrupt-{figures['kills']}"
                shutil.move(folder / "checkpoints" / damaged.split("/")[0], quarantine)
        elif rng.random() < 0.2 and (folder / "metrics.jsonl").exists():
            with open(folder / "metrics.jsonl", "a") as handle:
                handle.write('{"step": 99, "loss": 1.')
            figures["torn_lines_written"] += 1
    code, out, err = run(argv)
    if code != 0:
        raise SystemExit(f"the final resume failed ({code}): {err.strip()[-500:]}")
    figures["torn_lines_dropped"] += out.count(TORN)
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    steps = [record["step"] for record in records if "phase" in record]  # training lines
    figures["user_files_lost"] += notes.read_text() != f"notes of round {figures['rounds']}\n"
    figures["rounds"] += 1
    if steps != list(range(1, STEPS + 1)) or not equal_models(folder / "model", reference):
        figures["mismatches"].append(str(folder))


def bad_inputs(work: Path, model: Path) -> list[tuple[str, list[str]]]:
    """Inputs a careless or curious user gives, each of which must be refused in one line."""
    (work / "yaml").mkdir(parents=True)
    texts = {"type.yaml": 'steps: "three"\n', "string-lr.yaml": 'lr: "1e-3"\n',
             "float-steps.yaml": "steps: 3.7\n", "bool.yaml": 'backspace: "no"\n',
             "null.yaml": "output_dir: null\n", "accum.yaml": "grad_accum: 0\n",
             "syntax.yaml": "steps: [3\n", "list.yaml": "- 1\n"}  # fmt: skip
    for name, text in texts.items():
        (work / "yaml" / name).write_text(text)
    data = {"latin1.jsonl": b'{"prompt": "caf\xe9", "completion": "1"}\n',
            "null.jsonl": b'{"prompt": null, "completion": "1"}\n',
            "empty.jsonl": b'{"prompt": "", "completion": ""}\n',
            "base99.jsonl": b'{"question": "In base 99, what is 1 + 1?", "answer": "2"}\n',
            "long.jsonl": json.dumps({"prompt": "1", "completion": "9" * 2_000_000}).encode(),
            "torn.jsonl": b'{"prompt": "1", "compl'}  # fmt: skip
    for name, content in data.items():
        (work / name).write_bytes(content)
    no_tokenizer = work / "no-tokenizer"
    shutil.copytree(model, no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    out = str(work / "out")
    cases = [(f"--config {n}", ["train", "--config", str(work / "yaml" / n)]) for n in texts]
    cases += [
        (f"--train-file {name}", ["train", *TINY, "--output-dir", out, "--task", "jsonl",
                                  "--train-file", str(work / name)])
        for name in data
    ]  # fmt: skip
    prompt = "In base 7, what is 1 + 1?"
    cases += [
        ("--steps 3.7", ["train", "--steps", "3.7"]),
        ("--lr abc", ["train", "--lr", "abc"]),
        ("--backspace maybe", ["train", "--backspace", "maybe"]),
        ("--model typo", ["train", "--output-dir", out, "--model", "tiny_gtp2"]),
        ("--model no tokenizer", ["train", "--output-dir", out, "--model", str(no_tokenizer)]),
        ("missing config", ["train", "--config", str(work / "missing.yaml")]),
        ("generate 3000 chars", ["generate", "--model", str(model), "--prompt", "1" * 3000]),
        ("generate 0 tokens", ["generate", "--model", str(model), "--prompt", prompt,
                               "--max-new-tokens", "0"]),
        ("generate base 99", ["generate", "--model", str(model), "--prompt",
                              "In base 99, what is 1 + 1?"]),
        ("generate missing model", ["generate", "--model", str(work / "nope"), "--prompt", "1"]),
        ("generate no tokenizer", ["generate", "--model", str(no_tokenizer), "--prompt", "1"]),
        ("generate noise 2", ["generate", "--model", str(model), "--prompt", prompt,
                              "--noise", "2"]),
        ("eval base 99", ["eval", "--model", str(model), "--data", str(work / "base99.jsonl")]),
        ("eval latin1", ["eval", "--model", str(model), "--data", str(work / "latin1.jsonl")]),
        ("eval no data", ["eval", "--model", str(model)]),
        ("unknown command", ["trian"]),
    ]  # fmt: skip
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=25, help="kill -9 faults in all")
    parser.add_argument("--kills-per-round", type=int, default=6, help="faults per run folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault schedule")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: temp)")
    args = parser.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="sequencematch-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    started = time.perf_counter()
    reference = work / "reference"
    code, _, err = run([*TRAIN, "--output-dir", str(reference)])
    if code != 0:
        raise SystemExit(f"the reference run failed: {err.strip()[-500:]}")
    figures: dict = {"kills": 0, "kill_points": {}, "rounds": 0, "corruptions_detected": 0,
                     "corruptions_missed": [], "torn_lines_written": 0, "torn_lines_dropped": 0,
                     "user_files_lost": 0, "mismatches": []}  # fmt: skip
    while figures["kills"] < args.kills:
        folder = work / f"run-{figures['rounds']}"
        soak_round(folder, reference / "model", min(args.kills_per_round,
                   args.kills - figures["kills"]), rng, figures)  # fmt: skip
        print(f"round {figures['rounds']}: {figures['kills']} kills so far", flush=True)
    cases = bad_inputs(work / "inputs", reference / "model")
    refused = []
    for name, argv in cases:
        code, _, err = run(argv)
        if not one_line_error(code, err):
            refused.append({"input": name, "code": code, "stderr": err.strip()[-300:]})
    figures |= {"bad_inputs_tried": len(cases), "bad_inputs_not_refused_cleanly": refused,
                "seconds": round(time.perf_counter() - started), "work": str(work)}  # fmt: skip
    print(json.dumps(figures))
    if (
        figures["mismatches"]
        or figures["corruptions_missed"]
        or refused
        or figures["user_files_lost"]
    ):
        sys.exit(1)


if __name__ == "__main__":
    main()
