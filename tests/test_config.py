"""The training configuration: validation messages, YAML, CLI flags and help."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from sequencematch.apps.cli import build_parser, main
from sequencematch.training.config import TrainConfig, add_config_arguments, config_from_arguments


def test_defaults_are_valid():
    assert TrainConfig().validate().method == "sequencematch"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"method": "ppo"}, "method must be one of"),
        ({"gamma": 1.5}, "gamma must lie in"),
        ({"alpha": 0.0}, "alpha must be > 0"),
        ({"beta": -0.1}, "beta must lie in"),
        ({"batch_size": 10, "grad_accum": 3}, "multiple of grad_accum"),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"task": ""}, "task must name a task"),
        ({"backspace": False, "p_noise": 0.1}, "p_noise needs backspace"),
        ({"replay_size": 8, "samples_per_refresh": 16}, "replay_size must be at least"),
    ],
)
def test_nonsense_is_refused_with_what_to_change(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes).validate()


def test_all_problems_are_reported_at_once():
    with pytest.raises(ValueError) as error:
        TrainConfig(gamma=2.0, lr=-1.0).validate()
    assert "gamma" in str(error.value) and "lr must be positive" in str(error.value)


def test_yaml_round_trip_and_unknown_keys(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: mle\nsteps: 7\ndifficulty: [1.0, 3.0]\n")
    config = TrainConfig.from_yaml(path)
    assert (config.method, config.steps, config.difficulty) == ("mle", 7, [1.0, 3.0])
    path.write_text("stepz: 7\n")
    with pytest.raises(ValueError, match="unknown configuration keys \\['stepz'\\]"):
        TrainConfig.from_yaml(path)


def test_flags_override_the_yaml_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 7\nlr: 0.01\n")
    args = build_parser().parse_args(
        ["train", "--config", str(path), "--steps", "9", "--backspace", "false",
         "--p-noise", "0", "--difficulty", "1", "2"]
    )  # fmt: skip
    config = config_from_arguments(args)
    assert (config.steps, config.lr, config.backspace, config.difficulty) == (
        9,
        0.01,
        False,
        [1, 2],
    )


def test_help_documents_every_option_with_its_default():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    text = " ".join(parser.format_help().split())
    for item in fields(TrainConfig):
        flag = "--" + item.name.replace("_", "-")
        assert flag in text, flag
    assert "(default: 0.998)" in text and "(default: chi2)" in text


def test_cli_reports_bad_configuration_without_a_traceback(capsys):
    assert main(["train", "--gamma", "3"]) == 2
    assert "gamma must lie in (0, 1]" in capsys.readouterr().err


def test_flags_accept_underscores_too():
    args = build_parser().parse_args(["train", "--p_noise", "0.2", "--mle-warmup-steps", "3"])
    config = config_from_arguments(args)
    assert (config.p_noise, config.mle_warmup_steps) == (0.2, 3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('steps: "three"\n', "steps must be a whole number, got the text 'three'"),
        ('lr: "1e-3"\n', r"lr must be a finite number, got the text '1e-3' \(write it without"),
        ("steps: 3.7\n", "steps must be a whole number, got 3.7"),
        ('backspace: "no"\n', "backspace must be true or false, got the text 'no'"),
        ('backspace: "false"\n', "backspace must be true or false, got the text 'false'"),
        ("output_dir: null\n", "output_dir must be text, got null"),
        ("grad_accum: 0\n", "grad_accum must be at least 1"),
        ("lr: .inf\n", "lr must be a finite number, got inf"),
        ("difficulty: [1, two]\n", "difficulty must be a list of two numbers"),
        ("steps: [3\n", r"run.yaml: not valid YAML \(line 2, column 1"),
        ("- steps\n", "expected a YAML mapping"),
    ],
)
def test_yaml_values_of_the_wrong_type_are_refused_in_one_line(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        TrainConfig.from_yaml(path).validate()
    assert "\n" not in str(error.value)


def test_yaml_numbers_are_read_as_numbers_when_exact(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-3\nsteps: 1e3\nalpha: 1\nbackspace: no\np_noise: 0\n")
    config = TrainConfig.from_yaml(path).validate()
    assert (config.lr, config.steps, config.alpha, config.backspace) == (1e-3, 1000, 1.0, False)
    assert isinstance(config.steps, int) and isinstance(config.alpha, float)


def test_python_callers_get_the_same_type_checks():
    with pytest.raises(ValueError, match="batch_size must be a whole number, got the text '8'"):
        TrainConfig(batch_size="8").validate()
    with pytest.raises(ValueError, match="resume and overwrite exclude each other"):
        TrainConfig(resume=True, overwrite=True).validate()


def test_bad_flags_are_one_line_errors_with_exit_code_2(capsys):
    for argv in (["train", "--steps", "3.7"], ["train", "--backspace", "maybe"], ["trian"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: "), err
