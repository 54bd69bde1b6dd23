"""The contract between the runtime and its stages (docs/graphs.md#the-stage-contract): state owned
by the runtime, events that ride on no frame, retried batches, topology. Real runners, threads,
queues and ZeroMQ sockets."""

from __future__ import annotations

import queue
import time
from pathlib import Path

import numpy as np
import pytest

from streampose import messages
from streampose.client import Subscriber
from streampose.frame import Frame, Persons, StreamEvent
from streampose.graph import schema
from streampose.plugins.stage import PluginStage
from streampose.runtime.metrics import Metrics
from streampose.runtime.runner import STOP, StageRunner
from streampose.runtime.stage import Stage, StageContext
from streampose.runtime.state import MAX_STEP_BACK_S
from streampose.sinks.publisher import PublisherStage
from test_fall import fall_clip, shot_frames
from test_publisher import PROBE, VALIDATOR, wait_subscribed

CONTEXT = StageContext(graph_dir=Path("."), output_dir=Path("."))


def chain(*stages: Stage) -> tuple[list[StageRunner], list[Frame]]:
    """Runners for `stages` joined in a line; the frames the last one finishes land in the list."""
    metrics, leaves = Metrics(), []
    runners = [StageRunner(stage, queue.Queue(), upstreams=1, metrics=metrics, on_processed=leaves.append)
               for stage in stages]
    for runner, after in zip(runners, runners[1:]):
        runner.outboxes = [after.inbox]
    return runners, leaves


def test_a_fall_confirmed_when_the_camera_drops_while_someone_lies_down_reaches_a_subscriber(tmp_path):
    fall = PluginStage("fall", schema.Plugin(id="fall", type="plugin", plugin="fall"), CONTEXT)
    publisher = PublisherStage("pub", schema.Publisher(id="pub", type="publisher", bind="tcp://127.0.0.1:*",
                                                       format="json"), StageContext(tmp_path, tmp_path))
    runners, _ = chain(fall, publisher)
    with Subscriber(publisher.endpoint, topics=("event/cam", "status/")) as sub:
        wait_subscribed(publisher, sub)
        for runner in runners:
            runner.start()
        for frame in shot_frames(fall_clip(10, end=3.0)):          # 0.4 s on the floor, not yet confirmed
            runners[0].inbox.put(frame)
        runners[0].inbox.put(StreamEvent("cam", "lost", 0, "read timeout", time.time()))
        runners[0].inbox.put(STOP)
        received = []
        deadline = time.monotonic() + 30
        while not received or received[-1][0] != "status/cam":        # the status closes the story
            got = sub.recv_dict(max(deadline - time.monotonic(), 0))
            assert got is not None, f"the lost status never came; got {received}"
            VALIDATOR.validate(got[1])
            if got[0] != f"status/{PROBE}":
                received.append(got)
    for runner in runners:
        runner.thread.join(10)
    assert [(topic, msg["kind"]) for topic, msg in received] == [
        ("event/cam", "fall_started"), ("event/cam", "fall_confirmed"), ("status/cam", "lost")]
    confirmed = received[1][1]
    assert confirmed["frame"] is None and confirmed["data"]["lost_while_down"] is True
    assert confirmed["media_time"] == pytest.approx(2.9)                # the last sighting
    assert all(runner.done for runner in runners)


class Counter(Stage):
    """Counts the frames of each track (state from the runtime's store); fails on chosen frames."""

    def __init__(self, fail_on: set[int] = frozenset()):
        super().__init__("count", schema.Noop(id="count", type="noop", batch={"max_size": 4}), CONTEXT)
        self.fail_on = set(fail_on)
        self.tracks = self.per_track(lambda: {"frames": 0}, capacity=2)
        self.dropped: list[tuple[str, int, int, bool]] = []  # (stream, track, frames, with a frame)
        self.tracks.on_drop = lambda stream, key, state, frame: self.dropped.append(
            (stream, key, state["frames"], frame is not None))

    def process(self, frames: list[Frame]) -> None:
        for frame in frames:
            for track_id in frame.persons.track_ids.tolist():
                self.tracks.get(frame, track_id)["frames"] += 1
            if frame.index in self.fail_on:
                self.fail_on.discard(frame.index)   # fails once: its retry succeeds
                raise RuntimeError(f"frame {frame.index}")


def tracked(stream: str, index: int, media_time: float, ids: list[int], segment: int = 0,
            ended: list[int] = ()) -> Frame:
    persons = Persons.from_boxes(np.zeros((len(ids), 4)), np.ones(len(ids)))
    persons.track_ids[:] = ids
    return Frame(stream, index, np.zeros((4, 4, 3), np.uint8), 0.0, media_time, segment, persons=persons,
                 ended_tracks=list(ended))


def test_a_retried_batch_applies_each_frames_state_once():
    stage = Counter(fail_on={2})
    frames = [tracked("a", i, i * 0.1, [1]) for i in range(4)]
    stage.run(frames[:1])
    with pytest.raises(RuntimeError):
        stage.run(frames[1:])                  # frames 1 and 2 counted, then it fails: put back
    assert stage.tracks.peek("a", 1) == {"frames": 1}
    for frame in frames[1:]:                   # the runner's retry, frame by frame
        stage.run([frame])
    assert stage.tracks.peek("a", 1) == {"frames": 4}


def test_states_end_with_their_tracks_timelines_and_capacity():
    stage = Counter()
    stage.run([tracked("a", 0, 0.0, [1, 2]), tracked("b", 0, 0.0, [1])])
    stage.run([tracked("a", 1, 0.1, [2], ended=[1])])                      # the tracker ended 1
    assert stage.dropped == [("a", 1, 1, True)] and len(stage.tracks) == 2
    stage.run([tracked("a", 2, 0.2, [2, 3, 4])])                           # capacity 2: the least recent goes
    assert stage.dropped[-1] == ("a", 2, 3, False) and len(stage.tracks) == 3
    stage.run([tracked("a", 3, 0.2 - MAX_STEP_BACK_S / 2, [3])])            # jitter: the timeline holds
    assert stage.tracks.peek("a", 3) == {"frames": 2}
    stage.run([tracked("a", 4, 0.1 - MAX_STEP_BACK_S, [3])])                # a clock reset: a new timeline
    assert stage.tracks.peek("a", 3) == {"frames": 1} and stage.tracks.peek("a", 4) is None
    stage.run([tracked("a", 5, 0.0, [3], segment=1)])                       # a new segment, too
    assert stage.tracks.peek("a", 3) == {"frames": 1}
    stage.stream_event(StreamEvent("a", "lost", 1))
    assert stage.tracks.live("a") == {} and stage.tracks.peek("b", 1) == {"frames": 1}
    stage.finish()
    assert len(stage.tracks) == 0 and stage.dropped[-1] == ("b", 1, 1, False)


def test_a_frames_message_is_encoded_once_for_all_sinks_and_again_after_a_stage_changes_it():
    frame = tracked("a", 0, 0.0, [1])
    first = messages.encoded_pose(frame, "json")
    assert messages.encoded_pose(frame, "json") is first              # a second sink gets the same bytes
    runners, leaves = chain(Counter())                                # a processor: the encoding is stale after it
    runners[0].start()
    runners[0].inbox.put(frame)
    runners[0].inbox.put(STOP)
    runners[0].thread.join(10)
    assert leaves == [frame] and frame.encoded == {}
    assert messages.decode(messages.encoded_pose(frame, "json"))["timings"]["count"] >= 0
