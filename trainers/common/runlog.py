"""A training run's log: JSON Lines, one record per line, appended as the run goes.

Each record has `kind` ("train": a stretch of steps; "eval": a validation; others as a trainer
likes), `time` (seconds since the epoch, float) and the trainer's numbers (step, epoch, loss,
lr, metrics...). Appending means a resumed run continues the same file. `python -m
trainers.common.plot LOG` draws it.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path


class RunLog:
    """Appends records to `path` (created with its folder), flushed at each write."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, kind: str, **values) -> dict:
        record = {"kind": kind, "time": round(time.time(), 3), **{k: _plain(v) for k, v in values.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        return record

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_log(path: Path) -> list[dict]:
    """The records of a run log, in order. A line cut short by a crash ends the list."""
    records = []
    with Path(path).open(encoding="utf-8") as file:
        for line in file:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


def _plain(value):
    """numpy scalars -> Python numbers; NaN/inf -> None (JSON has neither)."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
