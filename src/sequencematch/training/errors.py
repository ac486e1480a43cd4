"""The error a training run stops with (its message says what to do next)."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """Training stopped: a non-finite loss, an unreadable metrics file or an unusable set-up."""
