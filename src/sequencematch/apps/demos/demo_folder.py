"""A demo's output folder: claimed for one demo, and replaced only as the user allows."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ...training.run_folder import RunFolder

DEMO_FILES = ("results.json", "report.md", "accuracy_vs_noise.png", "mauve_and_diversity.png")
"""Files a demo writes beside its method folders."""


def clear_previous_runs(
    out: Path, methods: Iterable[str], overwrite: bool = False, files: Iterable[str] = DEMO_FILES
) -> None:
    """Make ``out`` ready for a new demo (a demo always trains from scratch).

    ``out`` is marked as a demo folder listing what the demo writes there. An earlier demo's
    outputs are replaced only with ``overwrite``, and then only the files it recorded
    writing (inside each method folder, only what that run wrote); a file no demo wrote
    that is in the way (``report.md``, a method folder) stops the demo, untouched."""
    with RunFolder(out, "demo", (*files, *methods)) as folder:
        claim_demo_folder(folder, overwrite)


def claim_demo_folder(folder: RunFolder, overwrite: bool = False) -> None:
    """:func:`clear_previous_runs` in a demo folder this process has locked."""
    earlier = bool(folder.existing_outputs())
    folder.claim_new(
        overwrite,
        "pass --overwrite to replace it (only files that demo wrote are deleted), or "
        "choose another --out",
    )
    if earlier:
        print(f"replacing the previous demo run in {folder.path}", flush=True)
    folder.record(*folder.outputs)
