"""The arithmetic task's plausible mistakes (its "task" noise source)."""

from __future__ import annotations

import random

from transformers import PreTrainedTokenizerBase

from . import arithmetic


class ArithmeticMistakes:
    """Task noise for arithmetic: a plausible wrong character (digit of the base, sign)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id

    def __call__(self, prefix: list[int], correct: int, rng: random.Random) -> int:
        text = self.tokenizer.decode(prefix, skip_special_tokens=True)
        question, _, answer_prefix = text.partition(arithmetic.PROMPT_SEPARATOR)
        question = question.strip()
        at_end = correct in (-1, self.eos_id)  # the answer should end here
        correct_char = "" if at_end else self.tokenizer.decode([correct])
        mistake = arithmetic.plausible_mistake(question, answer_prefix, correct_char, rng)
        (token,) = self.tokenizer(mistake, add_special_tokens=False).input_ids
        return int(token)
