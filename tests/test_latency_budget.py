"""Latency budget instead of fixed batches: a stage takes what is waiting up to its budget, so
a frame never waits long for others to fill a batch, and batches still form under load."""

from __future__ import annotations

from pathlib import Path

from conftest import VIDEOS

from streampose.graph.loader import load_graph
from streampose.runtime.pipeline import Pipeline

TWO_PERSONS = VIDEOS / "mmaction2_demo_skeleton_2persons.mp4"  # 72 frames, 28 fps, 1920x1080


def run(tmp_path: Path, name: str, budget: str, realtime: bool, timeout_ms: float = 1000) -> Pipeline:
    graph = tmp_path / f"{name}.yml"
    batch = f"{{max_size: 8, timeout_ms: {timeout_ms}, latency_budget_ms: {budget}}}"
    graph.write_text(f"""
sources: [{{id: cam, uri: '{TWO_PERSONS}', options: {{realtime: {str(realtime).lower()}}}}}]
stages:
  - {{id: detect, type: detector, model: picodet_s_192_lcnet_pedestrian_ov, batch: {batch}}}
  - {{id: pose, type: keypoints, model: tinypose_128x96_ov, batch: {batch}}}
  - {{id: log, type: jsonl}}
runtime: {{metrics: {{bind: null}}, in_flight: 16}}
""")
    pipeline = Pipeline(load_graph(graph), output_dir=tmp_path / name)
    pipeline.start()
    assert pipeline.wait(120), "the graph did not finish"
    # A live source may drop at the door when the machine is busy; a file keeps every frame.
    processed = pipeline.metrics.count("frames", stage="log")
    assert processed >= 24 if realtime else processed == 72, processed
    return pipeline


def test_a_live_frame_does_not_wait_for_a_batch_to_fill(tmp_path):
    # 28 fps, batches of up to 8 frames and up to 1 s to fill them: without a budget each
    # batch waits about 8 frame times (285 ms) for its last frame.
    fixed = run(tmp_path, "fixed", "null", realtime=True)
    budgeted = run(tmp_path, "budget", "40", realtime=True)
    # The detector waits for frames from the source (the keypoint stage then gets the
    # detector's batches whole, already waiting).
    _, fixed_p95 = fixed.metrics.quantiles("batch_wait", stage="detect")
    assert fixed_p95 > 0.2, fixed_p95
    for stage in ("detect", "pose"):
        _, budget_p95 = budgeted.metrics.quantiles("batch_wait", stage=stage)
        # The budget bounds the wait (less the batch's expected cost); the margin is the
        # scheduling delay of a loaded 2-core machine.
        assert budget_p95 < 0.04 + 0.06, (stage, budget_p95)
    # The typical frame (median: a machine shared with other work stalls the tail of both runs
    # alike, p95 0.58 against 0.68 s once at load 4) gets through in less than half the time.
    fixed_e2e, _ = fixed.metrics.quantiles("e2e_latency", stream="cam")
    budget_e2e, _ = budgeted.metrics.quantiles("e2e_latency", stream="cam")
    assert budget_e2e < fixed_e2e / 2, (budget_e2e, fixed_e2e)


def test_batches_fill_within_the_budget_and_the_budget_caps_them(tmp_path):
    # A file is read as fast as the graph takes it, and each batch may wait up to 1 s for its
    # 8 frames: 8 frames of this clip decode in about 0.1 s. (With timeout_ms 0 a batch takes
    # only what is already waiting, which depends on whether the detector outruns the decoder:
    # 1.47 frames per batch on one machine, 2+ on another.)
    roomy = run(tmp_path, "roomy", "5000", realtime=False)
    tight = run(tmp_path, "tight", "0.01", realtime=False)
    for stage in ("detect", "pose"):
        # A generous budget lets the batch fill: 72 frames in about 9 batches.
        assert roomy.metrics.count("batches", stage=stage) <= 72 / 4, stage
        # A budget below any batch's cost ends the batch at one frame, though the timeout
        # would wait for more.
        assert tight.metrics.count("batches", stage=stage) >= 72 - 7, stage
        # The time per frame of a batch takes the batch size out: a batch of ~8 frames costs
        # several times one frame's share, a batch of one frame exactly its time.
        batch_p50, _ = roomy.metrics.quantiles("stage_latency", stage=stage)
        frame_p50, _ = roomy.metrics.quantiles("stage_frame_latency", stage=stage)
        assert frame_p50 < batch_p50 / 4, (stage, frame_p50, batch_p50)
        assert (tight.metrics.quantiles("stage_frame_latency", stage=stage)
                == tight.metrics.quantiles("stage_latency", stage=stage)), stage
