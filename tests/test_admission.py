"""Drop before work: a frame refused at the entrance is never converted, and an overloaded
live stream is let in at an even, reduced rate."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
from conftest import VIDEOS

from streampose.frame import Frame
from streampose.graph import schema
from streampose.graph.loader import load_graph
from streampose.runtime import health
from streampose.runtime.admission import WINDOW, Thinning
from streampose.runtime.pipeline import Pipeline
from streampose.sources.capture import Capture

JACKS = VIDEOS / "jumping_jacks_Ibbu_1.mp4"  # 273 frames, 30 fps


class CountingReader:
    """The capture's real reader, counting the BGR conversions of the frames it decodes."""

    def __init__(self, reader):
        self.reader, self.converted = reader, 0

    def open(self):
        playback = self.reader.open()
        reader = self

        class Counted:
            frame_step, detail, packets = playback.frame_step, playback.detail, playback.packets

            def __iter__(self):
                for picture, media_time in playback:
                    def convert(picture=picture) -> np.ndarray:
                        reader.converted += 1
                        return picture()
                    yield convert, media_time

            def close(self):
                playback.close()

        return Counted()


def test_a_refused_frame_is_not_converted():
    spec = schema.Source(id="cam", uri=str(JACKS), options={"realtime": True})
    capture = Capture(spec, Path("."), lambda name: None, decoder_threads=1)
    counting = capture._reader = CountingReader(capture._reader)
    asked = []

    def admit() -> bool:  # every third frame, as a full gate would refuse the others
        asked.append(counting.converted)
        return len(asked) % 3 == 1

    stop = threading.Event()
    frames = [item for item in capture.frames(stop, admit=admit) if isinstance(item, Frame)]
    # Every decoded frame was asked about before any conversion of its own, and only the
    # admitted ones were converted, with their own index (the refused ones leave gaps).
    assert len(asked) == 273
    assert counting.converted == len(frames) == 91
    assert [f.index for f in frames] == list(range(0, 273, 3))
    assert frames[0].image.dtype == np.uint8 and frames[0].image.ndim == 3


def processed_share(capacity: float, thinning: Thinning | None, frames: int = 8000) -> tuple[float, list[float]]:
    """A live stream into a gate of two slots (in_flight 2) in front of a stage that takes
    `capacity` frame times (+-20%, seeded) per frame: the share of the stream's frames processed
    after the first third, and thinning's admit_every at each frame."""
    rng = np.random.default_rng(0)
    finishing, busy_until, processed, everies = [], 0.0, 0, []
    for index in range(frames):
        finishing = [t for t in finishing if t > index]
        if thinning is not None and not thinning.offer():
            everies.append(thinning.every)
            continue
        admitted = len(finishing) < 2
        if admitted:
            busy_until = max(index, busy_until) + capacity * rng.uniform(0.8, 1.2)
            finishing.append(busy_until)
            processed += index >= frames // 3
        if thinning is not None:
            thinning.result(admitted)
            everies.append(thinning.every)
    return processed / (frames - frames // 3), everies


def test_thinning_keeps_the_share_of_frames_the_graph_can_take():
    # The graph can take 1 / capacity of the stream's frames. Thinning finds about that share and
    # lets it in evenly, including between every frame and every second one: whole steps (every
    # k-th frame) processed 51% of a stream the graph could take 87% of (capacity 1.15).
    for capacity in (1.15, 1.3, 1.6, 2.0, 2.5, 3.0, 5.0):
        share, everies = processed_share(capacity, Thinning())
        assert share >= 0.93 / capacity, (capacity, share)
        assert abs(np.median(everies[4000:]) - capacity) < 0.15 * capacity, (capacity, np.median(everies[4000:]))
    # A gate that takes everything: every frame goes in.
    thinning = Thinning()
    for _ in range(10 * WINDOW):
        assert thinning.offer()
        thinning.result(True)
    assert thinning.every == 1


def test_thinned_frames_are_evenly_spaced():
    # At a share of 0.4 the frames let through are 3, 2, 3, 2, 3 ... apart: every gap is one of
    # the two whole numbers round 1 / share.
    thinning = Thinning()
    thinning.rate = 0.4
    offered = [index for index in range(1000) if thinning.offer()]
    assert set(np.diff(offered)) == {2, 3} and len(offered) == 400


def test_an_overloaded_live_stream_is_processed_at_an_even_rate(tmp_path):
    graph = tmp_path / "graph.yml"
    graph.write_text(f"""
sources: [{{id: live, uri: '{JACKS}', options: {{realtime: true, loop: true}}}}]
stages:
  - {{id: slow, type: noop, delay_ms: 80}}
  - {{id: log, type: jsonl, path: '{{stream}}.jsonl'}}
runtime: {{metrics: {{bind: null}}, in_flight: 2}}
""")
    pipeline = Pipeline(load_graph(graph), output_dir=tmp_path / "out")
    pipeline.start()
    try:
        # 30 fps in, at most 12.5 fps of work: the stream is thinned to about 0.4 of its frames.
        deadline = time.monotonic() + 30
        while pipeline.admissions["live"].every < 2:
            assert time.monotonic() < deadline, f"not thinned: admit_every {pipeline.admissions['live'].every}"
            time.sleep(0.05)
        _, report = health.report(pipeline)
        assert report["streams"]["live"]["admit_every"] >= 2
        assert report["streams"]["live"]["state"] == "overloaded"
        gauges = {family.name: family for family in pipeline.metrics.collect()}
        assert gauges["streampose_admit_every"].samples[0].value >= 2
        start = pipeline.metrics.count("frames", stage="log")
        while pipeline.metrics.count("frames", stage="log") < start + 40:
            assert time.monotonic() < deadline + 30, "the thinned stream stalled"
            time.sleep(0.05)
    finally:
        assert pipeline.shutdown()
    indices = [json.loads(line)["frame"] for path in sorted((tmp_path / "out").glob("live*.jsonl"))
               for line in path.read_text().splitlines()]
    # The frames let in once thinned (the two then in flight, in_flight 2, may have come before).
    gaps = np.diff(indices[start + 2:])
    assert len(gaps) >= 37, len(gaps)
    # Even: a processed frame's gap is one of the two whole numbers round the mean gap (2 and 3
    # here) nearly always; a change of the share or a frame the gate still refused (the noop's
    # sleep runs late on a loaded machine) makes the odd other one.
    low = np.floor(np.median(gaps))
    assert np.mean((gaps >= low) & (gaps <= low + 1)) >= 0.85, gaps
    assert np.min(gaps) >= 2, gaps


def test_a_file_keeps_more_frames_in_flight_than_a_live_stream(tmp_path):
    def gates(runtime: str) -> dict[str, int]:
        graph = tmp_path / "graph.yml"
        graph.write_text(f"""
sources: [{{id: file, uri: '{JACKS}'}}, {{id: live, uri: '{JACKS}', options: {{realtime: true}}}}]
stages: [{{id: log, type: jsonl}}]
runtime: {runtime}
""")
        pipeline = Pipeline(load_graph(graph), output_dir=tmp_path / "out")
        return {sid: gate.limit for sid, gate in pipeline.gates.items()}

    # A file's frames wait at the door, so more of them inside keeps every stage busy; a live
    # frame that gets in should not queue behind others.
    assert gates("{metrics: {bind: null}}") == {"file": 8, "live": 3}
    assert gates("{metrics: {bind: null}, in_flight: 3}") == {"file": 3, "live": 3}
