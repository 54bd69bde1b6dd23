"""Writes each frame's pose message as one JSON line, one file per stream, for offline analysis.

Lines are appended, so a restarted daemon continues the same file. Each line is
written to the operating system as it is made: a killed process loses at most the
line it was writing. If a previous run died mid-line, the torn line is ended before
new lines are appended, so it stays a single unparsable line instead of spoiling the
next one; readers should skip lines that do not parse.

The file named by `path` is always the one being written. It is finished after
`segment_s` seconds of writing or before it would pass `segment_bytes`, and renamed
with the local date and time it ended (cam.jsonl -> cam.20250131_142500.jsonl);
the oldest finished files beyond `keep_files` / `keep_bytes` are then deleted
(sinks/retention.py, as the recorder's). Two streams of pose messages make ~130 MB
an hour, so the defaults start a new file every hour or 256 MiB.

A storage error (a full disk) closes the stream's file and pauses its lines with
backoff (sinks/pause.py); the file is reopened, torn line ended, when a retry
succeeds.
"""

from __future__ import annotations

import errno
import re
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from streampose import messages
from streampose.frame import Frame
from streampose.graph import schema
from streampose.runtime.stage import Stage, StageContext
from streampose.sinks.pause import StoragePause
from streampose.sinks.retention import apply_retention, make_room

TEMPLATE_FIELDS = {"stream"}


@dataclass
class _OpenFile:
    file: BinaryIO
    opened: float  # time.monotonic()


class JsonlStage(Stage):
    params: schema.Jsonl

    def __init__(self, stage_id: str, params: schema.Jsonl, context: StageContext):
        super().__init__(stage_id, params, context)
        fields = {name for _, name, _, _ in string.Formatter().parse(params.path) if name is not None}
        if fields - TEMPLATE_FIELDS:
            raise ValueError(f"jsonl {stage_id}: path template {params.path!r} has unknown field(s) "
                             f"{sorted(fields - TEMPLATE_FIELDS)}; allowed: {{stream}}")
        self._output_dir = context.output_dir.resolve()
        self._files: dict[str, _OpenFile] = {}
        self.pause = StoragePause(self)
        for stream in context.streams:  # a bad template fails when the graph is built, not mid-run
            self._path(stream)

    def _path(self, stream: str) -> Path:
        path = (self._output_dir / self.params.path.format(stream=stream)).resolve()
        if not path.is_relative_to(self._output_dir):
            raise ValueError(f"jsonl {self.id}: path template {self.params.path!r} gives {path} for stream "
                             f"{stream!r}, outside the output directory {self._output_dir}")
        return path

    def process(self, frames: list[Frame]) -> None:
        for frame in frames:
            if self.pause.skip(frame.stream):
                continue
            line = messages.encoded_pose(frame, "json") + b"\n"
            try:
                self._write(frame.stream, line)
            except OSError as error:
                self._close(frame.stream)
                if error.errno in (errno.ENOSPC, errno.EDQUOT) and (self.params.keep_files or self.params.keep_bytes):
                    make_room(self._finished(frame.stream), self.log, frame.stream)
                self.pause.failed(frame.stream, f"lines to {self._path(frame.stream)}", error)
            else:
                self.pause.succeeded(frame.stream)

    def _write(self, stream: str, line: bytes) -> None:
        current = self._files.get(stream)
        if current is not None and self._segment_ends(current, len(line)):
            self._finish(stream)
            current = None
        if current is None:
            current = self._open(stream)
        view = memoryview(line)
        while view:  # an unbuffered write may be short; the next one then raises (a full disk)
            view = view[current.file.write(view):]

    def _segment_ends(self, current: _OpenFile, adding: int) -> bool:
        size = current.file.tell()
        return size > 0 and ((0 < self.params.segment_bytes < size + adding)
                             or 0 < self.params.segment_s <= time.monotonic() - current.opened)

    def _open(self, stream: str) -> _OpenFile:
        path = self._path(stream)
        path.parent.mkdir(parents=True, exist_ok=True)
        file = open(path, "a+b", buffering=0)
        try:
            if file.seek(0, 2) > 0:
                file.seek(-1, 2)
                if file.read(1) != b"\n":
                    file.write(b"\n")
        except BaseException:
            file.close()
            raise
        self._files[stream] = current = _OpenFile(file, time.monotonic())
        self.log.info("writing stream %s to %s", stream, path)
        return current

    def _finish(self, stream: str) -> None:
        """Close the stream's file, rename it with the time it ended, apply retention."""
        self._close(stream)
        path = self._path(stream)
        finished = _unique(path.with_name(f"{path.stem}.{time.strftime('%Y%m%d_%H%M%S')}{path.suffix}"))
        path.rename(finished)
        self.log.info("stream %s: finished %s", stream, finished)
        apply_retention(self._finished(stream), self.params.keep_files, self.params.keep_bytes, self.log, stream)

    def _finished(self, stream: str) -> list[Path]:
        """The stream's finished files, oldest first."""
        path = self._path(stream)
        pattern = re.compile(re.escape(path.stem) + r"\.\d{8}_\d{6}(?:-\d+)?" + re.escape(path.suffix))
        files = [p for p in path.parent.glob(f"{path.stem}.*{path.suffix}") if pattern.fullmatch(p.name)]
        return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def _close(self, stream: str) -> None:
        current = self._files.pop(stream, None)
        if current is not None:
            current.file.close()

    def paused_reason(self, stream: str) -> str | None:
        return self.pause.reason(stream)

    def close(self) -> None:
        for stream in list(self._files):
            self._close(stream)


def _unique(path: Path) -> Path:
    unique, n = path, 0
    while unique.exists():
        n += 1
        unique = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return unique
