"""Run folders: who wrote what, and one writer at a time.

A folder that a command writes into (a training run's ``output_dir``, a demo's ``--out``)
gets a marker file, ``.sequencematch-run.json``, holding the run's id, when it was created and
the outputs it wrote (paths relative to the folder). A command deletes only outputs its marker
lists, never a file it cannot prove it wrote, and refuses, naming the folder, where it would
have to. Folders it writes (checkpoints, models) carry a manifest of their files (see
:mod:`.checkpoints`), so even inside them only listed files are deleted.

An exclusive ``fcntl.flock`` on ``.sequencematch-run.lock`` keeps a second process out while
one writes; the operating system releases it when the process ends, however it ends, so the
lock of a killed process is never stale.

A folder may come from someone else, so nothing in it is trusted to point where it says:
every path a marker or manifest lists must stay inside its folder, the lock file is never
opened through a symbolic link, and a symbolic link where an output goes is refused.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..storage.files import atomic_write_text, disk_full_error, inside, is_disk_full

MARKER_FILE = ".sequencematch-run.json"
LOCK_FILE = ".sequencematch-run.lock"
MARKER_FORMAT = 1
MANIFEST_FILE = "manifest.json"


class RunFolderError(RuntimeError):
    """A folder that cannot be written as asked: in use, holding files no run of this
    library wrote, or holding an earlier run that was neither resumed nor overwritten."""


@dataclass
class RunMarker:
    """The identity of the run that owns a folder and what it wrote there."""

    run_id: str
    created: str
    kind: str  # "train" or "demo"
    outputs: list[str] = field(default_factory=list)
    format: int = MARKER_FORMAT

    @classmethod
    def new(cls, kind: str) -> RunMarker:
        created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        return cls(run_id=uuid.uuid4().hex[:16], created=created, kind=kind)


def read_marker(folder: Path) -> RunMarker | None:
    """The marker of ``folder``, or ``None`` when it has none; an unreadable one, or one
    listing a path outside ``folder``, is refused."""
    path = folder / MARKER_FILE
    if not os.path.lexists(path):
        return None
    try:
        if path.is_symlink():
            raise OSError("it is a symbolic link, not a file")
        values = json.loads(path.read_text(encoding="utf-8"))
        marker = RunMarker(**values)
        if not (isinstance(marker.run_id, str) and isinstance(marker.outputs, list)):
            raise TypeError("unexpected field types")
    except (OSError, ValueError, TypeError, RecursionError) as error:
        raise RunFolderError(
            f"{path} is unreadable ({error}); it records what this library wrote in {folder}: "
            "restore it, or choose another folder"
        ) from None
    for name in marker.outputs:
        inside(folder, name, str(path))
    return marker


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a written folder (``files``: name -> sha256, ``run_id``), or ``None``;
    one listing a path outside ``folder`` is refused."""
    path = folder / MANIFEST_FILE
    try:
        if path.is_symlink():
            return None
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None
    for name in manifest["files"]:
        inside(folder, name, str(path))
    return manifest


def foreign_files(folder: Path, run_id: str) -> list[str]:
    """Files inside a written folder that its manifest (of run ``run_id``) does not list:
    everything when it has no manifest or belongs to another run."""
    manifest = read_manifest(folder)
    listed: set[str] = set()
    if manifest is not None and manifest.get("run_id") == run_id:
        listed = {*manifest["files"], MANIFEST_FILE}
    return sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if not path.is_dir() and path.relative_to(folder).as_posix() not in listed
    )


def remove_written_folder(folder: Path, run_id: str) -> list[str]:
    """Delete the files a manifest of run ``run_id`` lists (then the folder, if empty);
    return the files left because they were not listed."""
    left = foreign_files(folder, run_id)
    manifest = read_manifest(folder) or {"files": {}}
    for name in [*manifest["files"], MANIFEST_FILE]:
        if name not in left:
            (folder / name).unlink(missing_ok=True)
    for directory in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
        with _ignore_not_empty():
            directory.rmdir()
    with _ignore_not_empty():
        folder.rmdir()
    return left


def _strangers_below(path: Path, run_id: str) -> list[str]:
    """What :meth:`RunFolder._strangers_inside` finds in one recorded folder."""
    if (path / MANIFEST_FILE).exists():
        return foreign_files(path, run_id)
    marker = read_marker(path)
    if marker is not None:
        with RunFolder(path, marker.kind, ()) as nested:  # in use by another process: refused
            return nested._strangers_inside()
    found: list[str] = []
    for child in sorted(path.iterdir()):  # a folder of run folders
        if _real_folder(child) and read_marker(child) is not None:
            found += [f"{child.name}/{file}" for file in _strangers_below(child, run_id)]
    return found


def _real_folder(path: Path) -> bool:
    """A folder that is there and not a symbolic link (which may lead anywhere)."""
    return path.is_dir() and not path.is_symlink()


class _ignore_not_empty:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: Any, trace: Any) -> bool:
        return isinstance(error, OSError)


class RunFolder:
    """A folder this process writes into, locked against other processes, with its marker.

    ``kind`` is what writes it (``"train"`` or ``"demo"``); ``outputs`` names the top-level
    entries such a command writes (so that unknown files in their way are noticed).
    """

    def __init__(self, path: str | os.PathLike[str], kind: str, outputs: Iterable[str]) -> None:
        self.path = Path(path)
        self.kind = kind
        self.outputs = tuple(outputs)
        self.marker: RunMarker | None = None
        self._lock: Any = None
        self._created_lock = False

    # ------------------------------------------------------------------ locking

    def lock(self) -> RunFolder:
        """Take the folder's exclusive lock (creating the folder) and read its marker."""
        self.path.mkdir(parents=True, exist_ok=True)
        handle = self._open_lock_file()
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunFolderError(
                f"{self.path} is in use by another sequencematch process (pid {holder}); wait "
                "for it to finish, or choose another folder"
            ) from None
        try:  # the pid only serves the message another process prints
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
        except OSError:
            pass
        self._lock = handle
        try:
            linked = [n for n in self.outputs if (self.path / n).is_symlink()]
            if linked:
                raise RunFolderError(
                    f"{self.path / linked[0]} is a symbolic link; sequencematch writes its "
                    "outputs only inside the folder and never through a link: remove the link, "
                    "or choose another folder"
                )
            self.marker = read_marker(self.path)
            if self.marker is not None and self.marker.kind != self.kind:
                raise RunFolderError(
                    f"{self.path} holds a {self.marker.kind} folder, not a {self.kind} "
                    "folder; choose another folder"
                )
        except BaseException:
            self.release()
            raise
        return self

    def _open_lock_file(self) -> Any:
        """The lock file, opened for writing without following a symbolic link (so that
        a link planted there cannot make this process write elsewhere)."""
        path = self.path / LOCK_FILE
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            descriptor = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)
            self._created_lock = True
        except FileExistsError:
            self._created_lock = False
            try:
                descriptor = os.open(path, flags)
            except OSError as error:
                if error.errno != errno.ELOOP:
                    raise
                raise RunFolderError(
                    f"{path} is a symbolic link; the lock file must be a plain file: remove "
                    "the link (sequencematch creates the file again), or choose another folder"
                ) from None
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(descriptor)
            raise RunFolderError(
                f"{path} is not a plain file of its own (a device, a pipe or a hard link); "
                "remove it (sequencematch creates the file again), or choose another folder"
            )
        return os.fdopen(descriptor, "r+")

    def release(self) -> None:
        """Give the lock back (the operating system does it too when the process ends); a
        lock file created for a folder that was then not claimed is removed again."""
        if self._lock is not None:
            if self._created_lock and self.marker is None:
                (self.path / LOCK_FILE).unlink(missing_ok=True)
            self._lock.close()
            self._lock = None

    def __enter__(self) -> RunFolder:
        return self.lock()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # ------------------------------------------------------------------ ownership

    @property
    def run_id(self) -> str:
        assert self.marker is not None, "claim the folder first"
        return self.marker.run_id

    def owns(self, name: str) -> bool:
        """Whether the marker lists ``name`` (relative path) as written by this run."""
        return self.marker is not None and name in self.marker.outputs

    def record(self, *names: str) -> None:
        """List ``names`` as outputs of this run, before they are written (so that a crash
        in between leaves nothing unaccounted for)."""
        assert self.marker is not None, "claim the folder first"
        new = [name for name in names if name not in self.marker.outputs]
        if new:
            self.marker.outputs = sorted([*self.marker.outputs, *new])
            self._save_marker()

    def forget(self, *names: str) -> None:
        """Drop ``names`` from the outputs (after deleting them)."""
        assert self.marker is not None, "claim the folder first"
        kept = [name for name in self.marker.outputs if name not in names]
        if kept != self.marker.outputs:
            self.marker.outputs = kept
            self._save_marker()

    def existing_outputs(self) -> list[str]:
        """The recorded outputs that are still there."""
        if self.marker is None:
            return []
        return [name for name in self.marker.outputs if (self.path / name).exists()]

    def unproven(self) -> list[str]:
        """Entries in the way of this command's outputs that no marker proves it wrote: an
        output name that exists but is not recorded, or, inside a folder the run writes into,
        an entry that is not recorded. Empty folders and this run's crash leftovers are not
        in the way."""
        found: list[str] = []
        for name in self.outputs:
            path = self.path / name
            if path.is_symlink():
                found.append(name)
                continue
            if not path.exists() or self.owns(name):
                continue
            if not path.is_dir():
                found.append(name)
                continue
            entries = sorted(path.iterdir())
            others = [
                e for e in entries if not self.owns(f"{name}/{e.name}") and not self._stale(e)
            ]
            if len(others) < len(entries):  # a folder of this run's outputs: name each stranger
                found += [f"{name}/{e.name}" for e in others]
            elif others:
                found.append(f"{name}/")
        return found

    def claim_new(self, overwrite: bool, hint: str) -> None:
        """Start a new run here: refuse if files no run of this library wrote are in the way,
        or (without ``overwrite``) if an earlier run's outputs are here; with ``overwrite``,
        delete exactly what the earlier run wrote. ``hint`` finishes the refusal message."""
        earlier = self.existing_outputs()
        if earlier and not overwrite:
            shown = _first_names(earlier)
            raise RunFolderError(f"{self.path} already holds a run ({shown}); {hint}")
        blocking = self.unproven()
        if blocking:
            shown = _first_names(blocking)
            raise RunFolderError(
                f"{self.path} holds {shown}, which no sequencematch run recorded writing; "
                "nothing is deleted that this library cannot prove it wrote: move it away or "
                "choose another folder"
            )
        if earlier:
            self.remove_outputs()
        elif self.marker is not None:
            self.clean_stale()  # the earlier run's leftovers, before its id is forgotten
        self.marker = RunMarker.new(self.kind)
        self._save_marker()

    def remove_outputs(self) -> None:
        """Delete every recorded output (checking first that no recorded folder holds a file
        its manifest does not list, which would be refused), then clean staging leftovers."""
        assert self.marker is not None
        inside = self._strangers_inside()
        if inside:
            shown = _first_names(inside)
            raise RunFolderError(
                f"{self.path} cannot be replaced: {shown} inside it was not written by the "
                "earlier run; move it away first"
            )
        self.clean_stale()
        parents = {(self.path / n).parent for n in self.marker.outputs if "/" in n}
        for name in sorted(self.existing_outputs(), key=lambda n: -n.count("/")):
            path = self.path / name
            if path.is_dir() and (path / MANIFEST_FILE).exists():
                remove_written_folder(path, self.run_id)
            elif path.is_dir():
                self._remove_owned_tree(path)
            else:
                path.unlink()
            self.forget(name)
        for name in self.outputs:  # folders of outputs left empty
            path = self.path / name
            if path.is_dir():
                with _ignore_not_empty():
                    path.rmdir()
        for parent in parents:
            with _ignore_not_empty():
                parent.rmdir()

    def _strangers_inside(self) -> list[str]:
        """Files inside recorded folders that the folder's manifest (or, for a nested run
        folder, its own marker) does not account for, down to the run folders inside
        folders of run folders (a demo's seed folders): all is checked before anything is
        deleted. A nested run folder that another process holds is refused."""
        found: list[str] = []
        for name in self.existing_outputs():
            path = self.path / name
            if _real_folder(path):
                found += [f"{name}/{file}" for file in _strangers_below(path, self.run_id)]
        return found

    def _remove_owned_tree(self, path: Path) -> None:
        """A recorded folder without a manifest (a demo's run folder, TensorBoard logs)."""
        if read_marker(path) is not None:  # a nested run folder: only what its marker lists
            remove_run_folder(path)
            return
        for file in path.glob("events.out.tfevents.*"):  # TensorBoard's own file names
            file.unlink()
        for child in sorted(path.iterdir()):  # a folder of run folders (a demo's seed folder)
            if _real_folder(child) and read_marker(child) is not None:
                self._remove_owned_tree(child)
        with _ignore_not_empty():
            path.rmdir()

    # ------------------------------------------------------------------ crash leftovers

    def staging_prefix(self, name: str) -> str:
        """Prefix of this run's staging folder for ``name`` (see :meth:`clean_stale`)."""
        return f".{name}.tmp-{self.run_id}-"

    def retired_name(self, name: str) -> str:
        return f".{name}.old-{self.run_id}"

    def _stale(self, path: Path) -> bool:
        return self.marker is not None and (
            f".tmp-{self.run_id}-" in path.name
            or f".old-{self.run_id}" in path.name
            or (path.name.startswith(".") and f".{self.run_id}-" in path.name)
        )

    def clean_stale(self) -> list[str]:
        """Remove this run's leftovers of interrupted writes (staging folders, temporary
        files, a replaced folder not yet deleted); the lock proves no writer is alive.
        A retired folder whose replacement never arrived is put back. Returns what was done."""
        if self.marker is None:
            return []
        done: list[str] = []
        parents = [self.path, *(p for p in self.path.iterdir() if _real_folder(p))]
        for parent in parents:
            if not _real_folder(parent):  # a leftover itself, removed or restored above
                continue
            for entry in sorted(parent.iterdir()):
                if not self._stale(entry):
                    continue
                relative = entry.relative_to(self.path).as_posix()
                if ".old-" in entry.name:
                    original = entry.with_name(entry.name[1:].split(".old-")[0])
                    if not original.exists():
                        os.replace(entry, original)
                        done.append(f"restored {relative}")
                        continue
                if _real_folder(entry):
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                done.append(f"removed {relative}")
        return done

    def _save_marker(self) -> None:
        assert self.marker is not None
        path = self.path / MARKER_FILE
        try:
            text = json.dumps(asdict(self.marker), indent=1) + "\n"
            atomic_write_text(path, text, tag=self.marker.run_id)
        except OSError as error:
            if is_disk_full(error):
                raise disk_full_error(path) from error
            raise


def remove_run_folder(path: str | os.PathLike[str]) -> list[str]:
    """Delete a finished run's folder, as far as its marker proves the run wrote it.

    The outputs the marker lists are deleted (inside a written folder, only the files its
    manifest lists; a file it does not list refuses the whole removal, untouched), then the
    marker and the lock, then the folder if nothing else is left. Returns the entries left
    because no run recorded writing them. A folder without a marker is refused: nothing in
    it is proven written by a run.
    """
    folder = Path(path)
    marker = read_marker(folder)
    if marker is None:
        raise RunFolderError(
            f"{folder} has no {MARKER_FILE}, so nothing in it is proven written by a "
            "sequencematch run; nothing was deleted"
        )
    with RunFolder(folder, marker.kind, ()) as run:
        run.remove_outputs()
        (folder / MARKER_FILE).unlink(missing_ok=True)
        (folder / LOCK_FILE).unlink(missing_ok=True)
    left = sorted(entry.name for entry in folder.iterdir())
    if not left:
        folder.rmdir()
    return left


def _first_names(names: list[str]) -> str:
    """Up to four of ``names``, comma-separated, with ``...`` when there are more."""
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
