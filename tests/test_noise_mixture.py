"""Mixtures of noise sources (``task+uniform``): each wrong token from one listed source."""

from __future__ import annotations

import json
import random

import pytest
from conftest import ALPHABET

from sequencematch.apps.cli import main
from sequencematch.apps.setup import prepare_run
from sequencematch.core.causal_lm import BKSPC_TOKEN
from sequencematch.core.examples import Example, special_ids
from sequencematch.models.presets import char_tokenizer
from sequencematch.tasks import arithmetic
from sequencematch.tasks.arithmetic_task import ArithmeticMistakes
from sequencematch.training.config import TrainConfig, noise_source_parts
from sequencematch.training.noise import MixtureNoise, build_noise_source
from sequencematch.training.trainer import Trainer


class Constant:
    """A source that always returns ``token`` (which source drew a token is then visible)."""

    def __init__(self, token: int) -> None:
        self.token = token

    def __call__(self, prefix: list[int], correct: int, rng: random.Random) -> int:
        return self.token


def _tokenizer_with_backspace(alphabet: str = ALPHABET):
    tokenizer = char_tokenizer(alphabet)
    tokenizer.add_special_tokens({"additional_special_tokens": [BKSPC_TOKEN]})
    return tokenizer, tokenizer.convert_tokens_to_ids(BKSPC_TOKEN)


@pytest.mark.parametrize("count", [2, 3])
def test_each_listed_source_draws_its_share(count):
    mixture = MixtureNoise([Constant(10 + k) for k in range(count)])
    rng = random.Random(0)
    draws = [mixture([1, 2], 3, rng) for _ in range(6000)]
    for k in range(count):  # binomial sd at most 0.0065: the bound is over 5 sd
        assert abs(draws.count(10 + k) / len(draws) - 1 / count) < 0.035


def test_a_mixture_is_deterministic_for_a_seed():
    tokenizer, bk = _tokenizer_with_backspace(arithmetic.ALPHABET)
    source = build_noise_source("task+uniform", tokenizer, [], len(tokenizer), [bk],
                                ArithmeticMistakes(tokenizer))  # fmt: skip
    prefix = tokenizer("In base 7, what is 12 + 5? = 2", add_special_tokens=False).input_ids
    correct = tokenizer("0", add_special_tokens=False).input_ids[0]

    def draws(seed: int) -> list[int]:
        rng = random.Random(seed)
        return [source(prefix, correct, rng) for _ in range(200)]

    assert draws(3) == draws(3)
    assert draws(3) != draws(4)


def test_a_mixture_of_task_and_uniform_never_draws_the_correct_token():
    tokenizer, bk = _tokenizer_with_backspace(arithmetic.ALPHABET)
    source = build_noise_source("task+uniform", tokenizer, [], len(tokenizer), [bk],
                                ArithmeticMistakes(tokenizer))  # fmt: skip
    assert isinstance(source, MixtureNoise)
    question = "In base 7, what is 12 + 5? = "
    rng = random.Random(0)
    digits = set(tokenizer("0123456-", add_special_tokens=False).input_ids)
    plausible = garbage = 0
    for answer in ("2", "20", "-1"):
        prefix = tokenizer(question + answer[:-1], add_special_tokens=False).input_ids
        correct = tokenizer(answer[-1], add_special_tokens=False).input_ids[0]
        for _ in range(300):
            token = source(prefix, correct, rng)
            assert token != correct and token != bk and token < len(tokenizer)
            plausible += token in digits
            garbage += token not in digits
    assert plausible > 300 and garbage > 300  # both sources took part


def test_unigram_mixtures_are_built_from_the_corpus_counts():
    tokenizer, bk = _tokenizer_with_backspace()
    examples = [Example(prompt=[4], completion=[5, 6, 5])]
    source = build_noise_source("unigram+uniform", tokenizer, examples, len(tokenizer), [bk])
    rng = random.Random(0)
    draws = [source([4], 5, rng) for _ in range(400)]
    assert draws.count(6) > 150  # unigram: only 6 is a wrong token with a count; uniform: any


@pytest.mark.parametrize(
    "name", ["task+uniform", "uniform+task", "task+unigram+uniform", "uniform", "model"]
)
def test_valid_noise_sources(name):
    assert noise_source_parts(name) == name.split("+")
    TrainConfig(noise_source=name).validate()


@pytest.mark.parametrize(
    "name", ["task+model", "task+task", "task+", "+uniform", "gaussian", "task + uniform", ""]
)
def test_invalid_noise_sources_get_one_line_naming_the_valid_ones(name):
    with pytest.raises(ValueError) as caught:
        TrainConfig(noise_source=name).validate()
    message = str(caught.value)
    assert "\n" not in message and repr(name) in message
    assert "uniform, unigram, task, model" in message and "task+uniform" in message


def test_task_in_a_mixture_needs_a_task_with_mistakes(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"{a}+1:", "completion": str(a + 1)}) + "\n"
                             for a in range(8)))  # fmt: skip
    code = main(["train", "--task", "jsonl", "--train-file", str(pairs), "--noise-source",
                 "uniform+task", "--output-dir", str(tmp_path / "run"), "--steps", "1",
                 "--progress", "false"])  # fmt: skip
    assert code == 2
    assert "noise_source task needs the task's own mistakes" in capsys.readouterr().err


def test_training_with_a_mixture_through_the_command_line(tmp_path):
    run = tmp_path / "run"
    code = main(["train", "--noise-source", "task+uniform", "--p-noise", "0.3",
                 "--method", "mle", "--steps", "2", "--n-train", "16", "--hidden-size", "16",
                 "--num-layers", "1", "--save-every", "0", "--log-every", "1",
                 "--output-dir", str(run), "--progress", "false"])  # fmt: skip
    assert code == 0
    config = json.loads((run / "model" / "training_config.json").read_text())
    assert config["noise_source"] == "task+uniform"
    assert (run / "model" / "config.json").exists()


def test_a_training_batch_mixes_plausible_and_garbage_wrong_tokens(tmp_path):
    config = TrainConfig(task="arithmetic", method="mle", steps=1, p_noise=0.5, batch_size=16,
                         noise_source="task+uniform", n_train=16, n_valid=4, n_test=4,
                         hidden_size=16, num_layers=1, num_heads=2, save_every=0,
                         progress=False, output_dir=str(tmp_path / "run"))  # fmt: skip
    inputs = prepare_run(config)
    trainer = Trainer(config, inputs.model, inputs.tokenizer, inputs.train,
                      task_noise=inputs.task_noise)  # fmt: skip
    _, actions, experts = trainer._data_rows(1)
    bk, tokenizer = trainer.bkspc_id, trainer.tokenizer
    forbidden = {*special_ids(tokenizer), bk}
    inserted = []
    for row, flags in zip(actions, experts, strict=True):
        for index, (action, expert) in enumerate(zip(row, flags, strict=True)):
            if not expert:  # a wrong token: a real token of the vocabulary, then deleted
                assert action < len(tokenizer) and action not in forbidden
                assert row[index + 1] == bk
                inserted.append(tokenizer.decode([action]))
    plausible = [text for text in inserted if text in arithmetic.DIGITS + "-"]
    assert len(plausible) >= 5 and len(inserted) - len(plausible) >= 5
    assert trainer._data_rows(1)[1] == actions  # the same draws for the same step
