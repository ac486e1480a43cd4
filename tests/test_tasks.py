"""The Task interface: built-in and user tasks, sample lengths from the data, noise sources,
validation during training, and the jsonl train and eval path through the command line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import boost_logit
from test_text_pipeline import write_corpus

from sequencematch.apps.cli import main
from sequencematch.apps.setup import load_trained, prepare_run, task_file
from sequencematch.core.examples import encode_example, special_ids
from sequencematch.evaluation.perplexity import perplexity
from sequencematch.evaluation.text_evaluation import evaluate_text
from sequencematch.models.backspace import add_backspace
from sequencematch.models.presets import char_tokenizer
from sequencematch.tasks import arithmetic, names
from sequencematch.tasks.arithmetic_task import ArithmeticTask
from sequencematch.tasks.base import EvalOptions, Pair, Task, TaskData, TaskOptions
from sequencematch.tasks.exact_match import evaluate_exact_match
from sequencematch.tasks.registry import register_task, task_class, task_from_info, task_names
from sequencematch.training.config import TrainConfig
from sequencematch.training.trainer import Trainer

TINY = dict(hidden_size=16, num_layers=1, num_heads=2, batch_size=4, warmup_steps=1,
            save_every=0, log_every=1, progress=False, model_batch_size=4,
            samples_per_refresh=4, replay_size=8, refresh_every=5)  # fmt: skip


class ReverseTask(Task):
    """A user's own task, as a class: write the letters of the prompt backwards."""

    name = "reverse"
    option_names = ("n_train", "n_valid", "seed")

    def pairs(self, n: int, offset: int) -> list[Pair]:
        rng = random.Random(f"{self.options.seed}-{offset}")
        words = ["".join(rng.choices("abcd", k=rng.randint(2, 5))) for _ in range(n)]
        return [Pair(word + ":", word[::-1]) for word in words]

    def preset_tokenizer(self):
        return char_tokenizer("abcd:")

    def data(self, tokenizer) -> TaskData:
        train = [encode_example(tokenizer, p.prompt, p.completion)
                 for p in self.pairs(self.options.n_train, 0)]  # fmt: skip
        return TaskData(train, self.pairs(self.options.n_valid, 1), self.pairs(8, 2))

    def evaluate(self, model, tokenizer, pairs, *, bkspc_id, max_new_tokens, options):
        return evaluate_exact_match(
            model, tokenizer, [(p.prompt, p.completion) for p in pairs], bkspc_id=bkspc_id,
            max_new_tokens=max_new_tokens, seed=options.seed,
        )  # fmt: skip

    def metrics(self, result) -> dict[str, float]:
        return {"accuracy": result.accuracy}

    def held_out(self, tokenizer, data, *, n=None, seed=0) -> list[Pair]:
        return self.pairs(n or 8, 2)


def write_pairs(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in pairs))
    return path


def metrics_records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------ the registry


def test_tasks_are_found_by_name_or_import_path_and_unknown_ones_are_refused():
    assert {"arithmetic", "jsonl", "text"} <= set(task_names())
    assert task_class("arithmetic") is ArithmeticTask
    assert task_class("sequencematch.tasks.arithmetic_task:ArithmeticTask") is ArithmeticTask
    with pytest.raises(ValueError, match="unknown task 'arithmetik'; choose one of arithmetic"):
        task_class("arithmetik")
    with pytest.raises(ValueError, match="is not a subclass"):
        task_class("sequencematch.tasks.arithmetic:ArithmeticQuestion")
    with pytest.raises(ValueError, match="cannot import task"):
        task_class("no_such_module:Task")
    with pytest.raises(ValueError, match="exists already"):
        register_task(ReverseTask, name="text")


def test_a_saved_task_describes_itself_and_is_rebuilt_from_its_description():
    task = ArithmeticTask(TaskOptions(n_train=20, n_test=7, difficulty=(1.0, 3.0), seed=4))
    info = task.info()
    assert info["task"] == "arithmetic" and info["difficulty"] == [1.0, 3.0]
    assert "vocab_size" not in info  # only the options the task reads
    again = task_from_info(json.loads(json.dumps(info)))
    assert isinstance(again, ArithmeticTask) and again.splits["test"] == task.splits["test"]
    assert ReverseTask().info()["task"] == f"{__name__}:ReverseTask"  # not registered: a path
    with pytest.raises(ValueError, match="names no task"):
        task_from_info({})


# ------------------------------------------------------------------------- a user's own task


def test_a_users_task_is_a_class_trained_and_validated_like_any_other(tmp_path, monkeypatch):
    config = TrainConfig(task=f"{__name__}:ReverseTask", method="mle", steps=3, n_train=24,
                         n_valid=6, eval_every=2, output_dir=str(tmp_path / "run"),
                         **TINY).validate()  # fmt: skip
    inputs = prepare_run(config)
    assert isinstance(inputs.task, ReverseTask) and inputs.evaluate is not None
    trainer = Trainer(
        config, inputs.model, inputs.tokenizer, inputs.train, evaluate=inputs.evaluate,
        model_files=task_file(inputs.task_info),
    )  # fmt: skip
    trainer.train()
    evaluations = [r for r in metrics_records(tmp_path / "run") if "eval/accuracy" in r]
    assert [r["step"] for r in evaluations] == [2, 3]  # every eval_every steps and at the end
    with pytest.raises(ValueError, match="pass --trust-task-code"):  # a class by import path
        load_trained(tmp_path / "run" / "model")
    trained = load_trained(tmp_path / "run" / "model", trust_task_code=True)
    assert isinstance(trained.task, ReverseTask)  # found again through task.json

    monkeypatch.setattr(names, "REGISTERED", {})  # forgotten after this test
    register_task(ReverseTask)  # by name, too
    inputs = prepare_run(config.replace(task="reverse", output_dir=str(tmp_path / "again")))
    assert isinstance(inputs.task, ReverseTask)
    own = prepare_run(config.replace(eval_every=0), task=ReverseTask(TaskOptions(n_train=5)))
    assert len(own.train) == 5 and isinstance(own.task, ReverseTask)  # an object of the user's


# -------------------------------------------------------------------------- sample lengths


def test_samples_are_as_long_as_the_longest_training_completion(tmp_path):
    """Samples used to stop at 24 visible tokens whatever the data; now they go as far as
    the longest training completion (with its <eos>)."""
    long_answers = [("q" + str(i) + ":", "abcdefghij" * 4) for i in range(8)]
    train = write_pairs(tmp_path / "train.jsonl", long_answers)
    config = TrainConfig(task="jsonl", train_file=str(train), method="sequencematch", steps=1,
                         mle_warmup_steps=0, output_dir=str(tmp_path / "run"),
                         **TINY).validate()  # fmt: skip
    inputs = prepare_run(config)
    assert inputs.sample_length == 41 and inputs.task_info["max_new_tokens"] == 41
    trainer = Trainer(config, inputs.model, inputs.tokenizer, inputs.train)
    assert trainer.sample_length == 41
    handle = boost_logit(trainer.model, inputs.tokenizer.eos_token_id, -1e4)  # never stops early
    try:
        trainer.train()
    finally:
        handle.remove()
    refill = next(r for r in metrics_records(tmp_path / "run") if "sample/mean_actions" in r)
    assert refill["sample/mean_actions"] >= 41  # every sample ran to the data's length


def test_data_rows_are_cut_at_the_maximum_length_and_then_bootstrap(tmp_path):
    pairs = [("q:", "abc"), ("r:", "abcdefghij" * 3)]
    train = write_pairs(tmp_path / "train.jsonl", pairs)
    config = TrainConfig(task="jsonl", train_file=str(train), max_completion_tokens=12,
                         output_dir=str(tmp_path / "run"), **TINY).validate()  # fmt: skip
    inputs = prepare_run(config)
    eos = inputs.tokenizer.eos_token_id
    short, long = inputs.train
    assert short.completion[-1] == eos and len(short.completion) == 4  # an answer: it ends
    assert len(long.completion) == 12 and eos not in long.completion  # cut: no ending
    assert inputs.sample_length == 12


# ----------------------------------------------------------------------------- noise sources


def task_config(task: str, tmp_path: Path, **changes) -> TrainConfig:
    extra: dict = {"n_train": 16, "n_valid": 4, "n_test": 4}
    if task == "jsonl":
        pairs = [(f"{a} plus {b}:", str(a + b)) for a in range(4) for b in range(4)]
        extra = {"train_file": str(write_pairs(tmp_path / "pairs.jsonl", pairs))}
    elif task == "text":
        corpus = write_corpus(tmp_path / "corpus", documents=4, words=120)
        extra |= {"train_file": str(corpus), "vocab_size": 300, "prompt_tokens": 4,
                  "completion_tokens": 6}  # fmt: skip
    options = TINY | extra | changes
    run = str(tmp_path / "run")
    return TrainConfig(task=task, method="mle", steps=1, p_noise=0.5, output_dir=run, **options)


@pytest.mark.parametrize("task", ["arithmetic", "jsonl", "text"])
@pytest.mark.parametrize("source", ["uniform", "unigram", "task", "model"])
def test_every_noise_source_gives_valid_wrong_tokens_for_every_task(tmp_path, task, source):
    config = task_config(task, tmp_path, noise_source=source, batch_size=16)
    if source == "task" and task != "arithmetic":
        with pytest.raises(ValueError, match=f"the {task} task defines none"):
            prepare_run(config)
        return
    inputs = prepare_run(config)
    trainer = Trainer(config, inputs.model, inputs.tokenizer, inputs.train,
                      task_noise=inputs.task_noise)  # fmt: skip
    _, actions, experts = trainer._data_rows(1)
    bk, vocab = trainer.bkspc_id, len(trainer.tokenizer)
    forbidden = {*special_ids(trainer.tokenizer), bk}
    inserted = []
    for row, flags in zip(actions, experts, strict=True):
        for index, (action, expert) in enumerate(zip(row, flags, strict=True)):
            if not expert:  # a wrong token: a real token of the vocabulary, later deleted
                inserted.append(action)
                assert 0 <= action < vocab and action not in forbidden
                assert bk in row[index + 1 :]
    assert len(inserted) >= 4
    if source == "task":  # plausible arithmetic mistakes: digits and signs
        characters = set(trainer.tokenizer.decode(inserted))
        assert characters <= set(arithmetic.DIGITS + "-")


# ------------------------------------------------------------------ text: ends and perplexity


def test_perplexity_scores_no_eos_that_is_not_in_the_text():
    torch.manual_seed(0)
    tokenizer = char_tokenizer("abc ")
    from sequencematch.models.presets import tiny_model

    model = tiny_model("tiny_gpt2", tokenizer).double().eval()
    add_backspace(model, tokenizer)
    pairs = [("ab ", "cab ca"), ("ca ", "bbc a")]
    window = evaluate_text(model, tokenizer, pairs, bkspc_id=None, max_new_tokens=4,
                           with_mauve=False)  # fmt: skip
    ended = evaluate_text(model, tokenizer, pairs, bkspc_id=None, max_new_tokens=4,
                          with_mauve=False, final=[True, True])  # fmt: skip
    text_only = [encode_example(tokenizer, p, c, final=False) for p, c in pairs]
    with_eos = [encode_example(tokenizer, p, c) for p, c in pairs]
    assert window.perplexity == pytest.approx(
        perplexity(model, [e.prompt for e in text_only], [e.completion for e in text_only])
    )
    assert ended.perplexity == pytest.approx(
        perplexity(model, [e.prompt for e in with_eos], [e.completion for e in with_eos])
    )
    assert window.perplexity != pytest.approx(ended.perplexity)


def test_text_windows_from_the_middle_of_a_work_are_not_endings(tmp_path):
    config = task_config("text", tmp_path, n_train=0, n_valid=0, n_test=0)
    inputs = prepare_run(config)
    eos = inputs.tokenizer.eos_token_id
    ends = [e for e in inputs.train if e.completion[-1] == eos]
    cut = [e for e in inputs.train if e.completion[-1] != eos]
    train_works = 2  # of the four documents, one is held out for validation and one for test
    assert len(ends) == train_works and len(cut) > 10 * len(ends)
    assert all(len(e.completion) == 6 for e in cut)
    assert sum(p.final for p in inputs.test) <= 1 and not inputs.test[0].final  # one work
    metrics = inputs.evaluate(inputs.model)  # the validation evaluation during training
    assert set(metrics) >= {"perplexity", "diversity", "bkspc_rate"} and "mauve" not in metrics


# ------------------------------------------------------------------ jsonl through the CLI


def test_jsonl_train_and_eval_through_the_command_line(tmp_path, capsys):
    rng = random.Random(0)
    words = ["".join(rng.choices("abcd", k=rng.randint(2, 4))) for _ in range(40)]
    train = write_pairs(tmp_path / "train.jsonl", [(w + ":", w[::-1]) for w in words[:32]])
    valid = write_pairs(tmp_path / "valid.jsonl", [(w + ":", w[::-1]) for w in words[32:]])
    run = tmp_path / "run"
    common = ["train", "--task", "jsonl", "--train-file", str(train), "--method", "mle",
              "--steps", "4", "--hidden-size", "16", "--num-layers", "1", "--batch-size", "4",
              "--progress", "false", "--log-every", "1", "--save-every", "0"]  # fmt: skip
    assert main([*common, "--output-dir", str(run), "--eval-every", "2"]) == 2
    assert "needs validation data" in capsys.readouterr().err
    assert main([*common, "--output-dir", str(run), "--eval-every", "2",
                 "--valid-file", str(valid)]) == 0  # fmt: skip
    evaluations = [r for r in metrics_records(run) if "eval/accuracy" in r]
    assert [r["step"] for r in evaluations] == [2, 4]
    assert all(0.0 <= r["eval/accuracy"] <= 1.0 for r in evaluations)
    info = json.loads((run / "model" / "task.json").read_text())
    assert info["task"] == "jsonl" and info["max_new_tokens"] == 5  # four letters and <eos>

    capsys.readouterr()
    assert main(["eval", "--model", str(run / "model"), "--data", str(valid), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["n"] == 8 and record["accuracy"] == evaluations[-1]["eval/accuracy"]
    assert main(["eval", "--model", str(run / "model")]) == 2
    assert "task jsonl: pass --data" in capsys.readouterr().err

    trained = load_trained(run / "model")
    result = trained.task.evaluate(
        trained.model, trained.tokenizer, [Pair(w + ":", w[::-1]) for w in words[32:]],
        bkspc_id=trained.bkspc_id, max_new_tokens=5, options=EvalOptions(),
    )  # fmt: skip
    assert result.accuracy == record["accuracy"]  # exact match of the completion, as in eval


def test_task_mistakes_read_the_question_after_a_chat_templates_own_text():
    from sequencematch.models.presets import char_tokenizer
    from sequencematch.tasks import arithmetic
    from sequencematch.tasks.arithmetic_task import ArithmeticMistakes

    tokenizer = char_tokenizer(arithmetic.ALPHABET + "user")
    text = "user\nIn base 3, what is 11 + 1? = 10"
    prefix = tokenizer(text, add_special_tokens=False).input_ids
    rng = random.Random(0)
    for _ in range(20):  # a wrong digit of base 3 (or a sign), never a parse error
        mistake = tokenizer.decode([ArithmeticMistakes(tokenizer)(prefix, -1, rng)])
        assert mistake in "012-"


def test_a_task_without_a_comparison_report_is_refused_by_the_demo_harness():
    from sequencematch.apps.demos.arithmetic_report import ArithmeticComparison
    from sequencematch.apps.demos.harness import task_comparison

    assert isinstance(task_comparison(ArithmeticTask()), ArithmeticComparison)
    with pytest.raises(ValueError, match="the reverse task has no comparison report"):
        task_comparison(ReverseTask())
