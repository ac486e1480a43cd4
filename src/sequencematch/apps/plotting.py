"""What the demos share: optional matplotlib plots and a fresh output folder."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def clear_previous_runs(out: Path, methods: Iterable[str]) -> None:
    """Remove the method folders a previous demo left in ``out`` (a demo always trains from
    scratch, and the trainer refuses to start over an existing run), saying so."""
    for name in methods:
        folder = out / name
        if folder.exists():
            print(f"replacing the previous demo run in {folder}", flush=True)
            shutil.rmtree(folder)


def pyplot() -> Any | None:
    """``matplotlib.pyplot`` on the file-only Agg backend, or ``None`` (with a hint) when
    matplotlib is missing, so that a demo still writes its tables without it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return None
    return plt
