"""Soak test of the promise "never lose a user's files or a good checkpoint".

Trains a tiny model with ``sequencematch train`` in subprocesses and, between runs, does
what machines and users do to run folders:

* ``kill -9`` at a random logged step, or at a named point inside a checkpoint write
  (half-written training state, before ``latest`` is updated, half-way through deleting an
  old checkpoint) or inside the final ``model/`` write (the staging folder half written;
  the previous model renamed aside, the new one not yet in place), then ``--resume true``;
* flips bytes in a random file of the latest checkpoint (resume must refuse, naming the
  file; the corrupt checkpoint is then moved aside as the message says) or tears the last
  line of ``metrics.jsonl`` (resume must drop it and say so);
* feeds a catalogue of bad inputs to the command line (each must give one ``error:`` line
  and exit code 2, no traceback).

Each run folder draws its checkpoint and metrics cadences from ``--cadences`` (pairs that
fall on different steps, so a resume restores a half-averaged metrics window). Some run
folders are "extended": trained to the end of a shorter run first (a finished model in
``model/``), then resumed with more steps, so that the final save replaces a model; only
those can be killed between the two renames of that swap.

Every finished run must equal an uninterrupted reference run of the same cadences (and,
for an extended one, the same two lengths): ``model/`` equal file for file (the weights
bit for bit), ``metrics.jsonl`` equal line for line apart from wall-clock times, so every
logged step is there exactly once, and no staging or retired folder left behind. Prints a
JSON summary on its last line.

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
FIRST_STEPS = 12  # an extended run folder is first trained to this many steps, then to STEPS
TINY = ["--model", "tiny_gpt2", "--hidden-size", "16", "--num-layers", "1", "--num-heads", "2",
        "--n-train", "32", "--n-valid", "2", "--n-test", "2", "--batch-size", "4",
        "--progress", "false"]  # fmt: skip
TRAIN = ["train", *TINY, "--method", "sequencematch", "--mle-warmup-steps", "4",
         "--refresh-every", "3", "--samples-per-refresh", "8", "--replay-size", "16",
         "--model-batch-size", "4", "--max-new-tokens", "6", "--warmup-steps", "2",
         "--keep-checkpoints", "2"]  # fmt: skip
CADENCES = "3:2,5:3,2:3"  # save_every:log_every pairs, one drawn per run folder
CHECKPOINT_POINTS = ("state", "latest", "rotation")
FINAL_SAVE_POINTS = ("model-staging", "model-swap")
POINTS = ("step", *CHECKPOINT_POINTS, *FINAL_SAVE_POINTS)
WALL_CLOCK = ("elapsed_s",)  # metrics fields that differ between equal runs
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
if point == "model-staging":  # the final model's staging folder, its weights half written
    real_manifest = checkpoints.write_manifest
    def write_manifest(folder, run_id, **extra):
        if folder.name.startswith(".model.tmp-"):
            weights = folder / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
            die()
        real_manifest(folder, run_id, **extra)
    checkpoints.write_manifest = write_manifest
if point == "model-swap":  # the previous model renamed aside, the new one not yet in place
    real_replace = os.replace
    def replace(source, target, **kwargs):
        real_replace(source, target, **kwargs)
        if os.path.basename(target).startswith(".model.old-"):
            die()
    os.replace = replace
from sequencematch.apps.cli import main
sys.exit(main(sys.argv[1:]))
"""


def train_args(cadence: tuple[int, int], steps: int = STEPS) -> list[str]:
    """The ``train`` command line of a run with ``cadence`` = (save_every, log_every)."""
    save_every, log_every = cadence
    return [*TRAIN, "--steps", str(steps), "--save-every", str(save_every),
            "--log-every", str(log_every)]  # fmt: skip


def parse_cadences(text: str) -> list[tuple[int, int]]:
    """``"3:2,5:3"`` -> [(3, 2), (5, 3)]: checkpoint and metrics cadences to draw from."""
    pairs = [tuple(int(n) for n in item.split(":")) for item in text.split(",") if item]
    if not pairs or any(len(pair) != 2 or min(pair) < 1 for pair in pairs):
        raise SystemExit(f"--cadences {text!r}: give SAVE:LOG pairs of positive steps")
    return [(pair[0], pair[1]) for pair in pairs]


def cadence_name(cadence: tuple[int, int]) -> str:
    return f"save {cadence[0]}, log {cadence[1]}"


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


def metrics(folder: Path) -> list[dict]:
    """The records of ``metrics.jsonl`` without their wall-clock fields."""
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK} for line in lines]


# Keys of a model folder's JSON files that differ between equal runs: the options naming
# the run folder or how this invocation started, and the flags transformers records in
# tokenizer_config.json when it loaded the tokenizer from a folder (a resumed run loads it
# from its checkpoint; an uninterrupted tiny run builds it in memory).
NOT_COMPARED = {
    "training_config.json": ("output_dir", "resume", "overwrite"),
    "tokenizer_config.json": ("is_local", "local_files_only"),
}


def comparable(path: Path) -> dict:
    """A JSON file of ``model/`` without the keys ``NOT_COMPARED`` names for it."""
    values = json.loads(path.read_text())
    return {k: v for k, v in values.items() if k not in NOT_COMPARED[path.name]}


def model_differences(model: Path, reference: Path) -> list[str]:
    """The files of ``model/`` that differ from the reference's, or are missing on one side:
    byte for byte (so the weights bit for bit), except the manifest, which names the run, and
    the JSON files ``NOT_COMPARED`` names, compared without those keys."""
    if not model.is_dir():
        return ["model/ is missing"]
    names = {p.name for p in model.iterdir()} | {p.name for p in reference.iterdir()}
    differing = []
    for name in sorted(names - {"manifest.json"}):
        mine, theirs = model / name, reference / name
        if not (mine.is_file() and theirs.is_file()):
            differing.append(f"model/{name} is missing on one side")
        elif name in NOT_COMPARED:
            if comparable(mine) != comparable(theirs):
                differing.append(f"model/{name}")
        elif mine.read_bytes() != theirs.read_bytes():
            differing.append(f"model/{name}")
    return differing


def leftovers(folder: Path) -> list[str]:
    """Staging (``.*.tmp-*``) and retired (``.*.old-*``) entries left anywhere in a run
    folder: an interrupted write that the resume did not clean up."""
    return sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if ".tmp-" in path.name or ".old-" in path.name
    )


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


def choose_fault(
    folder: Path, cadence: tuple[int, int], extended: bool, rng: random.Random
) -> tuple[str, int] | None:
    """The next fault for a run folder, as (point, step): a kill point that the next resume
    still reaches (``step`` for "step": the logged step to kill after, 0 at once), or
    ``None`` once the latest checkpoint is the last step (only the final save is left)."""
    resumed = checkpoint_step(folder)
    if resumed >= STEPS:
        return None
    save_every = cadence[0]
    saves = [s for s in range(save_every, STEPS, save_every) if s > resumed] + [STEPS]
    # rotation deletes a checkpoint once two older ones of the run are there
    rotations = [s for s in saves if (s > FIRST_STEPS if extended else s >= 3 * save_every)]
    if rng.random() < (0.5 if extended else 0.25):
        # only a folder holding a model reaches the swap: there it is drawn twice as often
        point = "model-staging"
        if (folder / "model").is_dir():
            point = rng.choices(FINAL_SAVE_POINTS, weights=(1, 2))[0]
    else:
        point = rng.choice(["step", "state", "latest"] + (["rotation"] if rotations else []))
    if point == "step":
        return point, rng.randrange(resumed + 1, STEPS) if resumed + 1 < STEPS else 0
    if point in FINAL_SAVE_POINTS:
        return point, STEPS
    return point, rng.choice(rotations if point == "rotation" else saves)


def corrupt_or_tear(
    folder: Path, argv: list[str], extended: bool, rng: random.Random, figures: dict
) -> None:
    """Sometimes, after a kill: flip bytes in the latest checkpoint (the resume must refuse
    it, naming the file; it is then moved aside) or tear the last line of ``metrics.jsonl``.
    An extended run folder keeps its checkpoints of the shorter run (resuming from one of
    them with more steps is another run than its reference)."""
    if rng.random() < 0.3:
        if extended and checkpoint_step(folder) <= FIRST_STEPS:
            return
        damaged = corrupt_latest(folder, rng)
        if damaged is None:
            return
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


def soak_round(
    folder: Path,
    reference: Path,
    cadence: tuple[int, int],
    extended: bool,
    kills: int,
    rng: random.Random,
    figures: dict,
) -> None:
    """Train one run folder to the end through up to ``kills`` faults and some corruptions,
    then compare it with ``reference`` (an uninterrupted run of the same cadences and
    lengths). An extended folder is first trained, uninterrupted, to ``FIRST_STEPS``."""
    argv = [*train_args(cadence), "--output-dir", str(folder), "--resume", "true"]
    folder.mkdir(parents=True)
    notes = folder / "notes.txt"  # a user's file beside the run: it must outlive everything
    notes.write_text(f"notes of round {figures['rounds']}\n")
    if extended:
        short = [*train_args(cadence, FIRST_STEPS), "--output-dir", str(folder)]
        code, _, err = run([*short, "--resume", "true"])
        if code != 0:
            raise SystemExit(f"the first part of an extended run failed: {err.strip()[-500:]}")
    faults: list[str] = []
    for _ in range(kills):
        fault = choose_fault(folder, cadence, extended, rng)
        if fault is None:
            break  # the last checkpoint is written: a final-save fault came already
        point, step = fault
        if point == "step":
            code, out, _ = kill_after_step(argv, folder, step)  # 0: at once, while starting
        else:
            code, out, _ = run(argv, f"{point}:{step}")
        figures["torn_lines_dropped"] += out.count(TORN)
        if code == 0:
            break  # the run finished before the fault point came
        if code != -signal.SIGKILL:
            raise SystemExit(f"run ended with {code} instead of the kill ({point}:{step})")
        figures["kills"] += 1
        figures["kill_points"][point] = figures["kill_points"].get(point, 0) + 1
        faults.append(f"{point}:{step}")
        corrupt_or_tear(folder, argv, extended, rng, figures)
    code, out, err = run(argv)
    if code != 0:
        raise SystemExit(f"the final resume failed ({code}): {err.strip()[-500:]}")
    figures["torn_lines_dropped"] += out.count(TORN)
    problems = model_differences(folder / "model", reference / "model")
    if metrics(folder) != metrics(reference):
        problems.append("metrics.jsonl")
    problems += [f"left behind: {name}" for name in leftovers(folder)]
    figures["user_files_lost"] += notes.read_text() != f"notes of round {figures['rounds']}\n"
    figures["rounds"] += 1
    tally = figures["cadences"].setdefault(
        cadence_name(cadence), {"rounds": 0, "extended": 0, "kills": 0, "equal": 0}
    )
    tally["rounds"] += 1
    tally["extended"] += extended
    tally["kills"] += len(faults)
    tally["equal"] += not problems
    figures["run_folders"].append({"folder": folder.name, "cadence": cadence_name(cadence),
                                   "extended": extended, "kills": faults,
                                   "equal": not problems})  # fmt: skip
    if problems:
        figures["mismatches"].append({"folder": str(folder), "differs": problems})


def reference_run(work: Path, cadence: tuple[int, int], extended: bool, cache: dict) -> Path:
    """The uninterrupted run a soaked run folder must equal (trained once, then reused):
    ``STEPS`` steps, or for an extended folder ``FIRST_STEPS`` and then on to ``STEPS``."""
    key = (cadence, extended)
    if key not in cache:
        folder = work / f"reference-{cadence[0]}-{cadence[1]}{'-extended' if extended else ''}"
        lengths = [FIRST_STEPS, STEPS] if extended else [STEPS]
        for steps in lengths:
            code, _, err = run([*train_args(cadence, steps), "--output-dir", str(folder),
                                "--resume", "true"])  # fmt: skip
            if code != 0:
                raise SystemExit(f"the reference run {folder} failed: {err.strip()[-500:]}")
        cache[key] = folder
    return cache[key]


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
            "long.jsonl": json.dumps({"prompt": "9" * 2_000_000, "completion": "1"}).encode(),
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
        ("unknown command", ["trian"]),
    ]  # fmt: skip
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=25, help="kill -9 faults in all")
    parser.add_argument("--kills-per-round", type=int, default=6, help="faults per run folder")
    parser.add_argument("--cadences", default=CADENCES,
                        help="save_every:log_every pairs, one drawn per run folder")  # fmt: skip
    parser.add_argument("--extended-share", type=float, default=0.4,
                        help="share of run folders first trained to a shorter end")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault schedule")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: temp)")
    args = parser.parse_args()
    cadences = parse_cadences(args.cadences)
    work = args.out or Path(tempfile.mkdtemp(prefix="sequencematch-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    started = time.perf_counter()
    references: dict = {}
    figures: dict = {"kills": 0, "kill_points": {}, "rounds": 0, "cadences": {},
                     "corruptions_detected": 0, "corruptions_missed": [],
                     "torn_lines_written": 0, "torn_lines_dropped": 0, "user_files_lost": 0,
                     "mismatches": [], "run_folders": []}  # fmt: skip
    while figures["kills"] < args.kills:
        folder = work / f"run-{figures['rounds']}"
        cadence = rng.choice(cadences)
        extended = rng.random() < args.extended_share
        reference = reference_run(work, cadence, extended, references)
        soak_round(folder, reference, cadence, extended, min(args.kills_per_round,
                   args.kills - figures["kills"]), rng, figures)  # fmt: skip
        print(f"round {figures['rounds']} ({cadence_name(cadence)}"
              f"{', extended' if extended else ''}): {figures['kills']} kills so far",
              flush=True)  # fmt: skip
    cases = bad_inputs(work / "inputs", next(iter(references.values())) / "model")
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
