"""JSONL rotation, retention and a full disk, on real files and a real tmpfs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from small_disk import fill, small_disk
from streampose.frame import Frame
from streampose.graph import schema
from streampose.runtime.stage import StageContext
from streampose.sinks.jsonl import JsonlStage

IMAGE = np.zeros((48, 64, 3), np.uint8)


def make_jsonl(out: Path, **params) -> JsonlStage:
    return JsonlStage("log", schema.Jsonl(id="log", type="jsonl", **params), StageContext(out, out, streams=["cam"]))


def frame(index: int) -> Frame:
    return Frame("cam", index, IMAGE, time.time(), index / 10)


def frames_in(path: Path) -> list[int]:
    return [json.loads(line)["frame"] for line in path.read_text().splitlines()]


def test_files_rotate_by_size_and_the_oldest_beyond_keep_files_are_deleted(tmp_path):
    line_bytes = len(_one_line(tmp_path))
    stage = make_jsonl(tmp_path / "out", path="{stream}.jsonl", segment_bytes=3 * line_bytes + 10, keep_files=2)
    for index in range(20):
        stage.run([frame(index)])
    stage.close()

    current = tmp_path / "out" / "cam.jsonl"
    finished = sorted(p for p in (tmp_path / "out").glob("cam.*.jsonl"))
    assert len(finished) == 2
    kept = [frames_in(p) for p in sorted(finished, key=lambda p: p.stat().st_mtime_ns)] + [frames_in(current)]
    assert all(len(lines) <= 3 for lines in kept)
    assert sum(kept, []) == list(range(20 - sum(map(len, kept)), 20))  # the newest frames, in order


def _one_line(tmp_path: Path) -> bytes:
    """A line as the stage writes it, newline included (the lines of frame(i) differ by a few bytes)."""
    stage = make_jsonl(tmp_path / "probe")
    stage.run([frame(10)])
    stage.close()
    return (tmp_path / "probe" / "jsonl" / "cam.jsonl").read_bytes()


def test_a_full_disk_pauses_the_lines_and_they_resume_on_a_fresh_line(tmp_path):
    with small_disk(tmp_path / "disk") as disk:
        stage = make_jsonl(disk, path="{stream}.jsonl")
        stage.run([frame(0)])
        filler = fill(disk)
        index = 1
        while stage.pause.reason("cam") is None:
            stage.run([frame(index)])
            index += 1
        assert "No space left on device" in stage.pause.reason("cam")
        filler.unlink()
        deadline = time.monotonic() + 30
        while stage.pause.reason("cam") is not None:
            assert time.monotonic() < deadline, "lines did not resume"
            stage.run([frame(index)])
            index += 1
        stage.close()
        lines = (disk / "cam.jsonl").read_bytes().splitlines()
        parsed = []
        for line in lines:
            try:
                parsed.append(json.loads(line)["frame"])
            except ValueError:  # at most the line torn by the full disk
                pass
        assert len(lines) - len(parsed) <= 1
        assert parsed[0] == 0 and parsed[-1] == index - 1
