"""The pose demo path as users run it: a graph on a real video, through the CLI."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import av
import cv2
import jsonschema
import numpy as np
from conftest import IMAGES, MODELS, REPO, VIDEOS
from rtsp_server import free_port
from test_publisher import PROBE, wait_subscribed

from streampose import messages
from streampose.client import Subscriber
from streampose.graph.loader import load_graph
from streampose.runtime.pipeline import Pipeline

SQUAT = VIDEOS / "squat_side_view.mp4"  # one person, 322 frames


def pose_graph(tmp_path, port: int, extra_stages: str = "") -> object:
    path = tmp_path / "pose.yml"
    path.write_text(textwrap.dedent(f"""\
        sources: [{{id: squat, uri: {SQUAT}}}]
        stages:
          - {{id: detect, type: detector, model: picodet_s_192_lcnet_pedestrian_ov}}
          - {{id: pose, type: keypoints, model: tinypose_128x96_ov, batch: {{max_size: 4}}}}
          - {{id: publish, type: publisher, bind: "tcp://127.0.0.1:{port}"}}
          - {{id: record, type: recorder, inputs: [pose], path: "{{stream}}.mp4", draw: true}}
          - {{id: raw, type: recorder, inputs: [pose], path: "raw/{{stream}}.mp4", draw: false}}
        runtime: {{metrics: {{bind: null}}}}
        """))
    return path


def test_every_frame_of_a_video_yields_a_pose_message_and_a_drawn_recording(tmp_path):
    port = free_port()
    pipeline = Pipeline(load_graph(pose_graph(tmp_path, port)), model_paths=[MODELS], output_dir=tmp_path / "out")
    schema = messages.message_schema()
    poses = []
    with Subscriber(f"tcp://127.0.0.1:{port}", topics=("pose/", f"status/{PROBE}"), timeout_s=10.0) as subscriber:
        wait_subscribed(pipeline.runners["publish"].stage, subscriber)
        pipeline.start()
        while len(poses) < 322:
            item = subscriber.recv_dict()
            assert item is not None, f"only {len(poses)} messages"
            if item[0] == f"status/{PROBE}":  # a probe still in flight
                continue
            jsonschema.validate(item[1], schema)
            poses.append(item[1])
    assert pipeline.wait(30)
    assert [m["frame"] for m in poses] == list(range(322))
    with_person = [m for m in poses if m["persons"]]
    # He is in view all along; his head is cut off at the top while standing, so
    # allow a few misses but no more.
    assert len(with_person) >= 0.95 * 322
    # Until 9.5 s he squats side-on; then he walks into the camera, cut by the frame.
    for message in (m for m in with_person if m["media_time"] < 9.0):
        person = max(message["persons"], key=lambda p: p["score"])
        keypoints = np.array(person["keypoints"])
        assert keypoints.shape == (17, 3)
        x1, y1, x2, y2 = person["box"]
        confident = keypoints[keypoints[:, 2] > 0.5]
        # Confident keypoints lie in (or near) the person's box, in image pixels.
        assert np.all((confident[:, 0] > x1 - 40) & (confident[:, 0] < x2 + 40)), message["frame"]
        assert np.all((confident[:, 1] > y1 - 40) & (confident[:, 1] < y2 + 40)), message["frame"]

    # The drawn recording differs from the raw one where the skeleton is drawn.
    def frame_at(path, index):
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i == index:
                    return frame.to_ndarray(format="bgr24").astype(np.int16)

    drawn, raw = tmp_path / "out" / "squat.mp4", tmp_path / "out" / "raw" / "squat.mp4"
    for path in (drawn, raw):
        with av.open(str(path)) as container:
            assert sum(1 for _ in container.decode(video=0)) == 322
    index = with_person[100]["frame"]
    difference = np.abs(frame_at(drawn, index) - frame_at(raw, index)).sum(axis=2) > 60
    person = with_person[100]["persons"][0]
    hip = np.array(person["keypoints"][11][:2]).astype(int)
    ys, xs = np.nonzero(difference)
    assert len(xs) > 500, "no skeleton drawn"
    # Drawing happened around the person, not somewhere else.
    assert np.median(np.abs(xs - hip[0])) < 200 and np.median(np.abs(ys - hip[1])) < 300


def test_missing_model_exits_2_naming_stage_and_searched_paths(tmp_path):
    graph = tmp_path / "graph.yml"
    graph.write_text(textwrap.dedent(f"""\
        sources: [{{id: a, uri: {SQUAT}}}]
        stages: [{{id: detect, type: detector, model: picodet_does_not_exist}}]
        runtime: {{metrics: {{bind: null}}}}
        """))
    result = subprocess.run([sys.executable, str(REPO / "run_pipeline.py"), str(graph), "--models", str(tmp_path)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2
    assert "stage 'detect': key 'model'" in result.stderr
    assert "picodet_does_not_exist" in result.stderr
    assert str(tmp_path) in result.stderr  # every searched folder is listed


def test_infer_command_draws_an_image(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "streampose", "infer", str(IMAGES / "hrnet_demo.jpg"),
                             "--graph", str(REPO / "graphs" / "demo.yml"), "-o", str(out),
                             "--models", str(MODELS)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    drawn = cv2.imread(str(out / "hrnet_demo_pose.jpg"))
    original = cv2.imread(str(IMAGES / "hrnet_demo.jpg"))
    assert drawn.shape == original.shape
    assert (np.abs(drawn.astype(int) - original).sum(axis=2) > 60).sum() > 500


def test_relative_model_path_resolves_against_the_graph_file(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "detector").symlink_to(MODELS / "picodet_s_192_lcnet_pedestrian_ov")
    graph = tmp_path / "graph.yml"
    graph.write_text(textwrap.dedent(f"""\
        sources: [{{id: a, uri: {SQUAT}}}]
        stages: [{{id: detect, type: detector, model: ./mine/detector}}]
        runtime: {{metrics: {{bind: null}}}}
        """))
    # The working directory (the repository) has no ./mine: only the graph's folder does.
    pipeline = Pipeline(load_graph(graph), model_paths=[], output_dir=tmp_path / "out")
    assert pipeline.runners["detect"].stage.detector.folder.path == tmp_path / "mine" / "detector"
