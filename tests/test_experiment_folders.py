"""Experiment scripts follow the run-folder rule: they delete nothing they cannot prove a
run wrote (a folder holding a user's file is refused and left as it was)."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import pytest
from test_trainer import SMALL, make_trainer

from sequencematch.training.config import TrainConfig
from sequencematch.training.run_folder import MARKER_FILE, RunFolderError, remove_run_folder

ROOT = Path(__file__).resolve().parents[1]
SM = "sequencematch-chi2-bkspc"

# script -> (its training function, the arguments of one run, that run's folder under --out)
SCRIPTS = {
    "arithmetic": ("train_and_evaluate", dict(difficulties=["easy"], methods=[SM], steps=None,
                                              from_demo=None, workers=1), f"easy/seed0/{SM}"),
    "text": ("train_and_evaluate_text", dict(size="demo", split="valid", methods=[SM],
                                             from_demo=None, workers=1), f"seed0/{SM}"),
    "training_choices": ("train_and_evaluate", dict(variants=["cosine-uniform"]),
                         f"cosine-uniform/seed0/{SM}"),
    "tune_arithmetic": ("train_and_evaluate", dict(variants=["sm"], n_valid=8), f"sm/seed0/{SM}"),
}  # fmt: skip


def tiny_run(config: TrainConfig, *args, **kwargs) -> tuple[list, float]:
    """Stands in for an experiment's training: a one-step run in the script's run folder,
    with the script's ``overwrite`` (the trainer claims the folder as the script asked)."""
    small = TrainConfig(
        output_dir=config.output_dir, overwrite=config.overwrite, resume=config.resume,
        method="mle", steps=1, **SMALL,
    ).validate()  # fmt: skip
    make_trainer(small).train()
    return [], 0.0


def script(name: str, monkeypatch) -> object:
    monkeypatch.syspath_prepend(str(ROOT))
    module = importlib.import_module(f"experiments.{name}")
    monkeypatch.setattr(module, SCRIPTS[name][0], tiny_run)
    return module


def user_files(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("my notes")
    (folder / "model").mkdir(exist_ok=True)
    (folder / "model" / "weights.bin").write_text("my weights")
    return {"notes.txt": "my notes", "model/weights.bin": "my weights"}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_experiment_scripts_refuse_a_run_folder_holding_a_users_files(
    name: str, tmp_path: Path, monkeypatch
):
    module = script(name, monkeypatch)
    monkeypatch.setattr("sequencematch.evaluation.text_metrics.SentenceEncoder", lambda: None)
    _, options, run_folder = SCRIPTS[name]
    folder = tmp_path / run_folder
    files = user_files(folder)
    args = argparse.Namespace(out=tmp_path, seeds=[0], **options)
    with pytest.raises(RunFolderError, match="no sequencematch run recorded writing"):
        module.run(args)
    for file, text in files.items():
        assert (folder / file).read_text() == text
    assert not (folder / MARKER_FILE).exists()


def test_every_experiment_configuration_replaces_only_its_own_earlier_run(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from experiments.from_scratch import ArithmeticSettings, TextSettings, method_configs

    for settings in (ArithmeticSettings(), TextSettings()):
        configs = method_configs(settings, Path("out"))
        assert configs and all(c.overwrite and not c.resume for c in configs.values())
    for path in (ROOT / "experiments").glob("*.py"):
        assert "rmtree" not in path.read_text(), path.name


def test_tuning_replaces_an_unfinished_run_and_removes_only_what_its_runs_wrote(
    tmp_path: Path, monkeypatch
):
    """An unfinished run in the way is replaced (its marker proves it); a finished run's
    folder is removed after it is scored; a user's file beside the runs stays."""
    module = script("tune_arithmetic", monkeypatch)
    folder = tmp_path / SCRIPTS["tune_arithmetic"][2]
    make_trainer(TrainConfig(output_dir=str(folder), method="mle", steps=1, **SMALL)).train()
    assert (folder / MARKER_FILE).exists()
    (tmp_path / "sm" / "notes.txt").write_text("my notes")
    module.run(argparse.Namespace(out=tmp_path, seeds=[0], variants=["sm"], n_valid=8))
    assert not folder.exists()
    assert (tmp_path / "sm" / "notes.txt").read_text() == "my notes"
    assert (tmp_path / "tuning.jsonl").exists()


def test_removing_a_run_folder_deletes_only_what_the_run_wrote(tmp_path: Path):
    folder = tmp_path / "run"
    with pytest.raises(RunFolderError, match="nothing was deleted"):
        user_files(folder)
        remove_run_folder(folder)
    assert (folder / "notes.txt").exists()
    run = tmp_path / "trained"
    make_trainer(TrainConfig(output_dir=str(run), method="mle", steps=1, **SMALL)).train()
    (run / "model" / "mine.txt").write_text("mine")  # inside a folder the run wrote
    with pytest.raises(RunFolderError, match="model/mine.txt"):
        remove_run_folder(run)
    assert (run / "model" / "config.json").exists() and (run / MARKER_FILE).exists()
    (run / "model" / "mine.txt").unlink()
    (run / "notes.txt").write_text("my notes")  # beside the run's outputs
    assert remove_run_folder(run) == ["notes.txt"]
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    (run / "notes.txt").unlink()
    make_trainer(TrainConfig(output_dir=str(run), method="mle", steps=1, **SMALL)).train()
    assert remove_run_folder(run) == [] and not run.exists()
