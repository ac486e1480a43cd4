"""Tests for the base-N addition/subtraction task (sequencematch.tasks.arithmetic)."""

from __future__ import annotations

import json
import random
import re
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from sequencematch.tasks.arithmetic import (
    ALPHABET,
    DIGITS,
    PROMPT_SEPARATOR,
    ArithmeticQuestion,
    format_prompt,
    from_base,
    generate_question,
    make_splits,
    parse_base,
    plausible_mistake,
    read_jsonl,
    score,
    solve,
    to_base,
    write_jsonl,
)
from sequencematch.tasks.arithmetic_task import ArithmeticMistakes
from sequencematch.tasks.text import train_bpe_tokenizer

# Independent parser of the question text (does not use the module's own parsing).
QUESTION_RE = re.compile(r"In base (\d+), what is (-?[0-9a-f]+) ([+-]) (-?[0-9a-f]+)\?")
# Canonical number: "0", or an optional "-" and digits without a leading zero.
CANONICAL_RE = re.compile(r"0|-?[1-9a-f][0-9a-f]*")

bases = st.integers(min_value=2, max_value=16)
ints = st.integers(min_value=-(10**30), max_value=10**30)


def parse_question(question: str) -> tuple[int, int, str, int]:
    """Return (base, a, op, b) by reading the question text back."""
    match = QUESTION_RE.fullmatch(question)
    assert match is not None, f"question not in the expected format: {question!r}"
    base = int(match.group(1))
    return base, from_base(match.group(2), base), match.group(3), from_base(match.group(4), base)


def sample(n: int, difficulty: tuple[float, float], seed: int = 0) -> list[ArithmeticQuestion]:
    rng = random.Random(seed)
    return [generate_question(rng, difficulty) for _ in range(n)]


def operand_strings(question: str) -> tuple[str, str]:
    match = QUESTION_RE.fullmatch(question)
    assert match is not None
    return match.group(2), match.group(4)


# --- to_base / from_base -------------------------------------------------------------------


@given(ints, bases)
def test_to_base_matches_python_int(n: int, base: int) -> None:
    text = to_base(n, base)
    assert int(text, base) == n
    assert CANONICAL_RE.fullmatch(text), text
    assert text == text.lower()


@given(ints, bases)
def test_round_trip(n: int, base: int) -> None:
    assert from_base(to_base(n, base), base) == n


@st.composite
def numerals(draw: st.DrawFn) -> tuple[str, int]:
    base = draw(bases)
    body = draw(st.text(alphabet=DIGITS[:base], min_size=1, max_size=40))
    sign = draw(st.sampled_from(["", "-"]))
    return sign + body, base


@given(numerals())
def test_from_base_matches_python_int(numeral: tuple[str, int]) -> None:
    text, base = numeral
    assert from_base(text, base) == int(text, base)


@pytest.mark.parametrize(
    ("text", "base"),
    [("2", 2), ("g", 16), ("A", 16), ("", 10), ("-", 10), ("1 0", 10), ("+1", 10), ("1_0", 10)],
)
def test_from_base_rejects_invalid(text: str, base: int) -> None:
    with pytest.raises(ValueError):
        from_base(text, base)


@pytest.mark.parametrize("base", [0, 1, 17, 36, -2])
def test_invalid_base(base: int) -> None:
    with pytest.raises(ValueError, match="base"):
        to_base(5, base)
    with pytest.raises(ValueError, match="base"):
        from_base("1", base)


def test_known_values() -> None:
    assert to_base(0, 7) == "0"
    assert to_base(-0, 7) == "0"
    assert to_base(255, 16) == "ff"
    assert to_base(-5, 2) == "-101"
    assert from_base("-143", 7) == -80
    assert from_base("-a", 16) == -10


# --- generated questions -------------------------------------------------------------------


def test_answers_match_python_arithmetic() -> None:
    for item in sample(2000, (0.0, 40.0)):
        base, a, op, b = parse_question(item.question)
        expected = a + b if op == "+" else a - b
        assert from_base(item.answer, base) == expected, item
        assert int(item.answer, base) == expected, item


def test_known_example_format() -> None:
    assert parse_question("In base 7, what is -135 - 5?") == (7, -75, "-", 5)
    assert to_base(-75 - 5, 7) == "-143"


def test_number_format() -> None:
    for item in sample(2000, (0.0, 30.0), seed=1):
        for text in (*operand_strings(item.question), item.answer):
            assert CANONICAL_RE.fullmatch(text), (text, item)
            assert text != "-0"


def test_covers_signs_ops_and_bases() -> None:
    items = sample(3000, (4.0, 10.0), seed=2)
    parsed = [parse_question(item.question) for item in items]
    assert {base for base, *_ in parsed} == set(range(2, 17))
    assert {op for _, _, op, _ in parsed} == {"+", "-"}
    assert any(a < 0 for _, a, _, _ in parsed)
    assert any(b < 0 for *_, b in parsed)
    assert any(item.answer.startswith("-") for item in items)
    assert any(" - -" in item.question for item in items)
    assert any(" + -" in item.question for item in items)


def test_operand_size_respects_entropy_bound() -> None:
    hi = 12.0
    for item in sample(2000, (3.0, hi), seed=3):
        _, a, _, b = parse_question(item.question)
        assert abs(a) < 2**hi and abs(b) < 2**hi
        # bits_a + bits_b = e <= hi, and |x| < 2**bits_x  =>  sum of bit lengths <= hi + 2
        assert abs(a).bit_length() + abs(b).bit_length() <= hi + 2


def test_large_entropy_uses_all_bits() -> None:
    # Beyond float precision the low bits come from getrandbits, so odd magnitudes still occur.
    items = sample(200, (120.0, 120.0), seed=6)
    mags = [abs(x) for item in items for x in parse_question(item.question)[1::2]]
    assert all(m < 2**120 for m in mags)
    assert max(mags) > 2**100
    assert any(m % 2 == 1 for m in mags if m > 2**60)


def test_difficulty_grows_operand_digits() -> None:
    def mean_digits(difficulty: tuple[float, float]) -> float:
        lengths = []
        for item in sample(500, difficulty, seed=4):
            lengths.extend(len(s.lstrip("-")) for s in operand_strings(item.question))
        return statistics.mean(lengths)

    easy, medium, hard = mean_digits((1.0, 3.0)), mean_digits((8.0, 10.0)), mean_digits((20, 24))
    assert easy < medium < hard
    assert hard > 2 * easy


def test_zero_difficulty_gives_zero_operands() -> None:
    for item in sample(100, (0.0, 0.0)):
        _, a, _, b = parse_question(item.question)
        assert a == 0 and b == 0
        assert item.answer == "0"


def test_invalid_difficulty() -> None:
    for bad in [(5.0, 1.0), (-1.0, 2.0), (0.0, float("inf"))]:
        with pytest.raises(ValueError):
            generate_question(random.Random(0), bad)


def test_generate_is_deterministic() -> None:
    assert sample(50, (4.0, 10.0), seed=9) == sample(50, (4.0, 10.0), seed=9)
    assert sample(50, (4.0, 10.0), seed=9) != sample(50, (4.0, 10.0), seed=10)


def test_alphabet_covers_prompts_and_answers() -> None:
    allowed = set(ALPHABET)
    assert len(allowed) == len(ALPHABET)
    assert set(DIGITS) <= allowed
    for item in sample(2000, (0.0, 40.0), seed=5):
        text = format_prompt(item.question) + item.answer
        assert set(text) <= allowed, set(text) - allowed


# --- splits --------------------------------------------------------------------------------


def test_make_splits_deterministic_and_disjoint() -> None:
    splits = make_splits(300, 50, 50, difficulty=(2.0, 8.0), seed=7)
    assert splits == make_splits(300, 50, 50, difficulty=(2.0, 8.0), seed=7)
    assert splits != make_splits(300, 50, 50, difficulty=(2.0, 8.0), seed=8)
    assert [len(splits[k]) for k in ("train", "valid", "test")] == [300, 50, 50]
    texts = [item.question for split in splits.values() for item in split]
    assert len(texts) == len(set(texts))


def test_make_splits_test_independent_of_train_size() -> None:
    small = make_splits(10, 20, 30, seed=3)
    large = make_splits(500, 20, 30, seed=3)
    assert small["test"] == large["test"]
    assert small["valid"] == large["valid"]


def test_make_splits_exhausted_space() -> None:
    # difficulty 0 leaves only "0 + 0" and "0 - 0" in each of 15 bases: 30 distinct questions.
    splits = make_splits(10, 10, 10, difficulty=(0.0, 0.0))
    assert sum(len(s) for s in splits.values()) == 30
    with pytest.raises(ValueError, match="unique"):
        make_splits(11, 10, 10, difficulty=(0.0, 0.0))


# --- JSONL ---------------------------------------------------------------------------------


def test_jsonl_round_trip(tmp_path) -> None:
    items = sample(100, (4.0, 10.0))
    path = tmp_path / "sub" / "data.jsonl"
    write_jsonl(items, path)
    assert read_jsonl(path) == items
    lines = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == {"question": items[0].question, "answer": items[0].answer}
    write_jsonl(items[:3], path)  # overwrite in place
    assert read_jsonl(path) == items[:3]
    assert sorted(p.name for p in path.parent.iterdir()) == ["data.jsonl"]  # no temp files left


def test_write_jsonl_is_atomic_on_failure(tmp_path) -> None:
    path = tmp_path / "data.jsonl"
    items = sample(5, (4.0, 10.0))
    write_jsonl(items, path)
    before = path.read_bytes()

    def failing():
        yield from items[:2]
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_jsonl(failing(), path)
    assert path.read_bytes() == before  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["data.jsonl"]  # temp file removed


def test_read_jsonl_skips_blank_lines_and_extra_keys(tmp_path) -> None:
    path = tmp_path / "user.jsonl"
    path.write_text('{"question": "q", "answer": "a", "id": 3}\n\n', encoding="utf-8")
    assert read_jsonl(path) == [ArithmeticQuestion("q", "a")]


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("{not json", "malformed"),
        ('{"question": "q"}', "'answer'"),
        ('{"answer": "a"}', "'question'"),
        ('["q", "a"]', "object"),
        ('{"question": "q", "answer": 5}', "string"),
    ],
)
def test_read_jsonl_errors_name_file_and_line(tmp_path, bad_line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n' + bad_line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message) as info:
        read_jsonl(path)
    assert "bad.jsonl" in str(info.value)
    assert "line 2" in str(info.value)


# --- prompt, score, parse_base -------------------------------------------------------------


def test_format_prompt() -> None:
    question = "In base 7, what is -135 - 5?"
    assert format_prompt(question) == question + PROMPT_SEPARATOR
    assert format_prompt(question) == "In base 7, what is -135 - 5? = "  # pinned format
    assert format_prompt(question).startswith(question)


def test_score() -> None:
    assert score(" -143\n", "-143")
    assert score("-143", " -143 ")
    assert not score("-142", "-143")
    assert not score("143", "-143")
    assert not score("-1 43", "-143")


def test_parse_base() -> None:
    assert parse_base("In base 7, what is -135 - 5?") == 7
    assert parse_base("In base 16, what is -a + 3f?") == 16
    assert parse_base("In base 2, what is 101 - -11?") == 2
    for item in sample(200, (4.0, 10.0)):
        assert parse_base(item.question) == parse_question(item.question)[0]
        assert item.base == parse_base(item.question)


@pytest.mark.parametrize(
    "question", ["What is 1 + 1?", "In base x, what is 1?", "In base 1, what is 0?", "In base 17,"]
)
def test_parse_base_rejects(question: str) -> None:
    with pytest.raises(ValueError):
        parse_base(question)


# --- plausible mistakes --------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=2**32), st.floats(min_value=0.0, max_value=30.0))
def test_plausible_mistake_is_wrong_and_valid(seed: int, entropy: float) -> None:
    rng = random.Random(seed)
    item = generate_question(rng, (entropy, entropy))
    base = parse_question(item.question)[0]
    for i in range(len(item.answer) + 1):
        prefix, correct = item.answer[:i], item.answer[i : i + 1]
        wrong = plausible_mistake(item.question, prefix, correct, rng)
        assert wrong != correct
        assert len(wrong) == 1
        assert wrong in DIGITS[:base] or wrong == "-"
        if wrong == "-":
            assert prefix == "" and correct != "-"


def test_plausible_mistake_wrong_sign_and_extra_digit() -> None:
    rng = random.Random(0)
    q = "In base 16, what is -a + 3f?"  # answer "35"
    first = {plausible_mistake(q, "", "3", rng) for _ in range(500)}
    assert "-" in first and "3" not in first and "0" not in first
    assert len(first) == 15  # 14 other non-zero digits + the sign
    after_minus = {plausible_mistake(q, "", "-", rng) for _ in range(500)}
    assert after_minus == set(DIGITS[1:16])
    extra = {plausible_mistake(q, "35", "", rng) for _ in range(500)}
    assert extra == set(DIGITS[:16])


def test_plausible_mistake_base_two_edge_cases() -> None:
    rng = random.Random(0)
    q = "In base 2, what is 101 - -11?"  # answer "1000"
    assert plausible_mistake(q, "", "1", rng) == "-"
    assert plausible_mistake(q, "1", "0", rng) == "1"
    assert plausible_mistake(q, "1", "1", rng) == "0"
    # "-" then "1" is correct; the only other option is a (leading) zero.
    assert plausible_mistake(q, "-", "1", rng) == "0"
    assert plausible_mistake(q, "", "-", rng) == "1"


def test_plausible_mistake_rejects_bad_input() -> None:
    rng = random.Random(0)
    with pytest.raises(ValueError):
        plausible_mistake("In base 7, what is 1 + 1?", "", "12", rng)
    with pytest.raises(ValueError):
        plausible_mistake("not a question", "", "1", rng)


def test_task_noise_handles_subword_tokens_of_several_characters():
    """A BPE tokenizer merges answer characters ("ad", "-1"): the mistake is a wrong first
    character, never the correct token."""
    questions = make_splits(300, 10, 10, difficulty=[4.0, 10.0], seed=3)["train"]
    texts = [format_prompt(q.question) + q.answer for q in questions]
    tokenizer = train_bpe_tokenizer(texts * 3, vocab_size=400)
    mistakes = ArithmeticMistakes(tokenizer)
    rng = random.Random(0)
    multi = 0
    for q in questions[:80]:
        prompt = tokenizer(format_prompt(q.question), add_special_tokens=False).input_ids
        answer = tokenizer(q.answer, add_special_tokens=False).input_ids
        for i, correct in enumerate(answer):
            multi += len(tokenizer.decode([correct])) > 1
            wrong = mistakes(prompt + answer[:i], correct, rng)
            assert wrong != correct
            assert not (q.answer[len(tokenizer.decode(answer[:i])) :]).startswith(
                tokenizer.decode([wrong])
            )
    assert multi > 0  # the tokenizer did merge characters of answers


def merging_tokenizer() -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE with one merge, ``1 2 -> 12``: ``" 12"`` is the two
    tokens ``" "`` and ``"12"`` (a lone space token before the answer's digits)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|endoftext|>": 0, **{c: i + 1 for i, c in enumerate(alphabet)}}
    vocab["12"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("1", "2")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>",
                                   clean_up_tokenization_spaces=False)  # fmt: skip


def test_task_noise_after_a_lone_space_token_is_no_prefix_of_the_answer():
    """The correct token is a lone space before the answer "12": the mistake is checked
    against the text still to come ("12"), so it is never "1" (a prefix, not a mistake)."""
    tokenizer = merging_tokenizer()
    prompt = tokenizer("In base 10, what is 5 + 7? =", add_special_tokens=False).input_ids
    answer = tokenizer(" 12", add_special_tokens=False).input_ids
    assert [tokenizer.decode([t]) for t in answer] == [" ", "12"]
    assert solve("In base 10, what is 5 + 7?") == "12"
    mistakes = ArithmeticMistakes(tokenizer)
    for prefix, correct in ((prompt, answer[0]), (prompt + answer[:1], answer[1])):
        wrong = [mistakes(prefix, correct, random.Random(seed)) for seed in range(60)]
        texts = {tokenizer.decode([token]) for token in wrong}
        assert len(texts) > 5 and correct not in wrong
        assert not any("12".startswith(text.strip()) for text in texts), texts


def test_solve_answers_generated_questions_and_refuses_other_text():
    questions = make_splits(50, 5, 5, difficulty=[2.0, 12.0], seed=1)["train"]
    assert all(solve(q.question) == q.answer for q in questions)
    assert solve("In base 7, what is 1 + 9?") is None  # 9 is no base-7 digit
    assert solve("What is 1 + 1?") is None
