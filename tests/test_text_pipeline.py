"""The text task end to end: configuration, splits, run preparation, evaluation, demo, CLI."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from conftest import boost_logit

from sequencematch.apps.cli import main
from sequencematch.apps.demos.methods import COMPARED_METHODS
from sequencematch.apps.setup import load_trained, prepare_run
from sequencematch.core.examples import encode_example
from sequencematch.evaluation.perplexity import perplexity
from sequencematch.evaluation.text_evaluation import evaluate_text, sample_completions
from sequencematch.evaluation.text_metrics import text_statistics
from sequencematch.models.backspace import add_backspace
from sequencematch.tasks.text_task import text_splits
from sequencematch.training.config import TrainConfig

WORDS = (
    "the",
    "king",
    "queen",
    "night",
    "day",
    "sword",
    "crown",
    "love",
    "death",
    "fair",
    "foul",
    "heart",
    "blood",
    "lord",
    "lady",
    "speak",
    "hear",
    "thou",
    "thee",
    "doth",
    "hath",
    "not",
    "what",
    "where",
    "when",
    "shall",
    "will",
    "is",
    "was",
)


def write_corpus(folder: Path, documents: int = 6, words: int = 500, seed: int = 0) -> Path:
    """A folder of small English-like documents (lines of random words from a fixed list)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(documents):
        lines = [
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))).capitalize() + "."
            for _ in range(words // 7)
        ]
        (folder / f"work{index}.txt").write_text("\n".join(lines) + "\n")
    return folder


def small_config(corpus: Path, out: Path, **changes) -> TrainConfig:
    base = dict(
        task="text", train_file=str(corpus), model="tiny_llama", hidden_size=32, num_layers=1,
        num_heads=2, vocab_size=300, prompt_tokens=8, completion_tokens=12, n_train=40,
        n_valid=8, n_test=8, steps=4, batch_size=4, warmup_steps=1, save_every=0,
        log_every=1, progress=False, method="mle", backspace=True, p_noise=0.1,
        output_dir=str(out),
    )  # fmt: skip
    base.update(changes)
    return TrainConfig(**base)


def test_text_configuration_rules(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    with pytest.raises(ValueError, match="noise_source task needs the task's own mistakes"):
        prepare_run(small_config(corpus, tmp_path / "run", noise_source="task"))
    inputs = prepare_run(small_config(corpus, tmp_path / "run"))
    assert inputs.sample_length == 12  # the completion tokens of a window
    assert inputs.task_info["max_new_tokens"] == 12
    inputs = prepare_run(small_config(corpus, tmp_path / "run", max_new_tokens=7))
    assert inputs.sample_length == 7


def test_a_single_file_is_cut_into_parts_so_every_split_gets_text(tmp_path):
    corpus = write_corpus(tmp_path / "one", documents=1, words=2000)
    splits = text_splits(str(corpus / "work0.txt"))
    assert all(splits[name] for name in ("train", "valid", "test"))
    names = [set(splits[name]) for name in ("train", "valid", "test")]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    original = (corpus / "work0.txt").read_text()
    pieces = {k: v for split in splits.values() for k, v in split.items()}
    rebuilt = "".join(pieces[k] for k in sorted(pieces, key=lambda k: int(k.split("#")[1])))
    assert rebuilt.split() == original.split()


def test_prepare_run_trains_a_bpe_and_cuts_windows(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    inputs = prepare_run(small_config(corpus, tmp_path / "run"))
    assert len(inputs.train) == 40
    tokenizer = inputs.tokenizer
    assert len(tokenizer) <= 300 + 1  # the BPE vocabulary (+ <bkspc> once added)
    for example in inputs.train:  # windows are cut from the token ids: exact lengths
        assert example.prompt[0] == tokenizer.bos_token_id and len(example.prompt) == 1 + 8
        if example.completion[-1] == tokenizer.eos_token_id:  # the window ends its work
            assert 1 <= len(example.completion) - 1 <= 12
        else:  # cut from the middle of a work: no <eos>, the row bootstraps
            assert len(example.completion) == 12
    assert any(e.completion[-1] != tokenizer.eos_token_id for e in inputs.train)
    assert len(inputs.valid_pairs) == 8 and len(inputs.test_pairs) == 8
    held_out = {p for p, _ in inputs.test_pairs}
    assert not held_out & {p for p, _ in inputs.valid_pairs}
    assert inputs.task_info["task"] == "text" and inputs.task_info["completion_tokens"] == 12


def visible_tokens(actions: list[int], bkspc_id: int) -> list[int]:
    """The tokens a trace leaves visible: each ``<bkspc>`` removes the token before it."""
    visible: list[int] = []
    for action in actions:
        if action == bkspc_id:
            visible.pop()
        else:
            visible.append(action)
    return visible


def same_numbers(got: dict[str, float], expected: dict[str, float]) -> bool:
    """Equal keys and values, NaN equal to NaN."""
    return got.keys() == expected.keys() and all(
        (math.isnan(v) and math.isnan(got[k])) or got[k] == pytest.approx(v)
        for k, v in expected.items()
    )


def test_evaluate_text_reports_quality_and_usage(tmp_path):
    """Every number of the text evaluation equals the same number computed from its parts:
    the sampled traces (replayed by hand), the texts, and perplexity of the human
    completions (no <eos> scored: test windows are cut from longer texts)."""
    corpus = write_corpus(tmp_path / "corpus")
    inputs = prepare_run(small_config(corpus, tmp_path / "run"))
    tokenizer, model, pairs = inputs.tokenizer, inputs.model, inputs.test_pairs
    bkspc_id = add_backspace(model, tokenizer)
    boost_logit(model, bkspc_id, 8.0)  # <bkspc> often enough for its numbers to matter
    result = evaluate_text(
        model, tokenizer, pairs, bkspc_id=bkspc_id, max_new_tokens=12, with_mauve=False, seed=3,
    )  # fmt: skip
    assert result.n == 8 and result.mauve is None
    texts, output = sample_completions(
        model, tokenizer, [p for p, _ in pairs], bkspc_id=bkspc_id, max_new_tokens=12, seed=3,
    )  # fmt: skip
    assert texts == result.completions  # seeded
    eos = tokenizer.eos_token_id
    for actions, text in zip(output.actions, result.completions, strict=True):
        visible = [t for t in visible_tokens(actions, bkspc_id) if t != eos]
        assert tokenizer.decode(visible, skip_special_tokens=True) == text
    actions = [a for trace in output.actions for a in trace]
    assert result.bkspc_rate == pytest.approx(actions.count(bkspc_id) / len(actions))
    assert 0.1 < result.bkspc_rate < 0.9
    assert result.mean_actions == pytest.approx(len(actions) / 8)
    ended = [trace[-1] == eos for trace in output.actions]
    assert result.finished_rate == pytest.approx(sum(ended) / 8)
    examples = [encode_example(tokenizer, p, c, final=False) for p, c in pairs]
    expected = perplexity(model, [e.prompt for e in examples], [e.completion for e in examples],
                          vocab_size=len(tokenizer))  # fmt: skip
    assert result.perplexity == pytest.approx(expected, rel=1e-9) and expected > 1.0
    assert same_numbers(result.statistics, text_statistics(result.completions))
    assert same_numbers(result.reference_statistics, text_statistics([c for _, c in pairs]))
    assert result.examples[0] == {"prompt": pairs[0][0], "reference": pairs[0][1],
                                  "completion": result.completions[0]}  # fmt: skip


def test_text_demo_quick_then_generate_and_eval(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus")
    out = tmp_path / "demo"
    code = main(["demo", "--task", "text", "--quick", "--corpus", str(corpus), "--out", str(out),
                 "--progress", "false"])  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["seeds"]) == ["0", "1"]
    for record in results["seeds"].values():
        assert list(record["methods"]) == list(COMPARED_METHODS)
        for entry in record["methods"].values():
            mauve = entry["eval"]["mauve"]
            assert 0.0 <= mauve["mean"] <= 1.0 and len(mauve["scores"]) == 2
            low, high = entry["diversity_interval"]  # NaN where resamples have no 4-word text
            assert low <= high or math.isnan(low) or math.isnan(high)
            assert len(entry["eval"]["completions"]) == len(entry["references"]) == 24
    per_seed = results["paired"]["per_seed"]["0"]["sequencematch-chi2-bkspc vs mle"]
    assert per_seed["mauve"]["method"] == "bootstrap"  # MAUVE recomputed per resample
    assert per_seed["mauve"]["low"] <= per_seed["mauve"]["high"]
    assert per_seed["perplexity"]["method"] == "none"  # no per-prompt values: over seeds only
    over = results["paired"]["over_seeds"]["sequencematch-chi2-bkspc vs offline-chi2-bkspc"]
    assert over["mauve"]["method"] == "t" and over["mauve"]["n"] == 2
    report = (out / "report.md").read_text()
    assert "MAUVE" in report and "sequencematch-chi2-bkspc" in report
    assert "### What the intervals support" in report
    assert (out / "mauve_and_diversity.png").stat().st_size > 0
    model_folder = out / "seed-0" / "sequencematch-chi2-bkspc" / "model"
    assert load_trained(model_folder).task_info["task"] == "text"
    capsys.readouterr()

    assert main(["generate", "--model", str(model_folder), "--prompt", "The king", "--json",
                 "--sample", "--seed", "1"]) == 0  # fmt: skip
    record = json.loads(capsys.readouterr().out)
    assert record["prompt"] == "The king" and isinstance(record["completion"], str)

    assert main(["eval", "--model", str(model_folder), "--data", str(corpus), "--n", "12",
                 "--json", "--no-mauve"]) == 0  # fmt: skip
    record = json.loads(capsys.readouterr().out)
    assert record["n"] == 12 and record["mauve"] is None and record["perplexity"] > 1.0

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": "The king", "completion": " is dead."}) + "\n"
                             for _ in range(3)))  # fmt: skip
    assert main(["eval", "--model", str(model_folder), "--data", str(pairs), "--json",
                 "--no-mauve"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["n"] == 3


def test_text_demo_refuses_arithmetic_flags(tmp_path, capsys):
    code = main(["demo", "--task", "text", "--difficulty", "2", "8", "--out", str(tmp_path)])
    assert code == 2
    assert "--difficulty" in capsys.readouterr().err
