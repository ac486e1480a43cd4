"""The arithmetic task: generated ``add_or_sub_in_base`` questions, scored by exact match.

Without ``train_file`` the questions are generated (:func:`arithmetic.make_splits`, seeded,
disjoint splits); with it, they are read from JSONL (``{"question", "answer"}`` or
``{"prompt", "completion"}``), and ``valid_file`` gives the validation questions. Its own
noise source is plausible mistakes (a wrong digit of the question's base, a wrong sign);
its forced noise draws answer characters.
"""

from __future__ import annotations

import random
from functools import cached_property

from transformers import PreTrainedTokenizerBase

from ..core.tokenizers import char_tokenizer
from . import arithmetic
from .base import Pair
from .exact_match_task import ExactMatchTask
from .jsonl import read_pair_file


def answer_token_ids(
    tokenizer: PreTrainedTokenizerBase, characters: str = arithmetic.DIGITS + "-"
) -> list[int]:
    """Ids of the single-token characters that can appear in arithmetic answers.

    These are the task's forced-noise candidates: the protocol is "a plausible random answer
    character is forced", never ``<eos>``, ``<bkspc>``, padding or prompt-only characters.
    Characters that are not one token (or are unknown) are left out.
    """
    ids: list[int] = []
    for character in characters:
        encoded = tokenizer(character, add_special_tokens=False).input_ids
        if len(encoded) == 1 and encoded[0] != tokenizer.unk_token_id and encoded[0] not in ids:
            ids.append(int(encoded[0]))
    if not ids:
        raise ValueError(f"no character of {characters!r} is a single token of this tokenizer")
    return ids


class ArithmeticMistakes:
    """Task noise for arithmetic: a plausible wrong character (digit of the base, sign).

    A mistake must differ from the text the correct tokens still write, not only from the
    correct token: under a merging BPE (GPT-2's) the correct token may be a lone space
    before the answer's digits, or hold several characters (``"ad"``). The mistake is a
    character other than the next character of that text (read from the solved question,
    else from the correct token), so its text is never a prefix of the right answer."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id

    def __call__(self, prefix: list[int], correct: int, rng: random.Random) -> int:
        text = self.tokenizer.decode(prefix, skip_special_tokens=True)
        text = text[max(0, text.find("In base")) :]  # after a chat template's own text
        # " =": the separator's space may be the answer's first token (" 12" after "? =")
        question, _, answer_prefix = text.partition(arithmetic.PROMPT_SEPARATOR.rstrip())
        question, shown = question.strip(), answer_prefix.strip()
        expected = self.correct_continuation(question, shown, correct)
        mistake = arithmetic.plausible_mistake(question, shown, expected[:1], rng)
        tokens = self.tokenizer(mistake, add_special_tokens=False).input_ids
        return int(tokens[0])  # one character: one token for any tokenizer with its bytes

    def correct_continuation(self, question: str, shown: str, correct: int) -> str:
        """The answer text the correct tokens write after ``shown`` (the answer so far),
        leading whitespace dropped: ``""`` where the answer should end (``correct`` is
        ``<eos>``, or ``-1`` inside a run of wrong tokens); the solved question's rest where
        the correct token agrees with it (a lone space token writes none of the answer
        itself); else the correct token's own text."""
        if correct in (-1, self.eos_id):
            return ""
        token_text = self.tokenizer.decode([correct]).strip()
        answer = arithmetic.solve(question)
        if answer is not None and answer.startswith(shown):
            rest = answer[len(shown) :]
            if rest.startswith(token_text):
                return rest
        return token_text


class ArithmeticTask(ExactMatchTask):
    """Signed addition and subtraction in bases 2-16 (see :mod:`.arithmetic`)."""

    name = "arithmetic"
    option_names = ("train_file", "valid_file", "n_train", "n_valid", "n_test", "difficulty",
                    "max_completion_tokens", "seed")  # fmt: skip

    @cached_property
    def splits(self) -> dict[str, list[Pair]]:
        """``train``, ``valid`` and ``test`` pairs (prompt = question + separator)."""
        options = self.options
        if options.train_file:
            splits = {"train": read_pair_file(options.train_file), "valid": [], "test": []}
        else:
            questions = arithmetic.make_splits(
                options.n_train, options.n_valid, options.n_test,
                difficulty=options.difficulty, seed=options.seed,
            )  # fmt: skip
            splits = {
                name: [Pair(arithmetic.format_prompt(q.question), q.answer) for q in items]
                for name, items in questions.items()
            }
        if options.valid_file:
            splits["valid"] = read_pair_file(options.valid_file)
        return splits

    def preset_tokenizer(self) -> PreTrainedTokenizerBase:
        """Characters: the task's alphabet, then any other character of the data."""
        alphabet = arithmetic.ALPHABET
        seen = {c for pairs in self.splits.values() for p in pairs for c in p.prompt + p.completion}
        return char_tokenizer(alphabet + "".join(sorted(seen - set(alphabet))))

    def noise_source(self, tokenizer: PreTrainedTokenizerBase) -> ArithmeticMistakes:
        return ArithmeticMistakes(tokenizer)

    def format_prompt(self, text: str) -> str:
        """The question followed by the separator (added once)."""
        separator = arithmetic.PROMPT_SEPARATOR
        return text if text.endswith(separator) else text + separator

    def check_prompt(self, text: str) -> None:
        """A question must state a base the task knows (2-16)."""
        arithmetic.check_stated_base(text)

    def forced_noise_ids(self, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """Answer characters (:func:`answer_token_ids`): digits ``0-9a-f`` and ``-``."""
        return answer_token_ids(tokenizer)

    def test_pairs(self) -> list[Pair]:
        """The generated (or, with ``train_file``, empty) test split of this task's options."""
        if not self.splits["test"]:
            raise ValueError(
                'no test questions: pass --data, a JSONL file of {"question", "answer"} lines'
            )
        return self.splits["test"]
