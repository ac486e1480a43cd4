"""Checkpoints that are either complete and intact or not used at all.

Layout of a run folder::

    checkpoints/step-000200/   model + tokenizer (save_pretrained), training state
                               (state.json + state.safetensors), manifest.json
    checkpoints/latest         name of the newest complete checkpoint (replaced atomically)

Each checkpoint is written into a staging folder (named with the run's id), then renamed:
a crash leaves the previous checkpoint or the new one, never a mixture, and the run
recognises its own stale staging folders later. ``manifest.json`` holds the sha256 of every
file; a checkpoint is used only after its files match it, and one holding non-finite
parameters or optimiser state is never written. Rotation deletes only older checkpoints
this run wrote, after the new one has been read back and verified. Reading a checkpoint
only parses data (:mod:`.state_files`): one from someone else cannot run code.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..storage.files import atomic_write_text, disk_full_error, is_disk_full, sha256_of, share_files
from .run_folder import (
    MANIFEST_FILE,
    RunFolder,
    foreign_files,
    read_manifest,
    remove_written_folder,
)
from .state_files import StateFileError, read_state, write_state

LEGACY_STATE_FILE = "state.pt"  # a pickle, written before format 3; never read
LATEST_FILE = "latest"
CHECKPOINTS = "checkpoints"
FORMAT_VERSION = 3


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used or written (corrupt, incomplete, from another run,
    non-finite)."""


# ---------------------------------------------------------------------- writing folders


def write_manifest(folder: Path, run_id: str | None, **extra: Any) -> None:
    """``manifest.json``: the sha256 of every file below ``folder`` and the writing run."""
    files = {
        path.relative_to(folder).as_posix(): sha256_of(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST_FILE
    }
    manifest = {"format": FORMAT_VERSION, "run_id": run_id, **extra, "files": files}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")


def verify_folder(folder: Path, run_id: str | None = None, missing_ok: bool = False) -> None:
    """Raise ``CheckpointError`` unless every file the manifest lists is there, unchanged
    (and, given ``run_id``, the folder was written by that run); ``missing_ok`` checks only
    the files that are there (a model folder a user trimmed)."""
    manifest = read_manifest(folder)
    if manifest is None:
        raise CheckpointError(
            f"{folder} has no readable {MANIFEST_FILE}: it is incomplete or was not written "
            "by this version of sequencematch"
        )
    if run_id is not None and manifest.get("run_id") != run_id:
        raise CheckpointError(f"{folder} was written by another run (id {manifest.get('run_id')})")
    for name, digest in manifest["files"].items():
        path = folder / name
        if not path.is_file() and missing_ok:
            continue
        if not path.is_file():
            raise CheckpointError(f"{folder} is corrupt or incomplete: {name} is missing")
        if sha256_of(path) != digest:
            raise CheckpointError(
                f"{folder} is corrupt or incomplete: {name} does not match its sha256 in "
                f"{MANIFEST_FILE}"
            )


def _write_folder(
    target: Path, write: Callable[[Path], None], run: RunFolder | None = None
) -> None:
    """Fill a staging folder with ``write`` and rename it to ``target`` (replacing an old
    ``target`` only once the new one is complete); a failure leaves ``target`` as it was.
    With ``run``, staging and retired folders carry the run's id (so leftovers of a crash
    are recognised) and an existing ``target`` must hold only files that run wrote."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if run is not None and target.exists():
        foreign = foreign_files(target, run.run_id)
        if foreign:
            raise CheckpointError(
                f"{target} holds {', '.join(foreign[:3])}, which this run did not write; "
                "move it away (the checkpoint is kept: resume to write the folder again)"
            )
    prefix = run.staging_prefix(target.name) if run is not None else f".{target.name}.tmp-"
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=prefix))
    staging.chmod(0o755)  # mkdtemp makes it private (0700); a model folder is for sharing
    try:
        write(staging)
        if target.exists():
            retired = target.parent / (
                run.retired_name(target.name) if run else f".{target.name}.old-{os.getpid()}"
            )
            os.replace(target, retired)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, Exception) and is_disk_full(error):
            raise disk_full_error(target) from error
        raise


def is_lora_model(model: Any) -> bool:
    """Whether ``model`` is a peft (LoRA) wrapper."""
    return hasattr(model, "peft_config") and callable(getattr(model, "get_base_model", None))


def _save_pretrained(
    model: Any, tokenizer: Any, folder: Path, weights: dict[str, torch.Tensor] | None = None
) -> None:
    """Model and tokenizer files; a LoRA model writes its adapter (the base stays as loaded).
    ``weights``: the full state dict to write (a sharded model's, gathered beforehand)."""
    if is_lora_model(model):
        model.save_pretrained(folder, save_embedding_layers=False)
    elif weights is not None:
        model.save_pretrained(folder, state_dict=weights)
    else:
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    share_files(folder)  # transformers writes the weights private (0600)


def save_model_folder(
    model: Any,
    tokenizer: Any,
    target: Path,
    extra: dict[str, str],
    run: RunFolder | None = None,
    weights: dict[str, torch.Tensor] | None = None,
    step: int | None = None,
) -> None:
    """``save_pretrained`` of model and tokenizer (plus text files and a manifest) into
    ``target``, atomically; with ``run``, recorded as that run's output. A LoRA model is
    saved merged (loadable by ``from_pretrained``), its adapter in ``adapter/``. ``step``,
    the training step of the weights, goes into the manifest (a resumed run reads it to
    tell its final model from an earlier one that a crash put back)."""
    if run is not None and target.parent.resolve() != run.path.resolve():
        run = None  # a folder outside the run folder is no output of the run
    if run is not None:
        run.record(target.name)

    def write(folder: Path) -> None:
        if is_lora_model(model):
            from ..models.lora import merge_and_save  # peft: an optional dependency

            merge_and_save(model, tokenizer, folder)
        else:
            _save_pretrained(model, tokenizer, folder, weights)
        for name, text in extra.items():
            (folder / name).write_text(text)
        trained = {} if step is None else {"step": step}
        write_manifest(folder, run.run_id if run is not None else None, **trained)

    _write_folder(target, write, run)


# ---------------------------------------------------------------------- checkpoints


def first_non_finite(
    model: torch.nn.Module,
    optimizer_state: dict[str, Any],
    weights: dict[str, torch.Tensor] | None = None,
) -> str | None:
    """The name of the first parameter (of ``weights`` when given) or optimiser-state tensor
    holding NaN or inf."""
    named = weights.items() if weights is not None else model.named_parameters()
    for name, parameter in named:
        if parameter.is_floating_point() and not torch.isfinite(parameter.detach()).all():
            return f"parameter {name}"
    for index, slots in optimizer_state.get("state", {}).items():
        for slot, value in slots.items():
            floating = torch.is_tensor(value) and value.is_floating_point()
            if floating and not torch.isfinite(value).all():
                return f"optimiser state {slot} of parameter {index}"
    return None


def save_checkpoint(
    run: RunFolder,
    step: int,
    model: Any,
    tokenizer: Any,
    state: dict[str, Any],
    keep: int,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``checkpoints/step-N`` (model, tokenizer, ``state``, manifest), read it back and
    verify it, point ``latest`` at it, then delete all but the newest ``keep`` checkpoints
    among those this run wrote."""
    folder = run.path / CHECKPOINTS
    name = f"step-{step:08d}"
    target = folder / name
    bad = first_non_finite(model, state.get("optimizer", {}), weights)
    if bad is not None:
        raise CheckpointError(
            f"refusing to write checkpoint {name}: {bad} is not finite; the last good "
            f"checkpoint is {latest_checkpoint(run.path) or 'none yet'}"
        )
    current = read_latest(run.path)
    if target.exists():
        if not run.owns(f"{CHECKPOINTS}/{name}"):
            raise CheckpointError(f"{target} exists and was not written by this run; move it away")
        if name == current:
            raise CheckpointError(f"{target} already exists; refusing to overwrite a checkpoint")
        # a complete folder that a crash left before ``latest`` named it: this run redid it
        _remove_checkpoint(run, target)
    run.record(f"{CHECKPOINTS}/{name}", f"{CHECKPOINTS}/{LATEST_FILE}")

    def write(staging: Path) -> None:
        _save_pretrained(model, tokenizer, staging, weights)
        write_state(staging, {"format": FORMAT_VERSION, "step": step, **state})
        write_manifest(staging, run.run_id, step=step)

    _write_folder(target, write, run)
    verify_folder(target, run.run_id)  # read back: rotation never removes the newest intact one
    try:
        atomic_write_text(folder / LATEST_FILE, name + "\n", tag=run.run_id)
    except OSError as error:
        if is_disk_full(error):
            raise disk_full_error(folder / LATEST_FILE) from error
        raise
    older = sorted(
        path
        for path in _checkpoint_folders(folder)
        if path.name < name and run.owns(f"{CHECKPOINTS}/{path.name}")
    )
    for old in older[: max(0, len(older) - (keep - 1))]:
        _remove_checkpoint(run, old)
    return target


def _remove_checkpoint(run: RunFolder, folder: Path) -> None:
    """Delete a checkpoint this run wrote (files its manifest lists; others stay)."""
    left = remove_written_folder(folder, run.run_id)
    if left:
        print(f"kept {folder} for files this run did not write: {', '.join(left[:3])}")
    else:
        run.forget(f"{CHECKPOINTS}/{folder.name}")


def remove_checkpoints(run: RunFolder) -> list[Path]:
    """Delete every checkpoint this run wrote, and ``latest`` when it wrote it: for a
    finished run whose saved model is all that is wanted (a checkpoint's optimiser state
    is 2-3x the model's size). Files the run did not write stay; returns the checkpoint
    folders kept for them. ``checkpoints/`` itself goes only when this emptied it."""
    folder = run.path / CHECKPOINTS
    removed, left = 0, []
    for path in _checkpoint_folders(folder):
        if run.owns(f"{CHECKPOINTS}/{path.name}"):
            _remove_checkpoint(run, path)
            if path.exists():
                left.append(path)
            else:
                removed += 1
    pointer = f"{CHECKPOINTS}/{LATEST_FILE}"
    if not left and run.owns(pointer):
        (folder / LATEST_FILE).unlink(missing_ok=True)
        run.forget(pointer)
        removed += 1
    if removed:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when nothing else is in it
    return left


def _checkpoint_folders(folder: Path) -> list[Path]:
    """The ``step-*`` folders in ``checkpoints/``, oldest first; a symbolic link is none (it
    may lead out of the run folder: it is never read nor deleted)."""
    return sorted(p for p in folder.glob("step-*") if p.is_dir() and not p.is_symlink())


def read_latest(run_dir: Path) -> str:
    """The checkpoint name ``checkpoints/latest`` holds ("" when missing or empty); anything
    but a checkpoint's name (a path, say) is refused."""
    pointer = run_dir / CHECKPOINTS / LATEST_FILE
    if pointer.is_symlink():
        raise CheckpointError(
            f"{pointer} is a symbolic link, which is never followed; delete it to resume from "
            "the newest intact checkpoint"
        )
    try:
        name = pointer.read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        return ""
    if name and not re.fullmatch(r"step-[0-9]{8,}", name):
        raise CheckpointError(
            f"{pointer} holds {name[:80]!r}, which is not the name of a checkpoint in that "
            "folder (step-NNNNNNNN); delete it to resume from the newest intact checkpoint"
        )
    return name


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``latest`` names, if that folder exists (not verified)."""
    name = read_latest(run_dir)
    target = run_dir / CHECKPOINTS / name
    return target if name and target in _checkpoint_folders(target.parent) else None


def _newest_intact(run: RunFolder, below: str | None = None) -> Path | None:
    """The newest checkpoint of this run (older than ``below``) that verifies."""
    for path in reversed(_checkpoint_folders(run.path / CHECKPOINTS)):
        if below is not None and path.name >= below:
            continue
        try:
            verify_folder(path, run.run_id)
        except CheckpointError:
            continue
        return path
    return None


def find_resume_checkpoint(run: RunFolder) -> tuple[Path | None, str]:
    """The checkpoint to resume this run from, and a note for the user.

    ``latest`` names it; when ``latest`` is missing, empty or names a missing folder, the
    newest checkpoint of this run that verifies. A checkpoint of this run that fails its
    checksums is never skipped silently: it is refused, naming the newest intact one.
    """
    folder = run.path / CHECKPOINTS
    named = read_latest(run.path)
    if named and folder / named in _checkpoint_folders(folder):
        candidates = [folder / named]
        note = ""
    else:
        candidates = [p for p in reversed(_checkpoint_folders(folder)) if _is_ours(p, run)]
        state = f"names {named}, which is missing" if named else "is missing or empty"
        note = f"{folder / LATEST_FILE} {state}"
    for candidate in candidates[:1]:
        try:
            verify_folder(candidate, run.run_id)
        except CheckpointError as error:
            fallback = _newest_intact(run, below=candidate.name)
            advice = (
                f"the newest intact checkpoint is {fallback.name}: move {candidate.name} out "
                "of checkpoints/ to resume from it"
                if fallback is not None
                else "no older checkpoint is intact: start again with --overwrite true"
            )
            raise CheckpointError(f"{error}; it was left untouched, and {advice}") from None
        if note:
            note += f"; resuming from the newest intact checkpoint, {candidate.name}"
        return candidate, note
    return None, note


def _is_ours(path: Path, run: RunFolder) -> bool:
    manifest = read_manifest(path)
    return manifest is not None and manifest.get("run_id") == run.run_id


def load_state(checkpoint: Path) -> dict[str, Any]:
    """Read a checkpoint's training state, refusing a corrupt, unknown or old one clearly
    (an old checkpoint's ``state.pt`` is a pickle: it is never read, since reading it could
    run code)."""
    if (checkpoint / LEGACY_STATE_FILE).exists():
        raise CheckpointError(
            f"checkpoint {checkpoint} was written by an earlier version of sequencematch "
            f"({LEGACY_STATE_FILE}), whose format this version does not read (loading it could "
            "run code); start the run again with --overwrite true, or finish it with the "
            "version that wrote it"
        )
    try:
        state = read_state(checkpoint)
    except StateFileError as error:
        raise CheckpointError(
            f"checkpoint {checkpoint} is corrupt or incomplete ({error}); it was left "
            f"untouched. Delete it (and fix {LATEST_FILE}) to resume from an older one."
        ) from None
    if state.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {checkpoint} has an unknown format; it was written by another "
            "version of this library"
        )
    return state
