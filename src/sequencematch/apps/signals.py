"""Ctrl-C and ``SIGTERM`` as the command line takes them: one line, nothing left running.

``SIGTERM`` becomes :class:`Stopped`, a ``KeyboardInterrupt`` as Ctrl-C's is, so that every
``finally`` runs (a demo's workers are stopped, locks are released) and the command ends
with one line instead of a traceback. ``train`` (one process) instead finishes the step it
is in, writes a checkpoint and stops; a second signal stops it at once.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal, as shells do


class Stopped(KeyboardInterrupt):
    """The process was asked to stop by ``signum``; the message says what was kept."""

    def __init__(self, message: str = "", signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum


def _handling(signums: tuple[int, ...], handler: Callable[[int, Any], None]) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; a library caller keeps its own
        return
    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Inside this, ``SIGTERM`` raises :class:`Stopped` (as Ctrl-C raises
    ``KeyboardInterrupt``)."""

    def stop(signum: int, frame: Any) -> None:
        raise Stopped(signum=signum)

    yield from _handling((signal.SIGTERM,), stop)


@contextmanager
def stop_after_the_step(request_stop: Callable[[], None]) -> Iterator[None]:
    """Inside this, the first Ctrl-C or ``SIGTERM`` calls ``request_stop`` (the training
    loop then ends after its step, writing a checkpoint); a second one raises
    :class:`Stopped` at once."""
    asked: list[int] = []

    def stop(signum: int, frame: Any) -> None:
        if asked:
            raise Stopped(signum=signum)
        asked.append(signum)
        request_stop()
        print("stopping after this step, with a checkpoint (again to stop at once)",
              file=sys.stderr, flush=True)  # fmt: skip

    yield from _handling((signal.SIGINT, signal.SIGTERM), stop)


def interrupted_line(command: str, error: KeyboardInterrupt) -> tuple[str, int]:
    """The one line an interrupted command prints, and its exit code."""
    signum = getattr(error, "signum", signal.SIGINT)
    how = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    advice = {
        "train": "what the run did since its last checkpoint is lost: continue it with the "
        "same command and --resume true",
        "demo": "its workers were stopped and the runs that finished are kept: run the same "
        "command with --resume to do the rest",
    }.get(command, "nothing was written")
    line = str(error) or f"stopped by {how}; {advice}"
    return line, EXIT_CODES.get(signum, 130)
