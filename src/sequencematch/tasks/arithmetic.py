"""Signed addition/subtraction in bases 2..16, in the style of DeepMind's mathematics dataset.

Questions follow the ``add_or_sub_in_base`` module of the DeepMind mathematics dataset, e.g.
``In base 7, what is -135 - 5?`` with answer ``-143``. This is an independent generator (it
does not depend on the ``mathematics_dataset`` package).

Number format (operands and answers): digits ``0-9a-f`` in lower case, no leading zeros, a
leading ``-`` for negatives, ``0`` for zero (never ``-0``). A negative second operand keeps its
sign next to the operator: ``In base 2, what is 101 - -11?``.

Prompt/completion format for language-model training: the prompt is
``question + PROMPT_SEPARATOR`` (see :func:`format_prompt`) and the completion is the answer; the
caller appends the end-of-sequence token. Example: ``"In base 7, what is -135 - 5? = "`` followed
by ``"-143"``.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass

from ..storage.files import atomic_write_text, json_object_line, utf8_lines

DIGITS = "0123456789abcdef"
"""Digit characters; base ``b`` uses the first ``b`` of them."""

MIN_BASE = 2
MAX_BASE = 16

PROMPT_SEPARATOR = " = "
"""Appended to a question to form the prompt; the model then writes the answer."""

DEFAULT_DIFFICULTY: tuple[float, float] = (4.0, 10.0)
"""Default entropy range (in bits) of the pair of operands."""

QUESTION_TEMPLATE = "In base {base}, what is {a} {op} {b}?"
"""Question text; ``a`` and ``b`` are signed numbers written in ``base``, ``op`` is + or -."""

_TEMPLATE_TEXT = "".join(literal for literal, *_ in string.Formatter().parse(QUESTION_TEMPLATE))

ALPHABET = "".join(sorted(set(_TEMPLATE_TEXT + DIGITS + "+-" + PROMPT_SEPARATOR)))
"""Every character that can appear in a generated prompt or answer (for character tokenizers)."""

_BASE_PATTERN = re.compile(r"\s*In base (\d+),")
_QUESTION_PATTERN = re.compile(
    r"\s*In base (\d+), what is (-?[0-9a-f]+) ([+-]) (-?[0-9a-f]+)\?\s*$"
)

# Give up on make_splits after this many duplicate draws in a row (question space exhausted).
_MAX_CONSECUTIVE_DUPLICATES = 10_000

# random.random() carries 53 random bits; wider magnitudes get their low bits from getrandbits.
_FLOAT_BITS = 52


@dataclass(frozen=True)
class ArithmeticQuestion:
    """One question/answer pair; ``answer`` is the exact expected completion."""

    question: str
    answer: str

    @property
    def base(self) -> int:
        """Base the question is posed in (parsed from the question text)."""
        return parse_base(self.question)


def _check_base(base: int) -> None:
    """Raise ValueError unless ``base`` is an int in [MIN_BASE, MAX_BASE]."""
    if isinstance(base, bool) or not isinstance(base, int):
        raise ValueError(f"base must be an int in [{MIN_BASE}, {MAX_BASE}], got {base!r}")
    if not MIN_BASE <= base <= MAX_BASE:
        raise ValueError(f"base must be in [{MIN_BASE}, {MAX_BASE}], got {base}")


def to_base(n: int, base: int) -> str:
    """Write integer ``n`` in ``base``: lower-case digits, no leading zeros, ``-`` if negative."""
    _check_base(base)
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n == 0:
        return "0"
    magnitude = abs(n)
    digits = []
    while magnitude:
        magnitude, digit = divmod(magnitude, base)
        digits.append(DIGITS[digit])
    sign = "-" if n < 0 else ""
    return sign + "".join(reversed(digits))


def from_base(s: str, base: int) -> int:
    """Parse a number written by :func:`to_base` (an optional ``-`` then lower-case digits).

    Leading zeros and ``-0`` are accepted; anything else that is not a digit below ``base``
    (upper case, spaces, ``+``, underscores) raises ValueError.
    """
    _check_base(base)
    body = s[1:] if s.startswith("-") else s
    if not body:
        raise ValueError(f"no digits in {s!r}")
    value = 0
    for char in body:
        digit = DIGITS.find(char)
        if digit < 0 or digit >= base:
            raise ValueError(
                f"invalid digit {char!r} in {s!r} for base {base} "
                f"(valid digits: {DIGITS[:base]!r}, lower case)"
            )
        value = value * base + digit
    return -value if s.startswith("-") else value


def parse_base(question: str) -> int:
    """Extract the base from a question starting ``In base N,`` (ValueError otherwise)."""
    match = _BASE_PATTERN.match(question)
    if match is None:
        raise ValueError(f"question does not start with 'In base N,': {question!r}")
    base = int(match.group(1))
    if not MIN_BASE <= base <= MAX_BASE:
        raise ValueError(f"base {base} out of range [{MIN_BASE}, {MAX_BASE}] in {question!r}")
    return base


def solve(question: str) -> str | None:
    """The answer to a question written by :data:`QUESTION_TEMPLATE` (``to_base`` of the
    result), or ``None`` when ``question`` is not one (another wording, a bad digit)."""
    match = _QUESTION_PATTERN.match(question)
    if match is None:
        return None
    base = int(match.group(1))
    if not MIN_BASE <= base <= MAX_BASE:
        return None
    try:
        a, b = from_base(match.group(2), base), from_base(match.group(4), base)
    except ValueError:
        return None
    return to_base(a + b if match.group(3) == "+" else a - b, base)


def check_stated_base(question: str, where: str = "") -> None:
    """Refuse a question that says ``In base N,`` for a base this task does not have (2-16);
    ``where`` ("file:line N: ") prefixes the message."""
    match = _BASE_PATTERN.match(question)
    if match is not None and not MIN_BASE <= int(match.group(1)) <= MAX_BASE:
        raise ValueError(
            f"{where}base {match.group(1)} is out of range: arithmetic questions are in bases "
            f"{MIN_BASE} to {MAX_BASE} ({question!r})"
        )


def _check_difficulty(difficulty: tuple[float, float]) -> tuple[float, float]:
    """Validate an entropy range ``(lo, hi)`` in bits: finite and 0 <= lo <= hi."""
    lo, hi = (float(x) for x in difficulty)
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo <= hi):
        raise ValueError(f"difficulty must be (lo, hi) with 0 <= lo <= hi, got {difficulty!r}")
    return lo, hi


def _uniform_magnitude(rng: random.Random, bits: float) -> int:
    """Return floor(U * 2**bits) for U uniform in [0, 1), i.e. an int uniform in [0, 2**bits)."""
    low_bits = max(0, math.floor(bits) - _FLOAT_BITS)
    high = math.floor(rng.random() * 2.0 ** (bits - low_bits))
    return (high << low_bits) | rng.getrandbits(low_bits) if low_bits else high


def _format_question(base: int, a: int, op: str, b: int) -> str:
    """Render the question text for ``a op b`` in ``base``."""
    return QUESTION_TEMPLATE.format(base=base, a=to_base(a, base), op=op, b=to_base(b, base))


def generate_question(
    rng: random.Random, difficulty: tuple[float, float] = DEFAULT_DIFFICULTY
) -> ArithmeticQuestion:
    """Draw one question; all randomness comes from ``rng`` (in this order).

    Scheme:
      1. entropy ``e ~ Uniform[lo, hi]`` bits, with ``(lo, hi) = difficulty``;
      2. split ``e`` between the operands: ``u ~ Uniform[0, 1)``, ``bits_a = u * e``,
         ``bits_b = e - bits_a``;
      3. magnitudes ``|a| = floor(U_a * 2**bits_a)``, ``|b| = floor(U_b * 2**bits_b)`` with
         ``U ~ Uniform[0, 1)``, i.e. uniform in ``[0, 2**bits)``; so ``|a|, |b| < 2**hi``;
      4. base uniform in 2..16;
      5. each operand negative with probability 0.5 (zero stays ``0``);
      6. operator ``+`` or ``-`` with probability 0.5 each.
    """
    lo, hi = _check_difficulty(difficulty)
    entropy = rng.uniform(lo, hi)
    bits_a = rng.random() * entropy
    a = _uniform_magnitude(rng, bits_a)
    b = _uniform_magnitude(rng, entropy - bits_a)
    base = rng.randint(MIN_BASE, MAX_BASE)
    if rng.random() < 0.5:
        a = -a
    if rng.random() < 0.5:
        b = -b
    op = rng.choice("+-")
    result = a + b if op == "+" else a - b
    return ArithmeticQuestion(_format_question(base, a, op, b), to_base(result, base))


def _draw_unique(
    rng: random.Random, n: int, difficulty: tuple[float, float], seen: set[str]
) -> list[ArithmeticQuestion]:
    """Draw ``n`` questions whose text is not in ``seen`` (which is updated)."""
    out: list[ArithmeticQuestion] = []
    duplicates = 0
    while len(out) < n:
        item = generate_question(rng, difficulty)
        if item.question in seen:
            duplicates += 1
            if duplicates >= _MAX_CONSECUTIVE_DUPLICATES:
                raise ValueError(
                    f"could not draw {n} new unique questions with difficulty {difficulty} "
                    f"(got {len(out)}); widen the difficulty range or ask for fewer"
                )
            continue
        duplicates = 0
        seen.add(item.question)
        out.append(item)
    return out


def make_splits(
    n_train: int,
    n_valid: int,
    n_test: int,
    difficulty: tuple[float, float] = DEFAULT_DIFFICULTY,
    seed: int = 0,
) -> dict[str, list[ArithmeticQuestion]]:
    """Build ``{"train", "valid", "test"}`` splits with unique question texts across all splits.

    Deterministic for a seed. Test is drawn first, then valid, then train, from one
    ``random.Random(seed)``, so the test split does not depend on ``n_valid``/``n_train`` and the
    valid split does not depend on ``n_train``. Raises ValueError if the difficulty range has too
    few distinct questions.
    """
    for name, n in (("n_train", n_train), ("n_valid", n_valid), ("n_test", n_test)):
        if n < 0:
            raise ValueError(f"{name} must be >= 0, got {n}")
    _check_difficulty(difficulty)
    rng = random.Random(seed)
    seen: set[str] = set()
    test = _draw_unique(rng, n_test, difficulty, seen)
    valid = _draw_unique(rng, n_valid, difficulty, seen)
    train = _draw_unique(rng, n_train, difficulty, seen)
    return {"train": train, "valid": valid, "test": test}


def write_jsonl(questions: Iterable[ArithmeticQuestion], path: str | os.PathLike[str]) -> None:
    """Write ``{"question": ..., "answer": ...}`` lines atomically (temp file + os.replace)."""
    lines = (
        json.dumps({"question": item.question, "answer": item.answer}, ensure_ascii=False) + "\n"
        for item in questions
    )
    atomic_write_text(path, "".join(lines))


def _parse_record(line: str, where: str) -> ArithmeticQuestion:
    """Parse one JSONL line into a question; ``where`` ("file:line") prefixes error messages."""
    record = json_object_line(line, where)
    for key in ("question", "answer"):
        if key not in record:
            raise ValueError(f"{where}: missing key {key!r}")
        if not isinstance(record[key], str):
            raise ValueError(f"{where}: {key!r} must be a string, got {record[key]!r}")
        if not record[key].strip():
            raise ValueError(f"{where}: {key!r} is empty")
    question, answer = record["question"], record["answer"]
    check_stated_base(question, f"{where}: ")
    if _BASE_PATTERN.match(question):
        try:
            from_base(answer.strip(), parse_base(question))
        except ValueError as error:
            message = f"{where}: the answer is no number in the question's base: {error}"
            raise ValueError(message) from None
    return ArithmeticQuestion(question, answer)


def read_jsonl(path: str | os.PathLike[str]) -> list[ArithmeticQuestion]:
    """Read a JSONL file of ``{"question", "answer"}`` objects; blank lines and extra keys are
    ignored. A malformed line (bad JSON, not UTF-8, a missing or empty field, a base outside
    2-16, an answer that is no number of its base) raises ValueError naming the file and the
    line number."""
    return [
        _parse_record(line, f"{os.fspath(path)}:line {lineno}")
        for lineno, line in utf8_lines(path)
        if line.strip()
    ]


def format_prompt(question: str) -> str:
    """Prompt for the model: the question followed by PROMPT_SEPARATOR."""
    return question + PROMPT_SEPARATOR


def score(prediction: str, answer: str) -> bool:
    """Exact match after stripping surrounding whitespace."""
    return prediction.strip() == answer.strip()


def plausible_mistake(
    question: str, answer_prefix: str, correct_char: str, rng: random.Random
) -> str:
    """Return a wrong next answer character that a solver could plausibly write.

    Used as ground-truth noise for noise-augmented training data. ``correct_char`` is the
    right next character, or ``""`` if the answer should end after ``answer_prefix`` (then an
    extra digit is returned). Candidates, chosen uniformly, never equal ``correct_char``:

    * digits valid in the question's base, except ``0`` before the first digit (no leading
      zeros) unless nothing else is possible;
    * ``-`` at the start of the answer when the correct character is not ``-`` (a wrong sign);
      where the correct character is ``-``, any non-zero digit is the wrong-sign mistake.
    """
    if len(correct_char) > 1:
        raise ValueError(f"correct_char must be one character or '', got {correct_char!r}")
    digits = DIGITS[: parse_base(question)]
    before_first_digit = answer_prefix in ("", "-")
    candidates = [d for d in digits if d != correct_char and not (before_first_digit and d == "0")]
    if answer_prefix == "" and correct_char != "-":
        candidates.append("-")
    if not candidates:
        candidates = [d for d in digits if d != correct_char]
    return rng.choice(candidates)
