"""Writes each frame's pose message as one JSON line, one file per stream, for offline analysis.

Lines are appended, so a restarted daemon continues the same file. Each line is
flushed to the operating system as it is written: a killed process loses at most
the line it was writing. If a previous run died mid-line, the torn line is ended
before new lines are appended, so it stays a single unparsable line instead of
spoiling the next one; readers should skip lines that do not parse.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import BinaryIO

from streampose import messages
from streampose.frame import Frame
from streampose.graph import schema
from streampose.runtime.stage import Stage, StageContext

TEMPLATE_FIELDS = {"stream"}


class JsonlStage(Stage):
    Params = schema.Jsonl

    def __init__(self, stage_id: str, params: schema.Jsonl, context: StageContext):
        super().__init__(stage_id, params, context)
        fields = {name for _, name, _, _ in string.Formatter().parse(params.path) if name is not None}
        if fields - TEMPLATE_FIELDS:
            raise ValueError(f"jsonl {stage_id}: path template {params.path!r} has unknown field(s) "
                             f"{sorted(fields - TEMPLATE_FIELDS)}; allowed: {{stream}}")
        self._output_dir = context.output_dir.resolve()
        self._files: dict[str, BinaryIO] = {}
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
            line = messages.encode(messages.pose_message(frame), "json") + b"\n"
            file = self._files.get(frame.stream) or self._open(frame.stream)
            file.write(line)
            file.flush()

    def _open(self, stream: str) -> BinaryIO:
        path = self._path(stream)
        path.parent.mkdir(parents=True, exist_ok=True)
        file = self._files[stream] = open(path, "a+b")
        if file.tell() > 0:
            file.seek(-1, 2)
            if file.read(1) != b"\n":
                file.write(b"\n")
        self.log.info("writing stream %s to %s", stream, path)
        return file

    def close(self) -> None:
        for file in self._files.values():
            file.close()
        self._files.clear()
