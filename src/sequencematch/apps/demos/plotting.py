"""Plots are optional: matplotlib when it is installed, a hint when it is not."""

from __future__ import annotations

from pathlib import Path
from typing import Any


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


def save_figure(plt: Any, figure: Any, path: Path) -> Path:
    """Lay out ``figure``, write it to ``path`` (120 dpi) and close it; return ``path``."""
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
