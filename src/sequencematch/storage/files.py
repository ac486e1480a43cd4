"""Files that survive crashes and say clearly what is wrong with them.

Writing: a temporary file in the same folder, then an atomic rename; checksums for
manifests; a full disk reported as "no space left on device" whichever library hit it.
Reading: UTF-8 text whose decoding errors name the file and the line.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def atomic_write_text(path: str | os.PathLike[str], text: str, tag: str = "") -> None:
    """Write ``text`` to ``path`` so that a crash leaves either the old file or the new one.

    The temporary file is ``.NAME.TAG…tmp`` beside ``path``: a ``tag`` (e.g. a run id) lets the
    writer recognise its own leftovers after a crash.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.{tag}-" if tag else f".{path.name}."
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    try:
        os.fchmod(handle, new_file_mode())  # mkstemp's files are private (0600)
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def new_file_mode() -> int:
    """The mode an ordinary new file gets here (0666 less the umask; 0644 usually)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def share_files(folder: str | os.PathLike[str]) -> None:
    """Give every file below ``folder`` (written by this process: a model folder, a
    checkpoint) the mode of an ordinary new file; some writers leave theirs private."""
    for file in Path(folder).rglob("*"):
        if file.is_file() and not file.is_symlink():
            file.chmod(new_file_mode())


class OutsideFolderError(ValueError):
    """A path read from a file in a folder (a manifest, a marker) that leads out of it."""


def inside(folder: str | os.PathLike[str], name: object, source: str) -> Path:
    """``folder / name`` for a relative path ``name`` that ``source`` (a file in ``folder``)
    lists; refused unless it stays inside ``folder``: no absolute path, no ``..``, no
    symbolic link leading out. A folder from someone else can name anything in such files."""
    base = Path(folder)
    reason = ""
    if not isinstance(name, str) or not name.strip("./") or "\0" in name:
        reason = "not a path of a file in the folder"
    elif os.path.isabs(name) or ".." in Path(name).parts:
        reason = "an absolute path" if os.path.isabs(name) else "it climbs out with .."
    else:
        real, root = os.path.realpath(base / name), os.path.realpath(base)
        if os.path.commonpath([real, root]) != root or real == root:
            reason = f"a symbolic link to {real}"
    if reason:
        raise OutsideFolderError(
            f"{source} lists {name!r}, which is not inside {base} ({reason}); nothing outside "
            "a folder is read or deleted on its word: remove that entry, or use another folder"
        )
    return base / name


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def content_digest(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, or of a folder's files (their relative paths and
    contents, in sorted order): what a run was trained from, to notice it changed."""
    path = Path(path)
    if not path.is_dir():
        return sha256_of(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_of(file)}\n".encode())
    return digest.hexdigest()


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) is a full disk: ``OSError`` ENOSPC, or the
    wrapped forms of it that ``torch.save`` and ``safetensors`` raise."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(current)
        if "No space left on device" in text or "StorageFull" in text or "os error 28" in text:
            return True
        current = current.__cause__ or current.__context__
    return False


def disk_full_error(where: str | os.PathLike[str]) -> OSError:
    """The one error a full disk becomes, naming what was being written."""
    return OSError(errno.ENOSPC, "no space left on device", os.fspath(where))


def utf8_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each line of a UTF-8 file (a BOM is dropped, line ends
    kept); a byte that is not UTF-8 raises ``ValueError`` naming the file and the line."""
    with open(path, "rb") as stream:
        for number, raw in enumerate(stream, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{os.fspath(path)}: not UTF-8 text at line {number} (byte "
                    f"0x{raw[error.start]:02x} at column {error.start + 1}); save the file as "
                    "UTF-8"
                ) from None


def read_utf8(path: str | os.PathLike[str]) -> str:
    """A whole UTF-8 file (BOM dropped, universal newlines); errors name the file and line."""
    text = "".join(line for _, line in utf8_lines(path))
    return text.replace("\r\n", "\n").replace("\r", "\n")


def parse_json(text: str) -> Any:
    """One JSON value, refusing what ``json.loads`` lets through silently or as a crash: a
    key twice in one object (one value would silently win), nesting too deep to read, and a
    lone surrogate escape (``"\\ud800"``: no character, it breaks every encoder later).
    Malformed JSON raises ``json.JSONDecodeError``, anything else ``ValueError``."""
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys)
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None
    except UnicodeEncodeError:
        raise ValueError(
            "a string holds a lone surrogate escape (such as \\ud800), which is no character; "
            "write the character itself"
        ) from None
    return value


def json_line(line: str, where: str) -> Any:
    """One line of a JSONL file as :func:`parse_json` reads it; every error begins with
    ``where`` (``"file:line N"``)."""
    try:
        return parse_json(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: malformed JSON: {error.msg}") from None
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def json_object_line(line: str, where: str) -> dict[str, Any]:
    """:func:`json_line` that must hold a JSON object (a record with named fields)."""
    record = json_line(line, where)
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    return record


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"the key {key!r} appears twice in one object; keep one")
        found[key] = value
    return found


def model_folder_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be loaded as a saved Hugging Face model with its tokenizer
    (``None`` when it can): a missing folder, no ``config.json``, or no tokenizer files."""
    folder = Path(path)
    if not folder.exists():
        return f"{folder} does not exist"
    if not folder.is_dir():
        return f"{folder} is a file, not a model folder"
    if not (folder / "config.json").is_file():
        return f"{folder} holds no saved model (no config.json)"
    tokenizer_files = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
    if not any((folder / name).is_file() for name in tokenizer_files):
        return (
            f"{folder} has no tokenizer (no tokenizer.json); save the model's tokenizer into it "
            "with tokenizer.save_pretrained"
        )
    for file in sorted(folder.glob("*.json")):  # the loaders' own errors do not name the file
        try:
            json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as error:
            return f"{file} is not valid JSON ({error}); restore it or save the model again"
    return None
