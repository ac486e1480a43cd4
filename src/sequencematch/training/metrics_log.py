"""A run's metrics: ``metrics.jsonl`` (one JSON record a line) and, optionally, TensorBoard.

Rank 0 writes; a resumed run first forgets the lines logged after its checkpoint (they are
redone), dropping a line torn by a crash.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..storage.files import atomic_write_text, disk_full_error, is_disk_full
from .distributed import World
from .errors import TrainingError
from .run_folder import RunFolder

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Appends the records of one run folder (rank 0; other ranks write nothing).

    ``run``: the locked run folder, which records the files the run wrote (set once locked).
    """

    def __init__(self, run_dir: Path, world: World, tensorboard: bool) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.world = world
        self.use_tensorboard = tensorboard
        self.run: RunFolder | None = None
        self._writer: Any = None

    def log(
        self, step: int, window: list[dict[str, Any]], extra: dict[str, float], elapsed: float
    ) -> dict[str, Any]:
        """Write the mean of each numeric metric over ``window`` (the steps since the last
        record) with ``extra`` and the elapsed seconds; return the record."""
        numeric = [k for k, v in window[-1].items() if isinstance(v, float)]
        record: dict[str, Any] = {"step": step, "phase": window[-1]["phase"]}
        for key in numeric:
            values = [m[key] for m in window if key in m]
            record[key] = sum(values) / len(values)
        record |= extra
        record["elapsed_s"] = round(elapsed, 2)
        if self.world.is_main:
            self.append(record)
            if self.use_tensorboard and self.run is not None:
                self.run.record("tensorboard")
            self.tensorboard(step, record)
        return record

    def append(self, record: dict[str, Any]) -> None:
        """One line of ``metrics.jsonl`` (rank 0), written with a single call."""
        if self.run is not None:
            self.run.record(METRICS_FILE)
        try:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as error:
            if is_disk_full(error):
                raise disk_full_error(self.path) from error
            raise

    def tensorboard(self, step: int, record: dict[str, Any]) -> None:
        """The record's numbers as TensorBoard scalars (when ``tensorboard`` is on)."""
        if not self.use_tensorboard:
            return
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                raise TrainingError(
                    "tensorboard logging needs the tensorboard package: pip install tensorboard"
                ) from error
            self._writer = SummaryWriter(str(self.path.parent / "tensorboard"))
        for key, value in record.items():
            if isinstance(value, float):
                self._writer.add_scalar(key, value, step)

    def records(self) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl`` (rank 0; checked when the run was resumed)."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def drop_after(self, step: int) -> None:
        """Forget metrics lines logged after the checkpoint we resume from (they are redone).

        A torn last line (a write cut short by a crash or a full disk) is dropped and
        reported; any other unreadable line stops the run, naming the file and the line."""
        path = self.path
        if not self.world.is_main or not path.exists():
            return
        lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
        kept: list[str] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record_step = json.loads(line)["step"]
                if not isinstance(record_step, int):
                    raise TypeError("step is not an integer")
            except (ValueError, KeyError, TypeError) as error:
                if number == len(lines):  # the last line, without its newline: torn
                    print(f"{path}:line {number}: dropped a torn last line ({len(line)} "
                          "characters; a write was cut short)")  # fmt: skip
                    continue
                raise TrainingError(
                    f"{path}:line {number}: not a metrics record ({error}); repair or delete "
                    "that line to resume"
                ) from None
            if record_step <= step:
                kept.append(line)
        atomic_write_text(path, "".join(line + "\n" for line in kept))

    def close(self) -> None:
        """Flush and close TensorBoard's writer (if one was opened)."""
        if self._writer is not None:
            self._writer.close()
