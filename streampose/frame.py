"""The data that flows through a graph: frames carrying persons and events.

A `Frame` enters at a source and is filled in place by each stage: the detector
sets `persons.boxes`, the keypoint stage `persons.keypoints`, the tracker
`persons.track_ids`, and so on. Sinks read it and must not modify it (several
sinks may share one frame).

Units: image coordinates are pixels of the frame's own image (x right, y down);
times are seconds (`capture_time` wall clock from `time.time()`, `media_time` the
stream's presentation timestamp); 3D joints are metres in the camera frame.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import av

COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
NUM_KEYPOINTS = len(COCO_KEYPOINTS)
KEYPOINT_INDEX = {name: i for i, name in enumerate(COCO_KEYPOINTS)}  # joint name -> keypoint row

# Pairs of keypoint indices joined by a bone, for drawing.
COCO_SKELETON = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12),
    (5, 6), (5, 7), (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3),
    (2, 4), (3, 5), (4, 6),
)

UNTRACKED = -1


@dataclass
class Persons:
    """All persons of one frame as parallel arrays; row i is one person.

    boxes:       (N, 4) float32, x1, y1, x2, y2 in pixels.
    scores:      (N,) float32, detection confidence 0..1.
    track_ids:   (N,) int64, stable per-stream id, or UNTRACKED (-1).
    keypoints:   (N, K, 3) float32, x, y in pixels and confidence 0..1; None
                 until a keypoint stage ran.
    pose_scores: (N,) float32, mean keypoint confidence; None with keypoints.
    kpts3d:      (N, K, 4) float32, x, y, z in metres (camera frame) and
                 confidence 0..1; None until a 3D stage ran.
    annotations: one dict per person from plugins (e.g. {"fall_score": 0.1}).
    """

    boxes: np.ndarray
    scores: np.ndarray
    track_ids: np.ndarray
    keypoints: np.ndarray | None = None
    pose_scores: np.ndarray | None = None
    kpts3d: np.ndarray | None = None
    annotations: list[dict] = field(default_factory=list)

    @classmethod
    def empty(cls) -> Persons:
        return cls.from_boxes(np.zeros((0, 4), np.float32), np.zeros(0, np.float32))

    @classmethod
    def from_boxes(cls, boxes: np.ndarray, scores: np.ndarray) -> Persons:
        n = len(boxes)
        return cls(
            boxes=np.asarray(boxes, np.float32).reshape(n, 4),
            scores=np.asarray(scores, np.float32).reshape(n),
            track_ids=np.full(n, UNTRACKED, np.int64),
            annotations=[{} for _ in range(n)],
        )

    def __len__(self) -> int:
        return len(self.boxes)

    def select(self, index: np.ndarray) -> Persons:
        """The persons at `index` (an integer or boolean array), in that order."""
        def pick(array):
            return None if array is None else array[index]
        kept = np.arange(len(self))[index]
        return Persons(
            boxes=self.boxes[index], scores=self.scores[index],
            track_ids=self.track_ids[index], keypoints=pick(self.keypoints),
            pose_scores=pick(self.pose_scores), kpts3d=pick(self.kpts3d),
            annotations=[self.annotations[i] for i in kept],
        )


@dataclass
class Event:
    """Something a plugin noticed, published on `event/<stream>`.

    kind:  e.g. "fall_confirmed", "rep".
    media_time: seconds, the stream time of the frame that raised it.
    data:  kind-specific fields (features, counts...), JSON-compatible.
    """

    kind: str
    stream: str
    track_id: int
    media_time: float
    capture_time: float
    score: float = 1.0
    data: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PacketSource:
    """One opening of a video input whose compressed packets are copied (`encode: copy` recorders).
    Each opening (a reconnect, a looped file's next pass) has its own, and is a timeline of its
    own: its packets start a new file.

    template:   a PyAV video stream holding the input's codec parameters (codec, size, extradata)
                and time base, to make an output stream from (add_stream_from_template); it lives in
                a muxer of its own, so it outlives the input, which closes at the end of the pass.
    frame_step: nominal packet duration in the time base (0: unknown), for packets that carry none.
    detail:     the codec and size, for messages ("h264 1280x720").
    """

    template: av.video.stream.VideoStream
    frame_step: int
    detail: str


@dataclass(frozen=True)
class Packets:
    """The compressed video demuxed since the previous frame of the stream that entered the graph:
    the frame's own packets and those of the frames dropped at the entrance before it (the decoder
    runs ahead, so a few of them may belong to the frames after). Set by the source only on
    streams that reach a copying recorder.

    source:  the opening they come from.
    first:   the number of packets[0] in its opening's demuxing order; a number missing between
             two frames' packets is a gap (a bounded carry-over shed them, or a sink's queue
             dropped the frame that held them).
    packets: av.Packet in demuxing order, timestamps in source.template.time_base; shared by every
             sink that reads the frame, so never modified (a recorder muxes copies).
    """

    source: PacketSource
    first: int
    packets: tuple[av.Packet, ...]

    @property
    def end(self) -> int:
        """The number of the packet after the last one here."""
        return self.first + len(self.packets)


@dataclass
class Frame:
    """One decoded video frame and everything the graph learnt about it.

    image:        (H, W, 3) uint8, BGR.
    index:        per-stream count of frames the source decoded (0-based); gaps
                  in the numbers a stage sees are frames dropped at the door.
    segment:      increments each time the source reopens after a gap, so
                  stages that keep state (tracker, recorder) can reset.
    timings:      stage id -> seconds the stage spent on this frame's batch.
    failed_stages: ids of stages that raised on this frame, or discarded it unprocessed at shutdown.
    ended_tracks: track ids that ended at this frame; stages holding per-track
                  state free it.
    encoded:      format -> the pose message as sinks encoded it (messages.encoded_pose), so
                  several sinks encode it once; the runtime empties it after every stage that
                  changes frames (`changed`).
    drawn:        what every drawing sink draws the same (sinks.draw: zones, people, 3D inset),
                  drawn once however many sinks draw the frame: the (H, W, 3) uint8 BGR image
                  and the (x1, y1, x2, y2) pixel rectangles labels must not cover; None until a
                  sink draws, and again after every stage that changes frames (`changed`).
    detected:     False when the detector skipped this frame (`every_n_frames`) and carried
                  its stream's last boxes over; the keypoints stage refits them to the
                  previous frame's keypoints.
    zones:        the stream's zones (`streampose.geometry.zones.Zone`, from its source in
                  the graph), shared by all its frames; read by plugins and drawn by sinks.
    packets:      the compressed video since the stream's previous frame (`Packets`), for
                  recorders that copy it; None unless one reads the stream.
    picture:      (x1, y1, x2, y2) pixels: the part of the image that shows the scene, inside
                  the black bars of letterboxed or pillarboxed video (vision.bars, found by the
                  source); the whole image when it has none.
    """

    stream: str
    index: int
    image: np.ndarray
    capture_time: float
    media_time: float
    segment: int = 0
    persons: Persons = field(default_factory=Persons.empty)
    events: list[Event] = field(default_factory=list)
    ended_tracks: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    failed_stages: list[str] = field(default_factory=list)
    encoded: dict[str, bytes] = field(default_factory=dict)
    drawn: tuple[np.ndarray, tuple[tuple[int, int, int, int], ...]] | None = None
    detected: bool = True
    zones: tuple = ()
    packets: Packets | None = None
    picture: tuple[int, int, int, int] | None = None

    def changed(self) -> None:
        """A stage changed this frame: what sinks derived from it (`encoded`, `drawn`) is stale."""
        self.encoded.clear()
        self.drawn = None

    @property
    def height(self) -> int:
        return self.image.shape[0]

    @property
    def width(self) -> int:
        return self.image.shape[1]

    @property
    def picture_box(self) -> tuple[int, int, int, int]:
        """`picture`, or the whole image when the source found no bars."""
        return self.picture or (0, 0, self.width, self.height)


@dataclass(frozen=True)
class StreamEvent:
    """A change in a stream's life, passed through the graph in frame order and
    published on `status/<stream>`.

    kind:    "opened" (the source opened; segment > 0 means it reopened after a
             gap, so per-stream state such as tracks and recordings restarts),
             "lost" (the source failed, ended or stalled and will be reopened),
             or "ended" (no more frames will come).
    segment: the segment number frames will carry from now on.
    detail:  a human-readable reason, e.g. "read timeout after 5.0 s".
    wall_time: time.time() when it happened.
    failed:  on "ended": the source could not be read (missing, not a video, deleted
             while looping, a camera given up on), rather than played to its end.
    """

    stream: str
    kind: str
    segment: int
    detail: str = ""
    wall_time: float = 0.0
    failed: bool = False

    @property
    def restarts_stream(self) -> bool:
        """Whether per-stream state (tracks, filters, pose windows) must start afresh:
        the stream was lost or ended, or it reopened after a gap ("opened" with
        segment > 0). The first "opened" (segment 0) comes before any frame, so
        there is nothing to reset."""
        return self.kind in ("lost", "ended") or (self.kind == "opened" and self.segment > 0)
