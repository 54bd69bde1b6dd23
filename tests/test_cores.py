"""Engines sized to the machine: the core plan, every batch size compiled before the first
frame, and the compiled-model cache."""

from __future__ import annotations

import os
import textwrap
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import MODELS, VIDEOS

from streampose.engines import load_engine
from streampose.graph.loader import load_graph
from streampose.models.folder import find_model
from streampose.runtime.cores import plan_cores
from streampose.runtime.pipeline import Pipeline

TWO_PERSONS = VIDEOS / "mmaction2_demo_skeleton_2persons.mp4"
CROWD = VIDEOS / "crowd_walking_overhead.mp4"


def graph_file(tmp_path: Path, stages: str, runtime: str = "{metrics: {bind: null}}") -> Path:
    path = tmp_path / "graph.yml"
    path.write_text(f"sources: [{{id: cam, uri: '{TWO_PERSONS}'}}]\nstages:\n"
                    f"{textwrap.indent(textwrap.dedent(stages).strip(), '  ')}\nruntime: {runtime}\n")
    return path


def test_cores_are_divided_among_the_network_stages(tmp_path):
    graph = load_graph(graph_file(tmp_path, """
        - {id: detect, type: detector, model: picodet_s_192_pedestrian}
        - {id: pose, type: keypoints, model: tinypose_128x96_ov, threads: 3}
        - {id: hands, type: keypoints, model: tinypose_128x96_ov}
        - {id: lift, type: lift3d}
        - {id: gpu_pose, type: keypoints, model: tinypose_128x96_ov, device: gpu}
        - {id: log, type: jsonl}
        """)).spec
    plan = plan_cores(graph, cores=8)
    # Four CPU network stages share 8 cores: 2 each; an explicit `threads` wins; the GPU stage
    # and the sink get none.
    assert plan.engine_threads == {"detect": 2, "pose": 3, "hands": 2, "lift": 2}
    # A keypoint stage's work grows with the persons: it may run as many batches at once as its
    # threads fit the cores, unless its threads are set.
    assert plan.parallel_runs == {"detect": 1, "pose": 1, "hands": 4, "lift": 1}
    assert plan.decoder_threads == 1
    two = plan_cores(graph, cores=2)
    assert (two.engine_threads, two.parallel_runs["hands"]) == ({"detect": 1, "pose": 3, "hands": 1, "lift": 1}, 2)
    many = plan_cores(graph, cores=64)
    assert (many.engine_threads, many.parallel_runs["hands"]) == ({"detect": 16, "pose": 3, "hands": 16,
                                                                  "lift": 16}, 4)
    # OpenCV calls run in their stage's thread: its own pool's spinning workers cost more CPU
    # than they save.
    assert plan.opencv_threads == 1


def test_every_batch_size_is_compiled_before_the_first_frame(tmp_path):
    cache = tmp_path / "engine_cache"
    path = graph_file(tmp_path, """
        - {id: detect, type: detector, model: picodet_s_192_lcnet_pedestrian_ov, batch: {max_size: 3}}
        - {id: pose, type: keypoints, model: tinypose_128x96_ov, max_persons: 4, batch: {max_size: 2}}
        - {id: log, type: jsonl}
        """, runtime=f"{{metrics: {{bind: null}}, in_flight: 6, engine_cache_dir: '{cache}'}}")
    cv2.setNumThreads(2)
    pipeline = Pipeline(load_graph(path), output_dir=tmp_path / "out")
    assert cv2.getNumThreads() == 1  # the plan applied, process-wide
    detector = pipeline.runners["detect"].stage.detector.engine
    pose = pipeline.runners["pose"].stage.estimator.engine
    # The detector runs any batch 1..max_size; the keypoint stage power-of-two runs of at most
    # max_size x max_persons = 8 crops.
    assert detector.compiled_batches == [1, 2, 3]
    assert pose.compiled_batches == [1, 2, 4, 8]
    pipeline.start()
    assert pipeline.wait(120)
    assert pipeline.metrics.count("frames", stage="log") == 72
    # Nothing was compiled mid-run, and the compiled networks went to the configured cache.
    assert detector.compiled_batches == [1, 2, 3]
    assert pose.compiled_batches == [1, 2, 4, 8]
    assert any((cache / "ov_cache").iterdir())


def _single_core_threads(names: set[str], stop: threading.Event) -> dict[str, str]:
    """Polls the affinity of this process's threads named `names` until `stop`: those ever
    allowed fewer cores than the process, with the cores they were allowed."""
    process = os.sched_getaffinity(0)
    found = {}
    while not stop.wait(0.02):
        for thread in threading.enumerate():
            if thread.name in names and thread.native_id is not None:
                try:
                    allowed = os.sched_getaffinity(thread.native_id)
                except OSError:  # ended meanwhile
                    continue
                if allowed != process:
                    found[thread.name] = sorted(allowed)
    return found


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning shows only with two cores or more")
def test_inference_threads_are_not_pinned_to_cores(tmp_path):
    # OpenVINO's default pinned both engines' threads of this graph to core 0 (3 runs of 3 on
    # the 2-core machine): the detector and the keypoint stage time-sliced one core.
    path = graph_file(tmp_path, """
        - {id: detect, type: detector, model: picodet_s_192_pedestrian}
        - {id: pose, type: keypoints, model: tinypose_128x96_ov}
        - {id: log, type: jsonl}
        """)
    pipeline = Pipeline(load_graph(path), output_dir=tmp_path / "out")
    stop, result = threading.Event(), {}
    watcher = threading.Thread(target=lambda: result.update(_single_core_threads({"stage-detect", "stage-pose"},
                                                                                 stop)))
    watcher.start()
    pipeline.start()
    try:
        assert pipeline.wait(120)
    finally:
        stop.set()
        watcher.join()
    assert pipeline.metrics.count("frames", stage="log") == 72
    assert result == {}


def test_a_crowd_runs_its_crops_as_parallel_runs_that_agree_with_one_run(tmp_path):
    from streampose.stages.keypoints import PARALLEL_MIN_CROPS, PoseEstimator

    capture = cv2.VideoCapture(str(CROWD))
    ok, image = capture.read()
    assert ok
    # Boxes over the whole frame in a grid: as many crops as the split needs.
    rows, cols = 2, PARALLEL_MIN_CROPS // 2 + 1
    h, w = image.shape[0] / rows, image.shape[1] / cols
    boxes = np.array([[c * w, r * h, (c + 1) * w, (r + 1) * h] for r in range(rows) for c in range(cols)], np.float32)
    folder = find_model("tinypose_128x96_ov", [MODELS])
    estimated = {}
    for parallel in (1, 2):
        engine = load_engine(folder, engine="openvino", threads=1, max_batch=16, parallel=parallel,
                             cache_dir=tmp_path)
        estimator = PoseEstimator(folder, engine, 0.3, True, False)
        calls = []
        run_parallel = engine.run_parallel
        engine.run_parallel = lambda feeds: calls.append([len(f["image"]) for f in feeds]) or run_parallel(feeds)
        estimated[parallel] = estimator.estimate([image], np.zeros(len(boxes), int), boxes)
        # 10 crops: one run of 8 and one of 2; at 2 runs at once, about half each: 4 + 4 + 2.
        assert calls == ([[8, 2]] if parallel == 1 else [[4, 4, 2]]), calls
    # Batch sizes 4 and 8 round differently in the last digits only.
    np.testing.assert_allclose(estimated[2][0], estimated[1][0], atol=0.05)
