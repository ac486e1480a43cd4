"""End to end through the command line: demo --quick (and its resumption), then generate and
eval on its models."""

from __future__ import annotations

import json

import pytest

from sequencematch.apps.cli import main
from sequencematch.apps.demos.arithmetic_demo import COMPARED_METHODS
from sequencematch.tasks.arithmetic import make_splits, write_jsonl


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out), "--progress", "false"]) == 0
    return out


def test_demo_writes_report_plot_results_and_every_model(demo_folder):
    for seed in ("0", "1"):
        assert (demo_folder / f"seed-{seed}" / "warmup" / "model" / "config.json").exists()
        for name in COMPARED_METHODS:
            assert (demo_folder / f"seed-{seed}" / name / "model" / "config.json").exists(), name
            assert (demo_folder / f"seed-{seed}" / name / "model" / "task.json").exists(), name
            # a finished job keeps its model; its checkpoints (optimiser state) are deleted
            assert not (demo_folder / f"seed-{seed}" / name / "checkpoints").exists(), name
        assert not (demo_folder / f"seed-{seed}" / "warmup" / "checkpoints").exists()
    report = (demo_folder / "report.md").read_text()
    assert all(name in report for name in COMPARED_METHODS) and "p=0.1" in report
    assert "### What the intervals support" in report and "Over 2 seeds" in report
    assert (demo_folder / "accuracy_vs_noise.png").stat().st_size > 1000
    results = json.loads((demo_folder / "results.json").read_text())
    assert list(results["seeds"]) == ["0", "1"] and results["workers"] >= 1
    for record in results["seeds"].values():
        assert list(record["methods"]) == list(COMPARED_METHODS)
        for entry in record["methods"].values():
            levels = [(e["noise_prob"], e["temperature"]) for e in entry["sweep"]]
            greedy = [(p, None) for p in (0.0, 0.05, 0.1, 0.2)]
            assert levels == greedy + [(0.0, 1.0)]  # then sampled at T=1, p=0
            for evaluation in entry["sweep"]:
                assert 0.0 <= evaluation["ci_low"] <= evaluation["accuracy"] <= 1.0
                assert len(evaluation["outcomes"]) == 60  # one per test question
                assert evaluation["outcomes"].count("1") == evaluation["correct"]
    over = results["paired"]["over_seeds"]["sequencematch-chi2-bkspc vs offline-chi2-bkspc"]
    assert set(over) == {"accuracy@0", "accuracy@0.05", "accuracy@0.1", "accuracy@0.2",
                         "sampled@0"}  # fmt: skip
    assert "| method | p=0 | p=0.05 | p=0.1 | p=0.2 | p=0 sampled |" in report


def test_resume_reruns_only_what_did_not_finish_and_gets_the_same_answers(demo_folder):
    unfinished = demo_folder / "seed-1" / "mle" / "record.json"
    before = json.loads(unfinished.read_text())
    kept = demo_folder / "seed-0" / "sequencematch-chi2-bkspc" / "record.json"
    kept_time = kept.stat().st_mtime_ns
    unfinished.unlink()
    assert main(["demo", "--quick", "--out", str(demo_folder), "--progress", "false",
                 "--resume"]) == 0  # fmt: skip
    assert kept.stat().st_mtime_ns == kept_time  # read back, not trained again
    after = json.loads(unfinished.read_text())
    assert after["sweep"] == before["sweep"]  # same start, data, seed and threads
    assert (
        "(9 of 10 runs were read back from an earlier one)"
        in (demo_folder / "report.md").read_text()
    )


def test_resume_refuses_other_settings(demo_folder, capsys):
    code = main(["demo", "--quick", "--out", str(demo_folder), "--resume", "--steps", "17"])
    assert code == 2
    assert "these differ: steps" in capsys.readouterr().err


def test_eval_prints_json_for_a_question_file(demo_folder, tmp_path, capsys):
    questions = tmp_path / "questions.jsonl"
    write_jsonl(make_splits(1, 1, 12, seed=5)["test"], questions)
    model = demo_folder / "seed-0" / "sequencematch-chi2-bkspc" / "model"
    capsys.readouterr()
    assert main(["eval", "--model", str(model), "--data", str(questions), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["n"] == 12 and 0.0 <= record["accuracy"] <= 1.0
    policy = record["policy"]  # the policy around the 12 reference answers
    assert policy["rows"] == 12
    assert policy["p_eos"] + policy["tail_at_end"] + policy["p_bkspc_at_end"] == (
        pytest.approx(1.0, abs=1e-5)
    )
    assert main(["eval", "--model", str(model), "--data", str(questions), "--json",
                 "--noise", "1.0", "--seed", "3"]) == 0  # fmt: skip
    noisy = json.loads(capsys.readouterr().out)
    assert noisy["forced_rate"] == 1.0


def test_generate_shows_text_and_edits(demo_folder, capsys):
    model = demo_folder / "seed-0" / "mle-bkspc" / "model"
    capsys.readouterr()
    assert main(["generate", "--model", str(model), "--prompt", "In base 7, what is 12 + 5?",
                 "--json", "--noise", "0.5", "--seed", "1"]) == 0  # fmt: skip
    record = json.loads(capsys.readouterr().out)
    assert set(record) >= {"completion", "trace", "actions"}
    assert main(["generate", "--model", str(model), "--prompt", "In base 7, what is 1 + 1?",
                 "--show-edits"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("edits: ")


def test_missing_files_are_reported_clearly(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path), "--data", str(tmp_path / "q.jsonl")]) == 2
    assert "holds no saved model" in capsys.readouterr().err


def test_a_second_demo_into_the_same_folder_replaces_the_first(tmp_path, capsys):
    out = tmp_path / "demo"
    arguments = ["demo", "--quick", "--out", str(out), "--progress", "false", "--seeds", "1",
                 "--warmup-steps", "4", "--steps", "2", "--workers", "1"]  # fmt: skip
    assert main(arguments) == 0
    first = (out / "seed-0" / "mle" / "metrics.jsonl").stat().st_mtime_ns
    capsys.readouterr()
    assert main(arguments) == 2  # an earlier demo is replaced only when asked
    assert "pass --overwrite to replace it" in capsys.readouterr().err
    assert main([*arguments, "--overwrite"]) == 0
    assert "replacing the previous demo run" in capsys.readouterr().out
    assert (out / "seed-0" / "mle" / "metrics.jsonl").stat().st_mtime_ns != first


def test_training_errors_are_reported_without_a_traceback(tmp_path, capsys):
    run = ["train", "--output-dir", str(tmp_path / "run"), "--steps", "2", "--n-train", "16",
           "--hidden-size", "16", "--num-layers", "1", "--method", "mle", "--progress", "false",
           "--save-every", "1"]  # fmt: skip
    assert main(run) == 0
    capsys.readouterr()
    assert main(run) == 2  # the folder already holds a run and --resume was not given
    assert "already holds a run" in capsys.readouterr().err


def test_eval_without_data_scores_the_generated_test_split(demo_folder, capsys):
    model = demo_folder / "seed-0" / "mle" / "model"
    capsys.readouterr()
    assert main(["eval", "--model", str(model), "--json", "--n", "10"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["n"] == 10 and 0.0 <= record["accuracy"] <= 1.0


def test_demo_options_of_another_task_are_refused(tmp_path, capsys):
    assert main(["demo", "--corpus", str(tmp_path), "--out", str(tmp_path / "d")]) == 2
    assert "--corpus does not apply to the arithmetic demo" in capsys.readouterr().err


def metric_at(folder, step: int) -> float:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return next(json.loads(line)["mle"] for line in lines if json.loads(line)["step"] == step)


def test_demo_fine_tunes_a_pretrained_model_folder(demo_folder, tmp_path):
    """demo --model: the shared warm-up fine-tunes the given model instead of a fresh preset,
    SequenceMatch reads Q with the learned value offset, and --lora-r continues the methods
    through LoRA adapters (merged into each saved model)."""
    start = demo_folder / "seed-0" / "warmup" / "model"
    out = tmp_path / "pretrained"
    code = main(["demo", "--quick", "--model", str(start), "--seeds", "1", "--out", str(out),
                 "--progress", "false", "--lora-r", "8"])  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["model"] == str(start)
    assert results["settings"]["value_head"] == "normalised"
    assert results["settings"]["lora_r"] == 8  # the methods continue through LoRA adapters
    assert "through LoRA adapters (r 8" in (out / "report.md").read_text()
    # it starts where the earlier warm-up ended: far below a fresh model at the same step
    assert metric_at(out / "seed-0" / "warmup", 25) < metric_at(
        demo_folder / "seed-0" / "warmup", 25
    )
    for name in COMPARED_METHODS:
        assert (out / "seed-0" / name / "model" / "config.json").exists(), name


def test_demo_refuses_preset_sizes_for_a_pretrained_model(demo_folder, capsys):
    start = demo_folder / "seed-0" / "warmup" / "model"
    code = main(["demo", "--quick", "--model", str(start), "--hidden-size", "32"])
    assert code == 2
    assert "keeps its own" in capsys.readouterr().err
