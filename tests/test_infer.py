"""`streampose infer` as users run it: a subprocess, from any folder, on real media and models."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading

import av
import jsonschema
import numpy as np
import pytest
from conftest import MODELS, REPO, VIDEOS
from rtsp_server import free_port

from streampose import messages

SQUAT = VIDEOS / "squat_side_view.mp4"  # one person, 322 frames
SHORT = VIDEOS / "fall_urfd_fall_from_chair_cam0_320x240.mp4"  # 91 frames


def infer_env() -> dict:
    """The environment of an `infer` child: this checkout importable from any folder, models
    found through $STREAMPOSE_MODELS (the search path a user sets)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "STREAMPOSE_MODELS": str(MODELS)}


def infer_command(*args) -> list[str]:
    return [sys.executable, "-m", "streampose", "infer", *map(str, args)]


def run_infer(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(infer_command(*args), capture_output=True, text=True, timeout=300, cwd=cwd, env=infer_env())


def read_lines(path) -> list[dict]:
    schema = messages.message_schema()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for line in lines:
        jsonschema.validate(line, schema)
    return lines


def frame_count(video) -> int:
    with av.open(str(video)) as container:
        return sum(1 for _ in container.decode(video=0))


class Terminal:
    """A pseudo-terminal to give a child as its stderr (tqdm draws only on a terminal); what
    the child writes is collected as it comes, and `wait_for` blocks until a condition holds."""

    def __init__(self):
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # rows, columns
        self.text = ""
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)

    def attached(self, process: subprocess.Popen) -> subprocess.Popen:
        """Call once `process` holds the terminal: the child keeps its end, this side reads."""
        os.close(self.slave)
        self._reader.start()
        return process

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # EIO: the child closed its end
                chunk = b""
            with self._changed:
                self.text += chunk.decode(errors="replace")
                self._changed.notify_all()
            if not chunk:
                return

    def wait_for(self, condition, timeout_s: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: condition(self.text), timeout_s)

    def close(self) -> None:
        self._reader.join(10)
        os.close(self.master)


def test_default_graph_from_another_folder_writes_schema_valid_pose_lines_and_a_video(tmp_path):
    # tmp_path has no graphs/ and no models/: the graph comes from the package, the models
    # from $STREAMPOSE_MODELS. The first 120 of the 322 frames (4.8 s of squats) show all that
    # is checked here; test_pose_graph checks poses over the whole clip.
    result = run_infer(SQUAT, "--jsonl", "poses.jsonl", "--max-frames", 120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    video = tmp_path / "out" / "infer" / "squat_side_view_pose.mp4"
    assert result.stdout.split("\n")[:2] == [f"wrote {video.relative_to(tmp_path)}", "wrote poses.jsonl"]
    assert "\r" not in result.stderr  # no progress bar redraws when stderr is not a terminal

    lines = read_lines(tmp_path / "poses.jsonl")
    assert [m["frame"] for m in lines] == list(range(120))
    assert {m["stream"] for m in lines} == {"squat_side_view"}
    assert set(lines[0]["timings"]) == {"detect", "pose", "track", "smooth"}
    with_person = [m for m in lines if m["persons"]]
    # He is in view all along; his head is cut off at the top while standing, so allow a few misses.
    assert len(with_person) >= 0.95 * 120
    tracked = {p["track_id"] for m in with_person for p in m["persons"]}
    assert -1 not in tracked and len(tracked) <= 3  # the tracker ran, and mostly kept one id
    # Until 9.5 s he squats side-on; then he walks into the camera, cut by the frame.
    for message in (m for m in with_person if m["media_time"] < 9.0):
        person = max(message["persons"], key=lambda p: p["score"])
        keypoints = np.array(person["keypoints"])
        assert keypoints.shape == (17, 3)
        confident = keypoints[keypoints[:, 2] > 0.5]
        assert len(confident) >= 6, message["frame"]
        x1, y1, x2, y2 = person["box"]
        # Confident keypoints lie in (or near) the person's box, in image pixels.
        assert np.all((confident[:, 0] > x1 - 40) & (confident[:, 0] < x2 + 40)), message["frame"]
        assert np.all((confident[:, 1] > y1 - 40) & (confident[:, 1] < y2 + 40)), message["frame"]
    assert frame_count(video) == 120


def test_progress_bar_counts_frames_against_the_video_length_on_a_terminal(tmp_path):
    terminal = Terminal()
    process = terminal.attached(subprocess.Popen(
        infer_command(SHORT, "-o", tmp_path), stdout=subprocess.PIPE, stderr=terminal.slave, text=True,
        cwd=tmp_path, env=infer_env()))
    stdout, _ = process.communicate(timeout=300)
    terminal.close()
    assert process.returncode == 0, terminal.text
    assert "wrote" in stdout
    drawn = terminal.text.rstrip().split("\r")
    assert len(drawn) > 2, terminal.text  # redrawn as it goes, not only at the end
    assert "fall_urfd_fall_from_chair_cam0_320x240: 100%" in drawn[-1]
    assert "91/91" in drawn[-1]


def test_rtsp_stream_until_max_frames(tmp_path, rtsp_server):
    result = run_infer(rtsp_server.url, "--max-frames", 60, "--jsonl", tmp_path / "cam.jsonl", "-o", tmp_path,
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = read_lines(tmp_path / "cam.jsonl")
    assert [m["frame"] for m in lines] == list(range(60))
    assert {(m["stream"], m["width"], m["height"]) for m in lines} == {("cam", 320, 240)}
    # The served video's man walks in at about frame 45 (4.5 s).
    found = [p for m in lines[50:] for p in m["persons"]]
    assert len(found) >= 8 and all(np.array(p["keypoints"]).shape == (17, 3) for p in found)
    assert frame_count(tmp_path / "cam_pose.mp4") == 60


def test_duration_ends_a_stream_with_complete_outputs(tmp_path, rtsp_server):
    result = run_infer(rtsp_server.url, "--duration", 3, "--jsonl", tmp_path / "cam.jsonl", "-o", tmp_path,
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = read_lines(tmp_path / "cam.jsonl")
    assert lines and [m["frame"] for m in lines] == list(range(len(lines)))
    assert frame_count(tmp_path / "cam_pose.mp4") == len(lines)


def test_ctrl_c_on_a_stream_ends_with_complete_outputs(tmp_path, rtsp_server):
    terminal = Terminal()
    process = terminal.attached(subprocess.Popen(
        infer_command(rtsp_server.url, "--jsonl", tmp_path / "cam.jsonl", "-o", tmp_path),
        stdout=subprocess.PIPE, stderr=terminal.slave, text=True, cwd=tmp_path, env=infer_env()))
    try:
        # A live stream has no length: the bar counts frames without a total.
        assert terminal.wait_for(lambda text: re.search(r"cam: (1\d|[2-9]\d) frames", text), timeout_s=120), \
            terminal.text
        process.send_signal(signal.SIGINT)
        stdout, _ = process.communicate(timeout=60)
    finally:
        process.kill()
        terminal.close()
    assert process.returncode == 0, terminal.text
    assert "wrote" in stdout
    lines = read_lines(tmp_path / "cam.jsonl")
    assert len(lines) >= 10
    assert [m["frame"] for m in lines] == list(range(len(lines)))
    # The recording was finished: every processed frame is in a file that decodes.
    assert frame_count(tmp_path / "cam_pose.mp4") == len(lines)


@pytest.mark.parametrize("source, cause", [
    ("no_such_video.mp4", "no_such_video.mp4: no such file or folder; give an image"),
    (f"rtsp://127.0.0.1:{free_port()}/cam", "Connection refused"),
])
def test_an_input_that_cannot_be_read_exits_2_with_one_line_naming_it(tmp_path, source, cause):
    result = run_infer(source, "--max-frames", 1, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("streampose infer: ") and cause in result.stderr
