"""What a run reads from the user: held-out data checked before training, the trained model
saved before anything can fail at the end, literal special-token text kept as text, and the
data and base model a resume must find unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import fails

from sequencematch.apps.cli import main
from sequencematch.apps.setup import prepare_run
from sequencematch.core.examples import encode_example, encode_prompt, special_ids
from sequencematch.core.tokenizers import char_tokenizer
from sequencematch.models.prompts import format_prompt
from sequencematch.tasks.text import END_OF_TEXT, PAD, cut_windows, train_bpe_tokenizer
from sequencematch.training.config import TrainConfig
from sequencematch.training.trainer import Trainer

TINY = ["--model", "tiny_gpt2", "--hidden-size", "16", "--num-layers", "1", "--num-heads", "2",
        "--batch-size", "4", "--method", "mle", "--progress", "false"]  # fmt: skip


def write_pairs(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in pairs))
    return path


def pairs_config(tmp_path: Path, **changes) -> TrainConfig:
    train = write_pairs(tmp_path / "train.jsonl", [(f"{w}:", w[::-1]) for w in ("ab", "cd")] * 4)
    values = dict(task="jsonl", train_file=str(train), model="tiny_gpt2", hidden_size=16,
                  num_layers=1, num_heads=2, batch_size=4, method="mle", steps=2,
                  progress=False, output_dir=str(tmp_path / "run"))  # fmt: skip
    return TrainConfig(**(values | changes)).validate()


# ---------------------------------------------------------------------- the end of a run


def test_a_validation_prompt_longer_than_the_model_is_refused_before_training(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    write_pairs(pairs, [("ab:", "ba"), ("cd:", "dc")])
    valid = write_pairs(tmp_path / "valid.jsonl", [("ab:", "ba"), ("a" * 600 + ":", "a")])
    run = tmp_path / "run"
    fails(capsys, ["train", "--task", "jsonl", "--train-file", str(pairs), "--valid-file",
                   str(valid), "--output-dir", str(run), "--steps", "2", *TINY],
          "validation data: prompt 2 has 602 tokens")  # fmt: skip
    assert not (run / "metrics.jsonl").exists()


def test_eval_data_longer_than_the_model_is_one_line(tmp_path, capsys):
    config = pairs_config(tmp_path)
    inputs = prepare_run(config)
    Trainer(config, inputs.model, inputs.tokenizer, inputs.train,
            model_files={"task.json": json.dumps(inputs.task_info)}).train()  # fmt: skip
    data = write_pairs(tmp_path / "long.jsonl", [("a" * 600 + ":", "a")])
    argv = ["eval", "--model", str(tmp_path / "run" / "model"), "--data", str(data)]
    fails(capsys, argv, f"{data}: prompt 1 has 602 tokens")


def test_the_model_is_saved_before_the_final_evaluation(tmp_path):
    config = pairs_config(tmp_path)
    inputs = prepare_run(config)

    def evaluate(model):
        raise RuntimeError("the evaluation failed")

    trainer = Trainer(config, inputs.model, inputs.tokenizer, inputs.train, evaluate=evaluate)
    with pytest.raises(RuntimeError, match="the evaluation failed"):
        trainer.train()
    run = tmp_path / "run"
    assert (run / "model" / "model.safetensors").is_file()
    assert (run / "checkpoints" / "step-00000002").is_dir()


# ---------------------------------------------------------------------- special-token text


@pytest.mark.parametrize("literal", ["<eos>", "<pad>", "<unk>", "<bos>"])
def test_literal_special_token_text_in_pairs_stays_text(literal):
    tokenizer = char_tokenizer("abcd<>eosupnkb")
    example = encode_example(tokenizer, f"ab{literal}cd", f"c{literal}d")
    specials = set(special_ids(tokenizer))
    assert not specials & {*example.prompt[1:], *example.completion[:-1]}  # BOS, <eos> added
    assert tokenizer.decode(example.completion[:-1]) == f"c{literal}d"
    assert not specials & set(encode_prompt(tokenizer, f"ab{literal}")[1:])


@pytest.mark.parametrize("literal", [END_OF_TEXT, PAD])
def test_literal_special_token_text_in_a_corpus_stays_text(literal):
    tokenizer = train_bpe_tokenizer(["some text to learn from"] * 4, vocab_size=300)
    document = f"one line{literal}and the next line of the same text " * 3
    windows = cut_windows(tokenizer, [document], prompt_tokens=4, completion_tokens=8)
    ids = {i for window in windows for i in window.prompt + window.completion}
    assert not ids & set(special_ids(tokenizer))


def test_a_literal_bkspc_is_no_deletion_when_the_tokenizer_has_the_token(tmp_path):
    data = write_pairs(tmp_path / "bk.jsonl", [("ab<bkspc>:", "c<bkspc>d")] * 4)
    config = pairs_config(tmp_path, backspace=True, train_file=str(data))
    inputs = prepare_run(config)
    Trainer(config, inputs.model, inputs.tokenizer, inputs.train).train()
    folder = str(tmp_path / "run" / "model")  # its tokenizer knows <bkspc> and its characters
    again = prepare_run(pairs_config(tmp_path, model=folder, train_file=str(data),
                                     output_dir=str(tmp_path / "again")))  # fmt: skip
    assert again.tokenizer.unk_token_id not in again.train[0].prompt
    bkspc = again.tokenizer.convert_tokens_to_ids("<bkspc>")
    assert isinstance(bkspc, int) and bkspc != again.tokenizer.unk_token_id
    assert all(bkspc not in e.prompt + e.completion for e in again.train)


def test_a_chat_template_keeps_its_markers_and_reads_the_users_text_as_text():
    tokenizer = char_tokenizer("abcd<>eosupnk")
    tokenizer.chat_template = (
        "{% for m in messages %}<pad>{{ m['content'] }}<eos>{% endfor %}"
        "{% if add_generation_prompt %}<unk>{% endif %}"
    )
    ids = encode_prompt(tokenizer, format_prompt(tokenizer, "a<eos>b", chat_template=True))
    literal = tokenizer("<eos>", add_special_tokens=False, split_special_tokens=True).input_ids
    pad, eos, unk = tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id
    a, b = tokenizer.convert_tokens_to_ids(["a", "b"])
    assert ids == [tokenizer.bos_token_id, pad, a, *literal, b, eos, unk]


# ---------------------------------------------------------------------- what a resume reads


def test_a_resume_after_the_training_data_changed_is_refused(tmp_path, capsys):
    data = write_pairs(tmp_path / "pairs.jsonl", [("ab:", "ba"), ("cd:", "dc")] * 4)
    argv = ["train", "--task", "jsonl", "--train-file", str(data), "--output-dir",
            str(tmp_path / "run"), "--steps", "4", "--save-every", "2", *TINY]  # fmt: skip
    assert main([*argv, "--stop-at", "2"]) == 0
    write_pairs(data, [("ef:", "fe"), ("gh:", "hg")] * 4)  # new characters: new ids
    fails(capsys, [*argv, "--resume", "true"], "the contents of train_file changed")


def test_a_resume_on_a_base_model_replaced_in_place_is_refused(tmp_path, capsys):
    config = pairs_config(tmp_path, output_dir=str(tmp_path / "base"))
    inputs = prepare_run(config)
    Trainer(config, inputs.model, inputs.tokenizer, inputs.train).train()
    base = tmp_path / "base" / "model"
    argv = ["train", "--task", "jsonl", "--train-file", str(tmp_path / "train.jsonl"),
            "--model", str(base), "--output-dir", str(tmp_path / "run"), "--steps", "4",
            "--save-every", "2", "--method", "mle", "--batch-size", "4",
            "--progress", "false"]  # fmt: skip
    assert main([*argv, "--stop-at", "2"]) == 0
    weights = base / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")  # replaced in place
    fails(capsys, [*argv, "--resume", "true"], "the contents of model changed")
