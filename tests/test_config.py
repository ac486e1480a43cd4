"""The training configuration: validation messages, YAML, CLI flags and help."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from sequencematch.apps.cli import build_parser, main
from sequencematch.training.config import TrainConfig, add_config_arguments, config_from_arguments
from sequencematch.training.options import OPTION_GROUPS, NoiseOptions, ReplayOptions


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
        ({"divergence": "wasserstein"}, "divergence must be one of"),
        ({"attn_implementation": "flash_attention_2"}, "attn_implementation must be one of"),
        ({"weight_decay": -0.1}, "weight_decay must be >= 0"),
        ({"num_layers": 0}, "num_layers and num_heads must each be at least 1"),
        ({"hidden_size": 130, "num_heads": 4}, "hidden_size 130 must be a multiple of num_heads"),
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
        ('mle_warmup_steps: "x"\n', "mle_warmup_steps must be a whole number \\(or absent\\)"),
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


# An option that does nothing in its configuration: refused when the user wrote it (a flag or
# a YAML key), a one-line warning when a program set it.
UNUSED_OPTIONS = [
    ({"sm_ramp_steps": 5}, "sm_ramp_steps"),  # under the default regularised warm-up
    ({"method": "offline", "beta": 0.8}, "beta"),
    ({"method": "offline", "regularise_warmup": False}, "regularise_warmup"),
    ({"divergence": "kl", "alpha": 1.0}, "alpha"),
    ({"value_head": "none", "value_head_lr": 0.01}, "value_head_lr"),
]


@pytest.mark.parametrize(("changes", "name"), UNUSED_OPTIONS)
def test_options_that_do_nothing_warn_in_one_line(changes, name):
    with pytest.warns(UserWarning, match=f"^{name} .* does nothing") as caught:
        TrainConfig(**changes).validate()
    assert len(caught) == 1 and "\n" not in str(caught[0].message)


@pytest.mark.parametrize(("changes", "name"), UNUSED_OPTIONS)
def test_options_that_do_nothing_are_refused_when_written(tmp_path, changes, name):
    flags = [f"--{key}={value}" for key, value in changes.items() if key == name]
    path = tmp_path / "run.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in changes.items() if k != name))
    args = build_parser().parse_args(["train", "--config", str(path), *flags])
    with pytest.raises(ValueError, match=f"{name} .* does nothing"):
        config_from_arguments(args)


def test_options_that_do_something_are_silent(recwarn):
    TrainConfig(sm_ramp_steps=5, regularise_warmup=False).validate()
    TrainConfig(method="sequencematch", beta=0.8, alpha=1.0, value_head="offset",
                value_head_lr=0.01).validate()  # fmt: skip
    TrainConfig(method="mle", beta=0.8, divergence="kl", alpha=1.0).validate()  # reads none
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


def test_the_objective_is_built_from_the_configuration():
    config = TrainConfig(divergence="kl", gamma=0.9, beta=0.3, lambda_mle=0.25,
                         value_head="offset", terminal_value="zero",
                         data_regulariser="value")  # fmt: skip
    objective = config.objective()
    assert (objective.kind, objective.divergence, objective.gamma) == ("online", "kl", 0.9)
    assert (objective.beta, objective.lambda_mle, objective.alpha) == (0.3, 0.25, 10.0)
    assert (objective.q_reading, objective.terminal_value) == ("offset", "zero")
    assert objective.data_regulariser == "value" and objective.sm_weight == 0.75
    assert TrainConfig(method="mle").objective().kind == "mle"
    assert TrainConfig(method="offline").objective().kind == "offline"
    # the offline arm as it was first written: a warm-up as long as the run
    legacy = TrainConfig(method="sequencematch", steps=40, mle_warmup_steps=40)
    assert legacy.objective().kind == "offline" and not legacy.samples_model()


def test_the_groups_hold_every_option_once_in_the_configurations_order():
    grouped = [item.name for _, group in OPTION_GROUPS for item in fields(group)]
    assert grouped == [item.name for item in fields(TrainConfig)]
    assert len(set(grouped)) == len(grouped)
    assert all(isinstance(TrainConfig(), group) for _, group in OPTION_GROUPS)


def test_help_lists_the_options_by_group_in_order():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    text = parser.format_help()
    places = [text.index(f"\n{title}:\n") for title, _ in OPTION_GROUPS]
    assert places == sorted(places)
    noise, method = (text.index(f"\n  {flag}", places[0]) for flag in ("--p-noise", "--method"))
    assert places[3] < noise < places[4] < method < places[5]


def test_a_group_checks_its_own_fields_alone():
    assert NoiseOptions().problems() == [] and ReplayOptions(refresh_every=0).problems() == []
    assert NoiseOptions(backspace=False).problems() == [
        "p_noise needs backspace (noise is undone with <bkspc>): set backspace true or p_noise 0"
    ]
    assert NoiseOptions(p_noise="x").problems()[0].startswith("p_noise must be a finite number")
    assert ReplayOptions(refresh_every=0).sampling_problems() == [
        "refresh_every must be at least 1"
    ]
    # replay sizes are read by a sampling run only; the arms of a comparison share them
    assert TrainConfig(method="mle", refresh_every=0).problems() == []
    assert TrainConfig(refresh_every=0).problems() == ["refresh_every must be at least 1"]
