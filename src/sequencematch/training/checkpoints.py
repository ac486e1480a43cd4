"""Crash-safe checkpoints: each one a folder written under a temporary name, then renamed.

Layout of a run folder::

    checkpoints/step-000200/   model + tokenizer (save_pretrained) and state.pt
    checkpoints/latest         name of the newest complete checkpoint (replaced atomically)

A checkpoint folder is never written in place and never overwritten: a crash leaves
either the previous checkpoint or the new one, not a mixture.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..core.files import atomic_write_text

STATE_FILE = "state.pt"
LATEST_FILE = "latest"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (corrupt, incomplete or from another run)."""


def _write_folder(target: Path, write: Callable[[Path], None]) -> None:
    """Fill a staging folder with ``write`` and rename it to ``target`` (replacing an old
    ``target`` only once the new one is complete); a failure leaves ``target`` as it was."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    staging.chmod(0o755)  # mkdtemp makes it private (0700); a model folder is for sharing
    try:
        write(staging)
        if target.exists():
            retired = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, retired)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _save_pretrained(model: Any, tokenizer: Any, folder: Path) -> None:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def save_model_folder(model: Any, tokenizer: Any, target: Path, extra: dict[str, str]) -> None:
    """``save_pretrained`` of model and tokenizer (plus text files) into ``target``, atomically."""

    def write(folder: Path) -> None:
        _save_pretrained(model, tokenizer, folder)
        for name, text in extra.items():
            (folder / name).write_text(text)

    _write_folder(target, write)


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: Any,
    tokenizer: Any,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write ``checkpoints/step-N`` (model, tokenizer, ``state``), point ``latest`` at it,
    and delete all but the newest ``keep`` checkpoints."""
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    target = folder / name
    pointer = folder / LATEST_FILE
    current = pointer.read_text().strip() if pointer.exists() else None
    if target.exists():
        if name == current:
            raise CheckpointError(f"{target} already exists; refusing to overwrite a checkpoint")
        # a complete folder that a crash left before ``latest`` named it: this run redid it
        shutil.rmtree(target)

    def write(staging: Path) -> None:
        _save_pretrained(model, tokenizer, staging)
        torch.save({"format": FORMAT_VERSION, "step": step, **state}, staging / STATE_FILE)

    _write_folder(target, write)
    atomic_write_text(folder / LATEST_FILE, name + "\n")
    older = sorted(p for p in folder.glob("step-*") if p.is_dir() and p.name < name)
    for old in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or ``None``."""
    folder = run_dir / "checkpoints"
    pointer = folder / LATEST_FILE
    if not pointer.exists():
        return None
    target = folder / pointer.read_text().strip()
    if not target.is_dir():
        raise CheckpointError(
            f"{pointer} names {target.name}, which is missing; the run folder was edited by "
            "hand or copied incompletely. Point latest at an existing step-* folder."
        )
    return target


def load_state(checkpoint: Path) -> dict[str, Any]:
    """Read ``state.pt`` of a checkpoint, refusing a corrupt or unknown one clearly."""
    path = checkpoint / STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any failure means an unusable file
        raise CheckpointError(
            f"checkpoint {checkpoint} is corrupt or incomplete ({type(error).__name__}: "
            f"{error}); it was left untouched. Delete it (and fix {LATEST_FILE}) to resume "
            "from an older one."
        ) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {checkpoint} has an unknown format; it was written by another "
            "version of this library"
        )
    return state
