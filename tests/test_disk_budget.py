"""runtime.disk_budget_mb: the output folder kept within one budget, oldest finished files first."""

import os
import threading
import time

from streampose.graph.loader import load_graph
from streampose.runtime.disk_budget import IDLE_S, DiskBudget
from streampose.runtime.pipeline import Pipeline

from conftest import VIDEOS

MIB = 2**20


def write(path, mib: float, age_s: float):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * int(mib * MIB))
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_oldest_finished_files_go_first_until_within_budget(tmp_path):
    oldest = write(tmp_path / "rec" / "cam_1.mp4", 2, age_s=3600)
    older_jsonl = write(tmp_path / "jsonl" / "cam.20261206_100000.jsonl", 1, age_s=1800)
    clip = write(tmp_path / "clips" / "cam_fall.mp4", 1, age_s=900)
    recent = write(tmp_path / "rec" / "cam_2.mp4", 1, age_s=IDLE_S + 60)
    open_file = write(tmp_path / "rec" / "cam_3.mp4", 3, age_s=5)  # being written: never deleted

    freed = DiskBudget(tmp_path, budget_mb=5, stop=threading.Event()).enforce()
    # 8 MiB in all, budget 5: the two oldest (3 MiB) bring it to 5.
    assert freed == 3 * MIB
    assert not oldest.exists() and not older_jsonl.exists()
    assert clip.exists() and recent.exists() and open_file.exists()


def test_files_being_written_are_kept_even_over_budget(tmp_path):
    finished = write(tmp_path / "a.mp4", 1, age_s=IDLE_S + 1)
    writing = [write(tmp_path / f"b{i}.jsonl", 2, age_s=1) for i in range(3)]
    assert DiskBudget(tmp_path, budget_mb=1, stop=threading.Event()).enforce() == MIB
    assert not finished.exists() and all(p.exists() for p in writing)


def test_a_graph_with_a_budget_runs_it_and_one_without_does_not(tmp_path):
    graph = tmp_path / "g.yml"
    graph.write_text(f"sources: [{{id: cam, uri: {VIDEOS / 'fall_room_chair_320x240.mp4'}}}]\n"
                     "stages: [{id: work, type: noop}]\n"
                     "runtime: {metrics: {bind: null}, disk_budget_mb: 1.5}\n")
    assert Pipeline(load_graph(graph), output_dir=tmp_path / "out").disk_budget.budget_bytes == int(1.5 * MIB)
    without = load_graph(graph, ["runtime.disk_budget_mb=0"])
    assert Pipeline(without, output_dir=tmp_path / "out").disk_budget is None
