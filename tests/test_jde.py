"""The JDE stage (FairMOT / JDE exports): a tiny joint detection-embedding network, built with
Paddle and exported as PaddleDetection exports FairMOT (scripts/make_tiny_jde.py), runs on a
synthetic video of coloured rectangles through the real engines, LetterBoxResize
pre-processing and JDE association; the association itself is checked on hand-made
detections where appearance, overlap and the Kalman gate each decide."""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import yaml

from conftest import MODELS, REPO, FailOnce, run_in_runner
from streampose.frame import Frame, StreamEvent
from streampose.graph import schema
from streampose.graph.loader import load_graph
from streampose.models.folder import load_model_folder
from streampose.runtime.pipeline import Pipeline
from streampose.runtime.stage import StageContext
from streampose.stages.detector import DetectorConfigError, DetectorStage
from streampose.stages.jde import JdeStage
from streampose.tracking.association import iou_matrix
from streampose.tracking.jde import (EMBEDDING_WEIGHT, JdeConfigError, JdeSettings, JdeTracker, embedding_distance,
                                     publishable, unit)
from streampose.tracking.kalman import GATE_CHI2_95
from streampose.tracking.track import Observations
from streampose.vision.preprocess import prepare_images

_spec = importlib.util.spec_from_file_location("make_tiny_jde", REPO / "scripts" / "make_tiny_jde.py")
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

CONTEXT = StageContext(graph_dir=Path("."), output_dir=Path("."), model_paths=[MODELS])

# ----------------------------------------------------------------- the synthetic video

FPS, FRAME_COUNT, WIDTH, HEIGHT = 30, 130, 320, 240
BACKGROUND = 30
PANEL = (200, 200, 200)           # BGR; no palette colour: hides what is behind it
PANEL_FRAMES = range(95, 105)     # the panel covers the blue rectangle in these frames
PANEL_BOX = (40, 60, 150, 170)
RED, GREEN, BLUE, YELLOW, MAGENTA = 0, 1, 2, 3, 4   # palette indices


def rectangles(index: int) -> dict[str, tuple[int, tuple[int, int, int, int]]]:
    """name -> (palette index, box x1, y1, x2, y2 in pixels, exclusive), back to front.

    Red (36x64) runs right and leaves the frame at frame 77, crossing in front of the larger
    blue (48x72) running left on an overlapping lane at frames ~35-52; blue's edges stay in
    sight, so its box stays whole. A wide yellow bar (wider than vertical_ratio allows) and a
    small magenta square (smaller than min_box_area) stand still and must never be published."""
    red_x = 30 + 4 * index
    blue_x = 290 - 2 * index
    return {
        "yellow": (YELLOW, (200, 190, 280, 220)),
        "magenta": (MAGENTA, (20, 200, 30, 212)),
        "blue": (BLUE, (blue_x - 24, 82, blue_x + 24, 154)),
        "red": (RED, (red_x - 18, 68, red_x + 18, 132)),
    }


def visible(index: int) -> dict[str, np.ndarray]:
    """The rectangles that can be seen in frame `index`, clipped to the frame."""
    seen = {}
    for name, (_, box) in rectangles(index).items():
        clipped = np.clip(np.array(box, np.float64), 0, [WIDTH, HEIGHT, WIDTH, HEIGHT])
        if clipped[2] > clipped[0] and not (name == "blue" and index in PANEL_FRAMES):
            seen[name] = clipped
    return seen


def render(index: int) -> np.ndarray:
    image = np.full((HEIGHT, WIDTH, 3), BACKGROUND, np.uint8)
    for colour, (x1, y1, x2, y2) in rectangles(index).values():
        cv2.rectangle(image, (x1, y1), (x2 - 1, y2 - 1), tuple(int(c) for c in tiny.PALETTE[colour][::-1]), -1)
    if index in PANEL_FRAMES:
        x1, y1, x2, y2 = PANEL_BOX
        cv2.rectangle(image, (x1, y1), (x2 - 1, y2 - 1), PANEL, -1)
    return image


@pytest.fixture(scope="module")
def tiny_jde(tmp_path_factory) -> Path:
    """The tiny FairMOT-like export, built in its own process (Paddle must be told to write the
    older program format before it is imported)."""
    folder = tmp_path_factory.mktemp("models") / "tiny_fairmot"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_tiny_jde.py"), str(folder)], check=True,
                   capture_output=True, timeout=120)
    return folder


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """The synthetic video as an H.264 MP4."""
    path = tmp_path_factory.mktemp("video") / "rectangles.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"crf": "18"}
        for index in range(FRAME_COUNT):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(render(index), format="bgr24")))
        container.mux(stream.encode())
    return path


def jde_stage(model: Path, **params) -> JdeStage:
    return JdeStage("jde", schema.JdeDetector(id="jde", type="jde", model=str(model), **params), CONTEXT)


def decoded(path: Path) -> list[Frame]:
    with av.open(str(path)) as container:
        return [Frame("cam", i, f.to_ndarray(format="bgr24"), float(f.time), float(f.time))
                for i, f in enumerate(container.decode(video=0))]


# ----------------------------------------------------------------- the whole path

def test_graph_keeps_ids_through_a_crossing_and_ends_the_one_that_leaves(tiny_jde, clip, tmp_path):
    """file -> jde -> jsonl, threaded: each rectangle keeps one id through the crossing and
    the panel, boxes land on the rectangles in frame pixels (through the letterbox and back),
    filtered shapes never appear, and the id of the rectangle that left is ended once, a
    track_buffer (1 s) after it was last seen."""
    graph = tmp_path / "graph.yml"
    graph.write_text(textwrap.dedent(f"""
        sources:
          - {{id: cam, uri: {clip}}}
        stages:
          - {{id: jde, type: jde, model: {tiny_jde}}}
          - {{id: log, type: jsonl, path: "{{stream}}.jsonl"}}
        runtime: {{metrics: {{bind: null}}}}
    """))
    pipeline = Pipeline(load_graph(graph), model_paths=[MODELS], output_dir=tmp_path / "out")
    pipeline.start()
    assert pipeline.wait(120), "graph did not finish"
    messages = [json.loads(line) for line in (tmp_path / "out" / "cam.jsonl").read_text().splitlines()]
    assert len(messages) == FRAME_COUNT

    ids_of: dict[str, set[int]] = {"red": set(), "blue": set()}
    seen_in: dict[str, list[int]] = {"red": [], "blue": []}
    ended = []
    for message in messages:
        index = message["frame"]
        truth = visible(index)
        for person in message["persons"]:
            assert person["track_id"] >= 1
            names = list(truth)
            overlap = iou_matrix(np.array([person["box"]]), np.array([truth[n] for n in names]))[0]
            best = names[int(overlap.argmax())]
            assert overlap.max() > 0.85, (index, person["box"], truth)
            ids_of[best].add(person["track_id"])
            seen_in[best].append(index)
        ended += [(index, message["media_time"], track_id) for track_id in message["ended_tracks"]]

    assert len(ids_of["red"]) == 1 and len(ids_of["blue"]) == 1 and ids_of["red"] != ids_of["blue"]
    # Confirmed at their second detection (min_hits 2), then on every frame they can be seen.
    assert seen_in["blue"] == [i for i in range(1, FRAME_COUNT) if i not in PANEL_FRAMES]
    assert seen_in["red"] == [i for i in range(1, FRAME_COUNT) if "red" in visible(i)]
    (red_id,) = ids_of["red"]
    assert [track_id for _, _, track_id in ended] == [red_id]
    last_seen = messages[seen_in["red"][-1]]["media_time"]
    assert 1.0 < ended[0][1] - last_seen <= 1.0 + 1.5 / FPS


def test_openvino_and_paddle_engines_agree(tiny_jde, clip):
    """The same export through both engines, over the crossing: the same detections and
    embeddings, so the same tracks."""
    frames = decoded(clip)[34:50]
    results = {}
    for engine in ("openvino", "paddle"):
        stage = jde_stage(tiny_jde, engine=engine)
        assert stage.network.engine.name == engine
        found = [stage.network.detect(frame.image) for frame in frames]
        stage.close()
        tracker = JdeTracker(stage.settings)
        updates = [tracker.update(f, frame.media_time) for f, frame in zip(found, frames)]
        results[engine] = found, [(u.rows.tolist(), u.track_ids.tolist()) for u in updates]
    for ov_found, pd_found in zip(results["openvino"][0], results["paddle"][0]):
        assert len(ov_found) == len(pd_found) == len(tiny.PALETTE)      # one candidate per colour
        assert (ov_found.scores > 0.4).sum() == 4
        np.testing.assert_allclose(ov_found.boxes, pd_found.boxes, atol=1e-3)
        # Means over the whole image in float32, summed in different orders by the two engines.
        np.testing.assert_allclose(ov_found.scores, pd_found.scores, atol=1e-4)
        np.testing.assert_allclose(ov_found.embeddings, pd_found.embeddings, atol=1e-3)
    assert results["openvino"][1] == results["paddle"][1]
    assert results["openvino"][1][-1][1] == [1, 2, 3, 4]   # red, blue and the two filtered shapes


def test_network_embeddings_tell_colours_apart_wherever_they_are(tiny_jde):
    """The tiny network's contract: a box per colour in frame pixels, the same colour anywhere
    gives the same embedding, different colours distant ones."""
    stage = jde_stage(tiny_jde)
    first, second = np.full((2, HEIGHT, WIDTH, 3), BACKGROUND, np.uint8)
    for image, boxes in ((first, [(10, 20, 50, 100), (200, 30, 260, 130)]),
                         (second, [(230, 120, 270, 200), (60, 100, 120, 200)])):
        for colour, (x1, y1, x2, y2) in zip((RED, GREEN), boxes):
            cv2.rectangle(image, (x1, y1), (x2 - 1, y2 - 1), tuple(int(c) for c in tiny.PALETTE[colour][::-1]), -1)
    found = [stage.network.detect(image) for image in (first, second)]
    stage.close()
    present = [f.scores > 0.4 for f in found]
    assert [p.sum() for p in present] == [2, 2]
    np.testing.assert_allclose(found[0].boxes[present[0]], [(10, 20, 50, 100), (200, 30, 260, 130)], atol=1)
    np.testing.assert_allclose(found[1].boxes[present[1]], [(230, 120, 270, 200), (60, 100, 120, 200)], atol=1)
    distance = embedding_distance(unit(found[0].embeddings[present[0]]), unit(found[1].embeddings[present[1]]),
                                  "cosine")
    assert np.all(np.diag(distance) < 0.01)
    assert np.all(distance[~np.eye(2, dtype=bool)] > 1.0)


def test_new_segment_resets_tracks_silently_and_ids_keep_counting(tiny_jde):
    stage = jde_stage(tiny_jde)
    def run(index: int, time: float, segment: int = 0) -> Frame:
        frame = Frame("cam", index, render(index), time, time, segment=segment)
        stage.run([frame])
        return frame
    first = [run(i, i / FPS) for i in range(3)]
    before = set(first[-1].persons.track_ids.tolist())
    assert len(before) == 2
    stage.stream_event(StreamEvent("cam", "opened", 1))
    after = [run(i, i / FPS, segment=1) for i in range(3)]
    assert all(not frame.ended_tracks for frame in first + after)
    assert min(after[-1].persons.track_ids) > max(before)
    later = run(3, 1.0, segment=1)
    # Media time stepping back (a clock reset) is a new timeline: the tracks go silently.
    backwards = [run(4 + i, i / FPS, segment=1) for i in range(3)]
    assert not later.ended_tracks and all(not frame.ended_tracks for frame in backwards)
    assert len(backwards[-1].persons) == 2 and min(backwards[-1].persons.track_ids) > max(later.persons.track_ids)
    stage.close()


def test_a_batch_retried_after_an_engine_fault_tracks_as_one_run_would(tiny_jde):
    """The network fails on the last frame of a batch, after the others ran: the runner's
    frame-by-frame retry must not feed the trackers those frames twice (the first would even
    run media time backwards and restart every track)."""
    results = []
    for fault in (False, True):
        stage = jde_stage(tiny_jde, batch={"max_size": 4, "timeout_ms": 1000, "latency_budget_ms": None})
        # Batches of frames 0-3, 4-7, 8-11: run 8 is frame 7's.
        injected = FailOnce(stage.network.engine, on_run=8) if fault else None
        frames = [Frame("cam", i, render(i), i / FPS, i / FPS) for i in range(12)]
        metrics = run_in_runner(stage, frames)
        assert metrics.count("errors") == 0
        assert injected is None or injected.runs == 12 + 1 + 3   # frames 4-6 ran again in the retry
        results.append([(f.persons.track_ids.tolist(), f.persons.boxes, f.ended_tracks) for f in frames])
    clean, retried = results
    assert clean[-1][0] == [1, 2]
    for (clean_ids, clean_boxes, clean_ended), (ids, boxes, ended) in zip(clean, retried):
        assert ids == clean_ids and ended == clean_ended == []
        np.testing.assert_allclose(boxes, clean_boxes, atol=1e-3)


# ----------------------------------------------------------------- pre-processing

def test_letterbox_resize_is_paddledetection_s(tiny_jde):
    """LetterBoxResize: one factor, INTER_AREA, grey borders centred (the odd pixel at the
    bottom / right), im_shape the resized size without borders, scale_factor the factor."""
    ops = load_model_folder(tiny_jde).config.preprocess
    image = np.random.default_rng(1).integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8)
    batch = prepare_images([image], ops, "RGB", tiny.INPUT_SIZE)
    factor = 320 / 240
    assert batch.tensor.shape == (1, 3, 320, 576)
    np.testing.assert_allclose(batch.im_shape, [[320, 427]])
    np.testing.assert_allclose(batch.scale_factor, [[factor, factor]], rtol=1e-6)
    grey = 128 / 255
    # (576 - 427) / 2 = 74.5: 74 grey columns on the left, 75 on the right.
    assert np.all(batch.tensor[0, :, :, :74] == np.float32(grey))
    assert np.all(batch.tensor[0, :, :, 501:] == np.float32(grey))
    inside = cv2.resize(image, (427, 320), interpolation=cv2.INTER_AREA)[..., ::-1].transpose(2, 0, 1) / 255
    np.testing.assert_allclose(batch.tensor[0, :, :, 74:501], inside, atol=1e-6)

    tall = prepare_images([image[:, :60]], ops, "RGB", tiny.INPUT_SIZE)       # 240x60 -> 320x80
    np.testing.assert_allclose(tall.im_shape, [[320, 80]])
    assert np.all(tall.tensor[0, :, :, :248] == np.float32(grey))
    assert np.all(tall.tensor[0, :, :, 328:] == np.float32(grey))
    wide = prepare_images([image[:50]], ops, "RGB", tiny.INPUT_SIZE)          # 50x320 -> 90x576
    np.testing.assert_allclose(wide.im_shape, [[90, 576]])
    assert np.all(wide.tensor[0, :, :115] == np.float32(grey))
    assert np.all(wide.tensor[0, :, 205:] == np.float32(grey))


# ----------------------------------------------------------------- configuration errors

def _variant(tiny_jde: Path, tmp_path: Path, edit) -> Path:
    folder = tmp_path / "variant"
    shutil.copytree(tiny_jde, folder)
    cfg = yaml.safe_load((folder / "infer_cfg.yml").read_text())
    edit(cfg)
    (folder / "infer_cfg.yml").write_text(yaml.safe_dump(cfg))
    return folder


@pytest.mark.parametrize("edit, message", [
    (lambda cfg: cfg.pop("tracker"), "key 'tracker': missing"),
    (lambda cfg: cfg["tracker"].update(metric_type="manhattan"),
     "key 'tracker.metric_type': expected euclidean or cosine, got 'manhattan'"),
    (lambda cfg: cfg["tracker"].update(conf_thres=1.5), "key 'tracker.conf_thres': expected a score in [0, 1]"),
    (lambda cfg: cfg["tracker"].update(track_buffer="30"), "key 'tracker.track_buffer'"),
    (lambda cfg: cfg["tracker"].update(use_byte=True), "key 'tracker.use_byte'"),
    (lambda cfg: cfg["tracker"].update(confthres=0.4), "key 'tracker.confthres': not a JDETracker setting"),
])
def test_a_missing_or_wrong_tracker_section_is_a_clear_error(tiny_jde, tmp_path, edit, message):
    folder = _variant(tiny_jde, tmp_path, edit)
    with pytest.raises(JdeConfigError) as caught:
        jde_stage(folder)
    assert str(caught.value).startswith(f"{folder / 'infer_cfg.yml'}: ")
    assert message in str(caught.value)


def test_models_of_the_wrong_kind_are_refused_both_ways(tiny_jde):
    with pytest.raises(JdeConfigError, match="is a detector model .* not a joint detection-embedding"):
        jde_stage(MODELS / "picodet_s_192_lcnet_pedestrian_ov")
    with pytest.raises(DetectorConfigError, match="is a jde model"):
        DetectorStage("det", schema.Detector(id="det", type="detector", model=str(tiny_jde)), CONTEXT)


def test_tracker_section_defaults_are_paddledetection_s():
    settings = JdeSettings.from_section({}, "cfg", min_hits=2)
    assert (settings.conf_thres, settings.det_thresh, settings.tracked_thresh, settings.r_tracked_thresh,
            settings.unconfirmed_thresh, settings.metric_type, settings.min_box_area, settings.vertical_ratio,
            settings.max_age_s) == (0.0, 0.3, 0.7, 0.5, 0.7, "euclidean", 200.0, 1.6, 1.0)
    overridden = JdeSettings.from_section({"track_buffer": 60, "conf_thres": 0.4}, "cfg", min_hits=3,
                                          conf_threshold=0.5)
    assert (overridden.max_age_s, overridden.conf_thres, overridden.min_hits) == (2.0, 0.5, 3)


# ----------------------------------------------------------------- association on hand-made detections

SETTINGS = JdeSettings.from_section(dict(tiny.TRACKER), "test", min_hits=2)
EMBEDDINGS = np.eye(4, 8)   # four orthogonal appearances


def box_at(cx: float, cy: float = 200.0, w: float = 60.0, h: float = 160.0) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def detections(*items: tuple[list[float], int], score: float = 0.9) -> Observations:
    """Observations from (box, appearance index) pairs."""
    boxes = np.array([box for box, _ in items], np.float64).reshape(-1, 4)
    return Observations(boxes, np.full(len(items), score), embeddings=EMBEDDINGS[[a for _, a in items]])


def ids_by_appearance(tracker: JdeTracker, found: Observations, time: float) -> dict[int, int]:
    update = tracker.update(found, time)
    return {int(np.argmax(found.embeddings[row])): int(track_id)
            for row, track_id in zip(update.rows, update.track_ids)}


def test_appearance_decides_between_tracks_inside_each_others_gate():
    """Two people side by side swap places by a few pixels: overlap and motion say each stayed
    put, appearance says they swapped; the ids follow appearance."""
    tracker = JdeTracker(SETTINGS)
    for step in range(6):
        ids = ids_by_appearance(tracker, detections((box_at(100), 0), (box_at(112), 1)), step / FPS)
    assert ids == {0: 1, 1: 2}
    swapped = detections((box_at(109), 0), (box_at(103), 1))
    confirmed = [t for t in tracker.tracks if t.confirmed]
    gates = np.array([t.kalman.mahalanobis_sq(swapped.boxes) for t in confirmed])
    assert gates.max() < GATE_CHI2_95   # every pairing is plausible to the Kalman filter
    assert iou_matrix(swapped.boxes[[1]], [box_at(100)])[0, 0] > iou_matrix(swapped.boxes[[0]], [box_at(100)])[0, 0]
    assert ids_by_appearance(tracker, swapped, 6 / FPS) == {0: 1, 1: 2}


def test_kalman_gate_forbids_a_matching_appearance_just_outside_it():
    """A detection looking exactly like a lost track (so overlap cannot claim it), placed just
    beyond the 95% gate, where the fused cost alone (0.02 x Kalman distance) would still allow
    the match: it starts a new track instead."""
    tracker = JdeTracker(SETTINGS)
    for step in range(4):
        ids_by_appearance(tracker, detections((box_at(100), 0)), step / FPS)
    tracker.update(detections(), 4 / FPS)
    time = 5 / FPS
    probe = copy.deepcopy(tracker.tracks[0].kalman)
    probe.predict(time)
    offsets = np.arange(0.0, 40.0, 0.25)
    distances = probe.mahalanobis_sq(np.array([box_at(100 + o) for o in offsets]))
    offset = offsets[np.argmax(distances > 1.05 * GATE_CHI2_95)]
    assert (1 - EMBEDDING_WEIGHT) * distances.max() > SETTINGS.tracked_thresh > \
        (1 - EMBEDDING_WEIGHT) * 1.1 * GATE_CHI2_95
    update = tracker.update(detections((box_at(100 + offset), 0)), time)
    assert update.track_ids.tolist() == [] and not tracker.tracks[0].was_matched
    assert [t.confirmed for t in tracker.tracks] == [True, False]     # track 1, lost, and a new one


def test_overlap_keeps_a_track_whose_appearance_changed_suddenly():
    """Step 2: a track matched at the previous frame takes a detection it overlaps (IoU > 0.5)
    even when its embedding no longer matches; a track lost since does not."""
    tracker = JdeTracker(SETTINGS)
    for step in range(4):
        ids_by_appearance(tracker, detections((box_at(100), 0)), step / FPS)
    assert ids_by_appearance(tracker, detections((box_at(102), 3)), 4 / FPS) == {3: 1}

    tracker = JdeTracker(SETTINGS)
    for step in range(4):
        ids_by_appearance(tracker, detections((box_at(100), 0)), step / FPS)
    tracker.update(detections(), 4 / FPS)          # missed once: lost
    assert ids_by_appearance(tracker, detections((box_at(100), 3)), 5 / FPS) == {}


def test_lost_track_is_found_again_by_appearance_or_ended_after_track_buffer():
    tracker = JdeTracker(SETTINGS)
    for step in range(4):
        ids_by_appearance(tracker, detections((box_at(100 + 3 * step), 0)), step / FPS)
    for step in range(4, 14):                      # hidden for a third of a second
        assert tracker.update(detections(), step / FPS).ended == []
    assert ids_by_appearance(tracker, detections((box_at(100 + 3 * 14), 0)), 14 / FPS) == {0: 1}

    ended = []
    for step in range(15, 15 + 2 * FPS):
        ended += tracker.update(detections(), step / FPS).ended
        if ended:
            assert step / FPS - 14 / FPS == pytest.approx(SETTINGS.max_age_s, abs=1.01 / FPS)
            break
    assert ended == [1]


def test_weak_detections_take_no_part_and_tracks_need_two_matches():
    tracker = JdeTracker(SETTINGS)
    assert tracker.update(detections((box_at(100), 0), score=0.4), 0.0).track_ids.tolist() == []
    assert tracker.tracks == []                                  # conf_thres 0.4: ignored
    assert tracker.update(detections((box_at(100), 0)), 1 / FPS).track_ids.tolist() == []   # tentative
    assert ids_by_appearance(tracker, detections((box_at(101), 0)), 2 / FPS) == {0: 1}
    assert ids_by_appearance(tracker, detections((box_at(102), 0), score=0.4), 3 / FPS) == {}
    assert not tracker.tracks[0].was_matched


def test_embedding_distances_and_publish_filter():
    a, b = unit(np.array([[1.0, 0.0], [1.0, 1.0]]))
    np.testing.assert_allclose(embedding_distance(a[None], np.array([a, b]), "cosine"), [[0.0, 1 - np.sqrt(0.5)]],
                               atol=1e-12)
    np.testing.assert_allclose(embedding_distance(a[None], np.array([a, b]), "euclidean"),
                               [[0.0, np.linalg.norm(a - b)]], atol=1e-7)
    boxes = np.array([box_at(100), [0, 0, 10, 20], [0, 0, 80, 40], [0, 0, 64, 40]])
    assert publishable(boxes, SETTINGS).tolist() == [True, False, False, True]
