"""Retention of a sink's finished files: the oldest go first, beyond a count or a total size.

The recorder and the JSONL writer share it, with the same parameter meanings:
`keep_files` (0 = any number) and `keep_bytes` (0 = any size) count the finished
files of one stream; files still being written are not passed in and never deleted.
"""

from __future__ import annotations

import logging
from pathlib import Path


def apply_retention(files: list[Path], keep_files: int, keep_bytes: int, log: logging.Logger,
                    stream: str) -> None:
    """Delete the oldest of `files` (oldest first) beyond `keep_files` / `keep_bytes`; the last is always kept."""
    if not keep_files and not keep_bytes:
        return
    sizes = [_size(p) for p in files]
    total, count = sum(sizes), len(files)
    for path, size in zip(files[:-1], sizes):
        if not ((keep_files and count > keep_files) or (keep_bytes and total > keep_bytes)):
            break
        path.unlink(missing_ok=True)
        log.info("stream %s: deleted %s (retention)", stream, path)
        count -= 1
        total -= size


def make_room(files: list[Path], log: logging.Logger, stream: str) -> bool:
    """On a full disk: delete the oldest of `files` (oldest first) unless it is the last; True if one went."""
    if len(files) < 2:
        return False
    size = _size(files[0])
    files[0].unlink(missing_ok=True)
    log.warning("stream %s: deleted %s (%.1f MiB) to make room on the full disk", stream, files[0], size / 2**20)
    return True


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
