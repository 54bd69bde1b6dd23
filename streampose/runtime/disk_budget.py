"""One disk budget for everything the sinks write under the output folder.

Each sink's own retention (`keep_files`, `keep_bytes`) counts one stream's files of one
sink. A box left alone also needs a ceiling on the whole folder: recordings, clips and
their sidecars, rotated JSONL, of every stream. Every CHECK_EVERY_S the folder is
measured; while it is over `runtime.disk_budget_mb`, its oldest finished files are
deleted, oldest first. A file written to in the last IDLE_S seconds counts as being
written (recordings flush at least every 60 s, `flush_s` <= 60; JSONL every frame) and is
never deleted, so the budget cannot cut a file under a sink's feet.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

log = logging.getLogger("streampose.disk_budget")

CHECK_EVERY_S = 10.0
IDLE_S = 120.0


def files_over_budget(folder: Path, budget_bytes: int, now: float) -> list[Path]:
    """The oldest finished files under `folder` whose deletion brings it within
    `budget_bytes`, oldest first (as many as there are, if that is not enough)."""
    files = []
    for path in folder.rglob("*"):
        try:
            stat = path.stat()
        except FileNotFoundError:  # deleted by a sink's own retention meanwhile
            continue
        if path.is_file():
            files.append((stat.st_mtime, stat.st_size, path))
    excess = sum(size for _, size, _ in files) - budget_bytes
    chosen = []
    for mtime, size, path in sorted(files):
        if excess <= 0:
            break
        if now - mtime >= IDLE_S:
            chosen.append(path)
            excess -= size
    return chosen


class DiskBudget:
    """Keeps `folder` within `budget_mb` from a thread of its own, until `stop` is set."""

    def __init__(self, folder: Path, budget_mb: float, stop: threading.Event):
        self.folder, self.budget_bytes, self._stop = folder, int(budget_mb * 2**20), stop
        self._thread = threading.Thread(target=self._run, name="disk-budget", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def enforce(self) -> int:
        """One pass; returns the bytes deleted."""
        freed = 0
        for path in files_over_budget(self.folder, self.budget_bytes, time.time()):
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            freed += size
            log.info("deleted %s (%.1f MiB): %s is over runtime.disk_budget_mb %.0f", path, size / 2**20,
                     self.folder, self.budget_bytes / 2**20)
        return freed

    def _run(self) -> None:
        while not self._stop.wait(CHECK_EVERY_S):
            try:
                self.enforce()
            except OSError as error:  # the folder vanished or is unreadable: say so, try again later
                log.error("disk budget of %s: %s", self.folder, error)
