"""The graph schema: every key a graph file may hold, its type, default, unit and range.

This module is the single source of truth for graph parameters; docs/graphs-reference.md is
generated from it (`streampose schema`, `make docs`). Every model forbids unknown
keys, so a typo is an error, never silently ignored.

Each stage type is declared once, by its parameter class here (a StageBase subclass whose
`type` is a Literal): defining the class registers it in STAGE_TYPES, the StageSpec union, the
stage table (streampose.stages), `streampose infer`'s choice of stages and the model checks of
`streampose validate`. See docs/graphs.md#adding-a-stage-type.
"""

from __future__ import annotations

import re
import string
from typing import Annotated, ClassVar, Literal, Union, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from streampose.geometry import zones as zone_geometry

# Ids name topics, files and folders: letters, digits, _ . - (not first: '.', '..' and '-x' are
# paths and options), and short enough for any file name.
ID_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
ID_RULE = "1 to 64 letters, digits, _ . -, starting with a letter, digit or _"


class Strict(BaseModel):
    # strict: `true` is no number and `1.5` no integer; allow_inf_nan: .inf and .nan are no
    # durations or thresholds.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def _safe_id(value: str) -> str:
    if not ID_PATTERN.fullmatch(value):
        shown = value if len(value) <= 40 else f"{value[:40]}... ({len(value)} characters)"
        raise ValueError(f"expected {ID_RULE}, got {shown!r}")
    return value


# The one format spec a path may use: a zero-padded number of at most 9 digits ({segment:03d}),
# so that files sort by name.
ZERO_PADDED = re.compile(r"0[1-9]d")


def _plain_fields(template: str) -> str:
    """`template` if its {fields} are plain names or zero-padded numbers; any other format spec
    or a conversion ({stream:>300000000}, {stream!r}) or an attribute or index ({stream.x})
    could make a path of any size."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as error:  # a lone { or }
        raise ValueError(f"path template {template!r}: {error} (write {{{{ or }}}} for a literal brace)") from None
    for _, name, spec, conversion in parts:
        if name is not None and ((spec and not ZERO_PADDED.fullmatch(spec)) or conversion or not name.isidentifier()):
            raise ValueError(f"path template {template!r}: only plain fields such as {{stream}} are allowed, "
                             f"or zero-padded numbers such as {{segment:03d}}; no other format specs, "
                             f"conversions, attributes or indices")
    return template


# --------------------------------------------------------------------------- sources

class Reconnect(Strict):
    """How a live source reopens after it ends, stalls or fails."""

    initial_s: float = Field(0.5, gt=0, le=60, description="First wait before reopening, seconds.")
    max_s: float = Field(30.0, gt=0, le=3600, description="Longest wait between attempts, seconds.")
    factor: float = Field(2.0, ge=1, le=10, description="Each failed attempt multiplies the wait by this.")
    max_attempts: int = Field(0, ge=0, description="Attempts in a row before giving up; 0 = never give up.")


class SourceOptions(Strict):
    """Options of one source; each applies to the kinds of source it names."""

    loop: bool = Field(False, description="Files and images: start again at the end.")
    realtime: bool = Field(False, description="Files and images: pace frames at their timestamps, like a camera "
                           "(frames are then dropped at the door when the graph is busy).")
    transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP transport.")
    open_timeout_s: float = Field(10.0, gt=0, le=300, description="Network and webcam: longest wait to open, seconds.")
    read_timeout_s: float = Field(5.0, gt=0, le=300, description="Network and webcam: no packet for this long "
                                  "counts as a stall and reopens the stream, seconds.")
    fps: float = Field(10.0, gt=0, le=1000, description="Images: frames per second used for media time and pacing.")
    reconnect: Reconnect = Field(default_factory=Reconnect, description="Reopening of live sources.")


Unit = Annotated[float, Field(ge=0, le=1)]


class Zone(Strict):
    """A region of the stream's image where people are treated differently (docs/falls.md, Zones):
    `rest` where lying is normal (a bed, a sofa, an exercise mat: no fall or long-lie alarm),
    `ignore` where nobody is a person to watch (a television, a poster: dropped), `floor` where
    lying is never normal (listed first, it carves a part out of a later rest zone). A person is in
    the first zone listed that contains their body point (the middle of the seen shoulders and hips,
    else of the box)."""

    name: str = Field(description=f"Zone name, unique in the stream, carried in events: {ID_RULE}.")
    kind: Literal["rest", "ignore", "floor"] = Field(description="What the zone is: rest, ignore or floor.")
    polygon: list[Annotated[list[Unit], Field(min_length=2, max_length=2)]] = Field(
        min_length=3, max_length=64, description="Corners [x, y] in order round the polygon, normalised: x from 0 "
        "(left edge) to 1 (right edge), y from 0 (top) to 1 (bottom), so it fits the stream at any resolution; "
        "3 to 64 corners, edges not crossing.")

    _name = field_validator("name")(_safe_id)

    @field_validator("polygon")
    @classmethod
    def _simple(cls, corners: list[list[float]]) -> list[list[float]]:
        problem = zone_geometry.polygon_problem(np.array(corners, np.float64))
        if problem:
            raise ValueError(f"polygon {corners}: {problem}")
        return corners

    def to_zone(self) -> zone_geometry.Zone:
        return zone_geometry.Zone(self.name, self.kind, np.array(self.polygon, np.float64))


class Source(Strict):
    """A video input. `uri` is a file path, an image folder or glob, rtsp://, rtsps://,
    rtmp://, http(s):// or a webcam device such as /dev/video0."""

    id: str = Field(description=f"Stream id, used in topics and file names: {ID_RULE}.")
    uri: str = Field(min_length=1, description="Where frames come from; relative paths resolve against the graph file.")
    options: SourceOptions = Field(default_factory=SourceOptions, description="Source options.")
    zones: list[Zone] = Field(default_factory=list, max_length=32, description="Regions of this stream's image "
                              "with a meaning for the fall plugin (rest, ignore, floor), in order of precedence; "
                              "drawn on recordings.")

    _id = field_validator("id")(_safe_id)

    @field_validator("zones")
    @classmethod
    def _unique_names(cls, value: list[Zone]) -> list[Zone]:
        names = [z.name for z in value]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"zone names must be unique in a stream; repeated: {', '.join(repeated)}")
        return value


# --------------------------------------------------------------------------- runtime

class MetricsParams(Strict):
    bind: str | None = Field("127.0.0.1:9100", description="host:port serving /metrics, /health, /livez, "
                             "/readyz (docs/operations.md) and the live view's page (docs/outputs.md); null "
                             "disables.")
    token: str | None = Field(None, min_length=16, description="Token the live view's page and API require "
                              "(open /?token=...); required when bind is not a loopback address and the graph has a live "
                              "stage. Use ${ENV_VAR}. /metrics and the probes never need it.")
    log_interval_s: float = Field(10.0, ge=0, le=86400, description="Period of the one-line metrics log, seconds; "
                                  "0 disables.")


class Health(Strict):
    """When /health calls a stream `overloaded` and /livez calls a stage stuck."""

    window_s: float = Field(10.0, gt=0, le=600, description="Recent window over which a live stream's drops and "
                            "end-to-end latency are judged, seconds.")
    max_drop_share: float = Field(0.5, ge=0, le=1, description="A live stream dropping more than this share of its "
                                  "frames over the window is `overloaded`.")
    max_latency_s: float | None = Field(1.0, gt=0, description="A live stream whose end-to-end p95 over the window "
                                        "is above this is `overloaded`, seconds; null = no latency budget.")
    stuck_after_s: float = Field(60.0, gt=0, description="A stage busy with one batch for longer fails /livez "
                                 "(a hung model), seconds.")


class Runtime(Strict):
    """How the graph runs."""

    queue_size: int = Field(8, ge=1, le=1024, description="Capacity of each queue between stages, frames.")
    in_flight: int | None = Field(None, ge=1, le=256, description="Most frames of one stream inside the graph at "
                                  "once; live frames beyond it are dropped at the door, file frames wait. Unset: 3 "
                                  "for a live stream (four live 25 fps streams on 2 cores, benchmarks.live: every "
                                  "stream kept 99.5-100% of its frames at 3 or 4, end-to-end p95 41-59 ms; at 2, "
                                  "84-100%: a frame that came while two were inside was dropped), 8 for a file "
                                  "(frames queued in front of every stage keep the cores busy: squat_side_view at "
                                  "bf16 130-137 frames/s at 4, 146-170 at 8, 155-180 at 16, which holds 50 MB more "
                                  "per 1080p stream).")
    even_drops: bool = Field(True, description="Under sustained overload, let an evenly spaced share of a live "
                             "stream's frames in (the largest that keeps drops at the door under 10%; 1 / share shown "
                             "as admit_every in /health and metrics) instead of whichever frames find a free slot: an "
                             "even, reduced rate rather than random gaps.")
    drain_timeout_s: float = Field(10.0, ge=0, le=600, description="On stop, longest wait for frames in flight, seconds.")
    degraded_after: int = Field(5, ge=1, description="Failed frames in a row that mark a stream degraded (a stage "
                                "that changes frames raised on them; a sink's failures count in errors and, "
                                "for storage, pause it).")
    output_dir: str = Field("out", description="Folder all sinks write under; relative to the working directory.")
    disk_budget_mb: float = Field(0.0, ge=0, description="Most MiB under output_dir, all sinks and streams together; "
                                  "the oldest finished files go first when it is over (checked every 10 s; files "
                                  "written in the last 120 s are never deleted). 0 = no budget.")
    engine_cache_dir: str | None = Field(None, description="Root of the engines' on-disk caches: OpenVINO's "
                                         "compiled networks (ov_cache/, which makes a second start compile "
                                         "several times faster, docs/performance.md) and TensorRT engines; "
                                         "relative to the working directory. Default: $XDG_CACHE_HOME/streampose, "
                                         "i.e. ~/.cache/streampose.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Logging level.")
    metrics: MetricsParams = Field(default_factory=MetricsParams, description="Metrics and health endpoint.")
    health: Health = Field(default_factory=Health, description="Overload and stuck-stage thresholds of the "
                           "health endpoints.")

    def in_flight_for(self, live: bool) -> int:
        """`in_flight`, or its default for a live stream or a file."""
        return self.in_flight or (3 if live else 8)


# --------------------------------------------------------------------------- stages

# Stage type name -> its parameter class, in the order they are defined below: filled by
# StageBase.__pydantic_init_subclass__ as each class is defined.
STAGE_TYPES: dict[str, type[StageBase]] = {}


class StageBase(Strict):
    """Keys every stage has."""

    # What the runtime knows of a stage type besides its keys, declared on its parameter class:
    # IMPLEMENTATION: "package.module:Class" of the Stage, imported only when a graph runs.
    # ROLE: "processor" (fills in frames) or "sink" (only reads them: files, sockets).
    # STILL_IMAGES: works on each frame alone, so `streampose infer` runs it on still images.
    IMPLEMENTATION: ClassVar[str] = ""
    ROLE: ClassVar[Literal["processor", "sink"]] = "processor"
    STILL_IMAGES: ClassVar[bool] = False

    id: str = Field(description=f"Stage id, unique in the graph: {ID_RULE}.")
    type: str = Field(description="Stage type (see below).")
    inputs: list[str] | None = Field(None, description="Ids of the stages or sources feeding this stage, each "
                                     "once; default: the previous stage (the first stage: all sources).")

    _id = field_validator("id")(_safe_id)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        names = get_args(cls.model_fields["type"].annotation)  # ("detector",) for Literal["detector"]
        if names:
            STAGE_TYPES[names[0]] = cls


class LightStage(StageBase):
    """A stage whose work per frame is small next to a network's: by default it runs in the
    thread of the stage feeding it."""

    own_thread: bool = Field(False, description="Run in a thread of its own, with its own input queue. false: "
                             "when fed by one stage (not the sources), one frame at a time, the stage runs in "
                             "that stage's thread as each frame is handed on, which saves handing frames between "
                             "threads: 0.8-1.6 ms of CPU a frame on the full chain of benchmarks.peer "
                             "(docs/performance.md#light-stages-in-the-thread-before-them). true: beside the "
                             "stage before it, on another core; for a plugin that needs milliseconds a frame, on "
                             "a machine with cores to spare.")


class Batch(Strict):
    """A stage takes the frames waiting in its queue, up to `max_size` and its latency budget."""

    max_size: int = Field(1, ge=1, le=256, description="Most frames in one batch.")
    timeout_ms: float = Field(0.0, ge=0, le=1000, description="Longest wait for a batch to fill, milliseconds "
                              "(never beyond the latency budget).")
    latency_budget_ms: float | None = Field(50.0, gt=0, le=10000, description="Most time a batch's first frame "
                                            "should spend in the stage, waiting for others and being processed, "
                                            "milliseconds: the stage stops adding frames (and waiting for more) "
                                            "when one more would overrun it at the cost per frame measured on "
                                            "its recent batches. Two batching stages at 50 ms keep a live "
                                            "frame's way through them under the 150 ms of a real-time graph. "
                                            "null: fixed batches (max_size and timeout_ms alone).")
    per_stream: int = Field(0, ge=0, le=256, description="Most frames of one stream in a batch (fairness); 0 = no cap.")


class Noop(StageBase):
    """Passes frames on unchanged, after an optional delay (for tests and benchmarks)."""

    IMPLEMENTATION = "streampose.stages.noop:NoopStage"

    type: Literal["noop"]
    delay_ms: float = Field(0.0, ge=0, le=60000, description="Time to spend on each batch, milliseconds.")
    batch: Batch = Field(default_factory=Batch, description="Batching.")


class NoopSink(StageBase):
    """Reads frames and does nothing with them, after an optional delay: a stand-in for a slow
    disk or encoder (tests and benchmarks)."""

    IMPLEMENTATION = "streampose.stages.noop:NoopStage"
    ROLE = "sink"

    type: Literal["noop_sink"]
    delay_ms: float = Field(0.0, ge=0, le=60000, description="Time to spend on each batch, milliseconds.")


class Publisher(StageBase):
    """Publishes pose, event and status messages on a ZeroMQ PUB socket."""

    IMPLEMENTATION = "streampose.sinks.publisher:PublisherStage"
    ROLE = "sink"

    type: Literal["publisher"]
    bind: str = Field("tcp://127.0.0.1:5555",
                      description="ZeroMQ endpoint to bind: tcp://HOST:PORT (port * picks a free one) or "
                      "ipc://PATH. A HOST other than loopback without curve_secret_key logs a warning.")
    format: Literal["msgpack", "json"] = Field("msgpack", description="Payload encoding.")
    curve_secret_key: str | None = Field(None, description="CURVE server secret key file (`publisher.key_secret` "
                                         "from `streampose keys DIR`), relative to the graph file; encrypts all "
                                         "messages, and only subscribers given the matching public key "
                                         "(`publisher.key`) can connect.")
    send_hwm: int = Field(1000, ge=1, description="Messages queued per subscriber before ZeroMQ drops, count.")

    @field_validator("bind")
    @classmethod
    def _scheme(cls, bind: str) -> str:
        # A pattern would only say the value does not match; most misses are a missing tcp://.
        if not bind.startswith(("tcp://", "ipc://")) or bind in ("tcp://", "ipc://"):
            guess = f"tcp://{bind}" if "://" not in bind else "tcp://127.0.0.1:5555"
            raise ValueError(f"expected tcp://HOST:PORT or ipc://PATH, got {bind!r} (did you mean {guess!r}?)")
        return bind


class Recorder(StageBase):
    """Records MP4 files, one series per stream: annotated and re-encoded (x264), or the camera's
    own video copied unchanged (copy)."""

    IMPLEMENTATION = "streampose.sinks.recorder:RecorderStage"
    ROLE = "sink"

    type: Literal["recorder"]
    path: str = Field("recordings/{stream}/{date}_{time}.mp4", description="File path template under the output "
                      "directory, ending in .mp4; fields {stream} (anywhere), and in the file name only {date} "
                      "(YYYYMMDD) and {time} (HHMMSS) of the file's first capture, local time, and {segment} (the "
                      "file's number in its stream since start, from 0). An existing file is never overwritten: "
                      "a -1, -2... suffix is added.")
    segment_s: float = Field(600.0, ge=0, description="Start a new file after this much media time, seconds "
                             "(encode: copy: at the first keyframe after it); 0 = never.")
    flush_s: float = Field(2.0, gt=0, le=60, description="Media time between keyframes, seconds; each ends a "
                           "fragment of the MP4, written and synced to disk, so a killed daemon or a power cut "
                           "loses at most this much (plus the encoder's 11-frame lookahead). Shorter costs bytes: "
                           "2 s is ~4% larger than x264's default of 250 frames at 30 fps. encode: x264 only: with "
                           "copy the camera's own keyframes end the fragments.")
    keep_files: int = Field(0, ge=0, description="Per stream, delete the oldest finished files beyond this count; "
                            "0 = keep all. When set (or keep_bytes), a full disk also deletes the stream's oldest "
                            "finished file (never the newest) before each retry.")
    keep_bytes: int = Field(0, ge=0, description="Per stream, delete the oldest finished files beyond this total "
                            "size, bytes; 0 = no limit. The newest file is always kept.")
    crf: int = Field(23, ge=0, le=51, description="x264 constant rate factor (lower is better quality).")
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium"] = Field(
        "veryfast", description="x264 speed preset.")
    draw: bool = Field(True, description="Draw boxes, ids, skeletons, events and an fps/latency overlay.")
    encode: Literal["x264", "copy"] = Field("x264", description="How the video gets into the files. x264: the "
                                            "frames the graph processed, drawn (draw) and encoded to H.264 (crf, "
                                            "preset); 13.7 ms of CPU per 1280x720 frame at veryfast. copy: the "
                                            "source's compressed packets written unchanged (every packet, also those "
                                            "of frames dropped at the entrance), at the camera's quality and 0.08 "
                                            "ms of CPU per 1280x720 frame; nothing is drawn (the annotations are in "
                                            "the pose messages, JSONL, clips and the live view). With copy a file "
                                            "starts at a keyframe, segment_s ends it at the first keyframe after, "
                                            "fragments end at the camera's keyframes (flush_s does not apply: a kill "
                                            "loses at most one keyframe interval), and after a gap (frames dropped "
                                            "for long, or by this recorder's own queue) writing resumes at the next "
                                            "keyframe. copy needs a video source (an image sequence is refused at "
                                            "start) in a codec MP4 holds (H.264, H.265, MPEG-4, AV1, VP9...); any "
                                            "other stops that stream's recording with one error.")

    _path = field_validator("path")(_plain_fields)

    @model_validator(mode="after")
    def _copy_has_no_encoder(self) -> Recorder:
        set_for_x264 = sorted({"crf", "preset", "draw"} & self.model_fields_set)
        if self.encode == "copy" and set_for_x264:
            raise ValueError(f"{', '.join(set_for_x264)} {'applies' if len(set_for_x264) == 1 else 'apply'} only to "
                             f"encode: x264 (copy writes the camera's packets unchanged, undrawn); remove "
                             f"{'it' if len(set_for_x264) == 1 else 'them'} or set encode: x264")
        return self


class Jsonl(StageBase):
    """Writes one JSON line per frame (the pose message) for offline analysis."""

    IMPLEMENTATION = "streampose.sinks.jsonl:JsonlStage"
    ROLE = "sink"

    type: Literal["jsonl"]
    path: str = Field("jsonl/{stream}.jsonl", description="File path template under the output directory; "
                      "field {stream}. This is the file being written; a finished one is renamed with the local "
                      "date and time it ended before the suffix: jsonl/cam.20250131_142500.jsonl.")
    segment_s: float = Field(3600.0, ge=0, description="Start a new file after the current one has been written "
                             "for this long, wall-clock seconds; 0 = never.")
    segment_bytes: int = Field(256 << 20, ge=0, description="Start a new file before the current one would "
                               "exceed this size, bytes; 0 = no limit.")
    keep_files: int = Field(0, ge=0, description="Per stream, delete the oldest finished files beyond this count; "
                            "0 = keep all. When set (or keep_bytes), a full disk also deletes the stream's oldest "
                            "finished file (never the newest) before each retry.")
    keep_bytes: int = Field(0, ge=0, description="Per stream, delete the oldest finished files beyond this total "
                            "size, bytes; 0 = no limit. The newest finished file is always kept.")

    _path = field_validator("path")(_plain_fields)


class Clips(StageBase):
    """Saves a short annotated MP4 around each chosen event, with a JSON sidecar: `pre_s` of
    pre-roll from a per-stream ring buffer of JPEG frames, and `post_s` after the event. An event
    that comes while its stream's clip is still being recorded extends that clip."""

    IMPLEMENTATION = "streampose.sinks.clips:ClipStage"
    ROLE = "sink"

    type: Literal["clips"]
    events: list[str] = Field(min_length=1, description="Event kinds that save a clip, e.g. [fall_confirmed].")
    pre_s: float = Field(5.0, ge=0, le=120, description="Video kept from before the event, seconds of media time "
                         "(less if max_buffer_bytes is reached first).")
    post_s: float = Field(5.0, ge=0, le=600, description="Video recorded after the (latest) event, seconds of "
                          "media time.")
    path: str = Field("clips/{stream}/{date}_{time}_{event}.mp4", description="Clip path template under the "
                      "output directory, ending in .mp4; fields {stream} (anywhere), and in the file name only "
                      "{date} (YYYYMMDD) and {time} (HHMMSS) of the event's capture, local time, {event} (its "
                      "kind) and {track} (its track id). The sidecar is the same path ending in .json. An "
                      "existing file is never overwritten: a -1, -2... suffix is added.")
    max_buffer_bytes: int = Field(64 << 20, ge=1 << 20, le=16 << 30, description="Per stream, most bytes of JPEG "
                                  "frames the pre-roll ring buffer holds; the oldest frames go first.")
    jpeg_quality: int = Field(85, ge=10, le=100, description="JPEG quality of buffered frames, 10..100.")
    crf: int = Field(23, ge=0, le=51, description="x264 constant rate factor (lower is better quality).")
    flush_s: float = Field(2.0, gt=0, le=60, description="Media time between keyframes, seconds; each ends a "
                           "fragment of the MP4, written and synced to disk, so a killed daemon keeps the clip up "
                           "to its last fragment.")
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium"] = Field(
        "ultrafast", description="x264 speed preset; the pre-roll is encoded at twice the stream's rate "
        "while a clip catches up, so the fastest is the default.")
    draw: bool = Field(True, description="Draw boxes, ids, skeletons, annotations and events.")

    _path = field_validator("path")(_plain_fields)


class MqttTls(Strict):
    """TLS to the broker (port 8883 usually)."""

    ca_file: str | None = Field(None, description="CA certificate file (PEM) the broker's certificate must chain "
                                "to, relative to the graph file; default: the system's trusted CAs.")
    cert_file: str | None = Field(None, description="Client certificate file (PEM) for brokers that require one, "
                                  "relative to the graph file.")
    key_file: str | None = Field(None, description="The client certificate's private key (PEM), relative to the "
                                 "graph file.")


class Mqtt(StageBase):
    """Publishes events, stream status, availability and (optionally) poses to an MQTT broker, with
    Home Assistant discovery: each stream becomes a device with a fall binary sensor and a repetition
    counter (docs/outputs.md#mqtt)."""

    IMPLEMENTATION = "streampose.sinks.mqtt:MqttStage"
    ROLE = "sink"

    type: Literal["mqtt"]
    host: str = Field("127.0.0.1", min_length=1, description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (1883 plain, 8883 TLS by convention).")
    username: str | None = Field(None, description="User name; use ${ENV_VAR} to keep it out of the file.")
    password: str | None = Field(None, description="Password; use ${ENV_VAR} to keep it out of the file.")
    tls: MqttTls | None = Field(None, description="TLS settings; null = plain TCP.")
    topic_prefix: str = Field("streampose", pattern=r"^[A-Za-z0-9_./-]{1,64}$", description="First level of every "
                              "topic: PREFIX/STREAM/event, PREFIX/STREAM/status, PREFIX/daemon/NODE/availability...")
    node: str | None = Field(None, description="This daemon's name in its availability topic and client id; "
                             "default: the host name (a StatefulSet pod's name), with the shard appended when "
                             "--shard is given.")
    events: list[str] | None = Field(None, description="Event kinds published on PREFIX/STREAM/event (QoS 1); "
                                     "null = every kind.")
    pose_rate_hz: float = Field(0.0, ge=0, le=100, description="Most pose messages per second per stream on "
                                "PREFIX/STREAM/pose (QoS 0, not buffered); 0 = none.")
    queue_size: int = Field(1000, ge=10, le=1_000_000, description="Most QoS 1 messages (events, status, states) "
                            "waiting for the broker's acknowledgement, buffered while it is unreachable and sent "
                            "when it returns; beyond it new messages are dropped and counted.")
    keepalive_s: int = Field(15, ge=5, le=3600, description="MQTT keepalive; the broker publishes the last will "
                             "(offline) about 1.5 times this after the daemon vanishes, seconds.")
    close_timeout_s: float = Field(5.0, ge=0, le=120, description="On stop, longest wait for buffered messages "
                                   "to be acknowledged before disconnecting, seconds.")
    home_assistant: bool = Field(True, description="Publish Home Assistant MQTT discovery configs (retained).")
    discovery_prefix: str = Field("homeassistant", pattern=r"^[A-Za-z0-9_./-]{1,64}$",
                                  description="Home Assistant's discovery topic prefix.")
    alarm_events: list[str] = Field(["fall_confirmed", "person_down"], description="Event kinds that turn the "
                                    "stream's fall binary sensor ON; fall_recovered and alarm_acknowledged turn "
                                    "it OFF.")


class Webhook(StageBase):
    """POSTs chosen events as JSON to an HTTP(S) URL, signed with HMAC-SHA256, from a bounded queue with
    retries and backoff; the pipeline never waits for the receiver (docs/outputs.md#webhooks)."""

    IMPLEMENTATION = "streampose.sinks.webhook:WebhookStage"
    ROLE = "sink"

    type: Literal["webhook"]
    url: str = Field(pattern=r"^https?://", description="Where events are POSTed, http:// or https://.")
    events: list[str] = Field(["fall_confirmed", "person_down"], min_length=1, description="Event kinds sent.")
    secret: str | None = Field(None, min_length=16, description="HMAC-SHA256 key: each request carries "
                               "X-Streampose-Signature: sha256=<hex of HMAC(secret, body)>; use ${ENV_VAR}. "
                               "null = unsigned (logged as a warning).")
    timeout_s: float = Field(5.0, gt=0, le=120, description="Longest wait for one request's answer, seconds.")
    retries: int = Field(5, ge=0, le=100, description="Further attempts after a failed one (a connection "
                         "error, a timeout, a 5xx or 429 answer); a 4xx other than 429 is not retried.")
    backoff_s: float = Field(0.5, gt=0, le=60, description="Wait before the first retry; each next wait doubles, "
                             "seconds.")
    max_backoff_s: float = Field(30.0, gt=0, le=3600, description="Longest wait between attempts, seconds.")
    queue_size: int = Field(1000, ge=1, le=1_000_000, description="Most events waiting to be sent; beyond it the "
                            "newest are dropped and counted.")


class Live(StageBase):
    """The live view: feeds annotated frames and events to the web page the daemon serves on
    runtime.metrics.bind (docs/outputs.md#live-view). A frame is drawn and JPEG-encoded only while
    someone watches its stream, once however many watch."""

    IMPLEMENTATION = "streampose.sinks.live:LiveStage"
    ROLE = "sink"

    type: Literal["live"]
    max_fps: float = Field(10.0, gt=0, le=60, description="Most frames per second encoded per watched stream.")
    width: int = Field(640, ge=64, le=3840, description="Frames wider than this are scaled down to it, pixels.")
    jpeg_quality: int = Field(75, ge=10, le=100, description="JPEG quality, 10..100.")
    events: list[str] = Field(["fall_confirmed", "person_down", "fall_recovered", "rep"],
                              description="Event kinds shown in the page's feed.")
    feed_size: int = Field(200, ge=1, le=10000, description="Most recent events the feed keeps.")
    clips: str | None = Field(None, description="Id of the clips stage whose clips the feed links; null = the "
                              "graph's first clips stage, if any.")


class ModelStage(StageBase):
    """Keys shared by stages that run a neural network."""

    # The task its model folder must do (InferConfig.task), and that task for people; None for a
    # folder without infer_cfg.yml (the pose stage's networks, checked by their files).
    MODEL_TASK: ClassVar[tuple[str, str] | None] = None
    # Runs once per person (a batch of crops per call), so its work grows with the crowd: the core
    # plan lets it run several batches at once (runtime/cores.py).
    PER_PERSON: ClassVar[bool] = False

    model: str = Field(description="Model folder: a name looked up on the model search path, or a path.")
    engine: Literal["auto", "openvino", "paddle", "onnxruntime"] = Field(
        "auto", description="Inference engine; auto picks the fastest available for the device.")
    device: Literal["cpu", "gpu"] = Field("cpu", description="Where the network runs.")
    precision: Literal["fp32", "auto", "bf16", "fp16", "int8"] = Field(
        "fp32", description="Numeric precision. auto: the engine's default on the device (OpenVINO: bf16 on a CPU "
        "with native bf16, AVX512-BF16 or AMX, else fp32; other engines fp32), about 1.4x faster there but not "
        "what the fall and repetition figures were measured at (docs/models.md); bf16: OpenVINO on such a CPU; "
        "fp16/int8: TensorRT.")
    threads: int = Field(0, ge=0, le=256, description="CPU inference threads; 0 = the graph's core plan: the "
                         "cores divided evenly among its CPU network stages, at least 1 each; a keypoint stage then "
                         "also runs its crops as up to one run per core at once when it has crops enough (its work "
                         "grows with the persons). Set, the stage runs one batch at a time on this many threads.")
    fallback: Literal["stop", "cpu"] = Field("cpu", description="When the device or precision is not available: "
                                             "stop, or run on the CPU engine instead.")
    batch: Batch = Field(default_factory=Batch, description="Batching across streams.")


class Detector(ModelStage):
    """Finds persons: PP-PicoDet (any export form), PP-YOLOE / PP-YOLOE+ (arch YOLO, with or without NMS in
    the network) or YOLOX, keeping the person class."""

    IMPLEMENTATION = "streampose.stages.detector:DetectorStage"
    STILL_IMAGES = True
    MODEL_TASK = ("detector", "a detector")

    type: Literal["detector"]
    score_threshold: float | None = Field(None, ge=0, le=1, description="Keep boxes above this score; "
                                          "default: the model's infer_cfg.yml.")
    nms_threshold: float | None = Field(None, ge=0, le=1, description="IoU for non-maximum suppression; "
                                        "default: the model's infer_cfg.yml.")
    max_persons: int = Field(100, ge=1, le=1000, description="Keep at most this many boxes per frame.")
    every_n_frames: int = Field(1, ge=1, le=100, description="Detect on every n-th frame; between them boxes come "
                                "from the previous frame's keypoints.")


class Keypoints(ModelStage):
    """Top-down keypoints: crops each person and runs a heatmap model (PP-TinyPose, HRNet)."""

    IMPLEMENTATION = "streampose.stages.keypoints:KeypointStage"
    STILL_IMAGES = True
    MODEL_TASK = ("keypoints", "a keypoint model")
    PER_PERSON = True

    type: Literal["keypoints"]
    use_dark: bool = Field(True, description="DARK sub-pixel refinement of heatmap peaks.")
    flip_test: bool = Field(False, description="Also run the mirrored crop and average (twice the cost).")
    expand_ratio: float = Field(0.3, ge=0, le=2, description="Box growth before cropping, as a fraction of its size.")
    min_box_score: float = Field(0.3, ge=0, le=1, description="Persons with a lower detection score get no keypoints.")
    max_persons: int = Field(32, ge=1, le=1000, description="Most persons per frame given keypoints (largest first).")


class Pose(ModelStage):
    """Persons and their keypoints from one network, with no detector: in place of detector +
    keypoints, it fills the same persons (17 COCO keypoints with confidences, boxes around the
    confident keypoints), so tracker, smoother, lift3d, plugins and sinks work unchanged. The model
    folder holds the network file(s) alone (docs/models.md, "Pose without a detector"):
    openpose = bottom-up multi-person (Intel's human-pose-estimation-0001, Lightweight OpenPose;
    its cost does not grow with the number of persons); movenet = MoveNet SinglePose, one person,
    each frame cropped around the previous frame's keypoints; blazepose = MediaPipe BlazePose, one
    person, detector + landmark network, with 3D joints in metres from the image (kpts3d, as
    lift3d fills them)."""

    IMPLEMENTATION = "streampose.stages.pose:PoseStage"
    STILL_IMAGES = True

    type: Literal["pose"]
    network: Literal["openpose", "movenet", "blazepose"] = Field(description="Network kind: openpose, movenet "
                                                                 "or blazepose; sets pre- and post-processing.")
    min_score: float = Field(0.2, ge=0, le=1, description="Persons whose score (mean confidence of their "
                             "keypoints; blazepose: its presence score) is lower are dropped, 0..1.")
    max_persons: int = Field(32, ge=1, le=1000, description="openpose: most persons per frame, highest score "
                             "first.")
    peak_threshold: float = Field(0.1, gt=0, le=1, description="openpose: heatmap value a joint candidate must "
                                  "exceed, 0..1.")
    follow: bool = Field(True, description="movenet, blazepose: crop each frame around the previous frame's "
                         "keypoints (Google's cropping algorithm) instead of taking the whole frame.")
    world_3d: bool = Field(True, description="blazepose: fill the 3D joints (kpts3d, metres, camera frame) from "
                           "the network's world landmarks, placed in front of the camera as lift3d places its "
                           "skeletons; then no lift3d stage is needed.")
    calib: str | dict[str, str] | None = Field(
        None, description="blazepose with world_3d: camera calibration files, as lift3d's calib.")
    assumed_hfov_deg: float = Field(60.0, gt=10, lt=170, description="blazepose with world_3d: horizontal "
                                    "field of view assumed for streams without calibration, degrees.")


class TrackerParams(LightStage):
    """Gives each person a stable integer id per stream (ByteTrack or OC-SORT), with a Kalman
    filter per person stepped by the frames' media time. Only persons of confirmed tracks go on
    downstream, ordered by id; the others are dropped. Ids start at 1 and are never reused in a
    stream; a removed track's id is listed in the frame's `ended_tracks`. Runs before or after
    the keypoint stage (OKS needs it before)."""

    IMPLEMENTATION = "streampose.stages.tracker:TrackerStage"

    type: Literal["tracker"]
    algorithm: Literal["bytetrack", "ocsort"] = Field("bytetrack", description="Association method: bytetrack "
                                                      "(two-stage high/low score matching) or ocsort "
                                                      "(observation-centric momentum, re-update and recovery).")
    min_hits: int = Field(3, ge=1, le=100, description="Matches (the first detection included) before a track "
                          "is confirmed, gets its id and is published; a tentative track that misses a frame is "
                          "dropped.")
    max_age_s: float = Field(1.0, gt=0, le=600, description="A confirmed track unmatched for longer than this "
                             "much media time is removed and its id ended, seconds.")
    high_threshold: float = Field(0.5, ge=0, le=1, description="Detections scoring at least this (0..1) are "
                                  "matched first and may start tracks.")
    low_threshold: float = Field(0.1, ge=0, le=1, description="Detections scoring from this up to high_threshold "
                                 "(0..1) only continue existing tracks; lower ones are dropped. At or above "
                                 "high_threshold: no second stage.")
    new_track_threshold: float = Field(0.6, ge=0, le=1, description="An unmatched detection starts a tentative "
                                       "track when its score reaches this and high_threshold, 0..1.")
    match_iou: float = Field(0.2, gt=0, le=1, description="Least IoU (0..1) between a track's predicted (ocsort "
                             "recovery: last seen) box and a confident detection for them to match.")
    low_match_iou: float = Field(0.5, gt=0, le=1, description="Least IoU (0..1) between a track's predicted box "
                                 "and a low-score detection for them to match.")
    use_oks: bool = Field(False, description="Pose-aware matching for crowds: blend the IoU with the object "
                          "keypoint similarity of the track's last pose (moved with its box) and the detection's, "
                          "when the tracker runs after the keypoint stage (COCO 17 keypoints). The IoU still "
                          "decides which pairs may match.")
    oks_weight: float = Field(0.5, ge=0, le=1, description="With use_oks: weight of OKS in the blend, 0..1 "
                              "(1 - oks_weight goes to IoU).")
    inertia: float = Field(0.2, ge=0, le=1, description="ocsort: weight of direction consistency in the first "
                           "matching; a detection straight ahead of a track gains up to inertia/2 x its score.")
    momentum_window_s: float = Field(0.1, gt=0, le=5, description="ocsort: a track's direction of travel is "
                                     "measured from its observation about this long ago, seconds.")
    cut_threshold: float = Field(0.75, ge=-1, le=1, description="A frame whose grey layout correlates less than "
                                 "this (-1..1) with the stream's previous frame's, at the best of small shifts, is a "
                                 "hard cut to another scene: every track of the stream ends there and new ids start. "
                                 "-1 = never. On the 48 labelled videos the cuts and jump zooms of edited footage "
                                 "measure -0.13-0.71, consecutive frames of one shot at least 0.83. Frames more "
                                 "than 0.07 s apart must also differ outside the detected persons' boxes "
                                 "(streampose.tracking.cuts).")


class SmoothingPixels(Strict):
    """Filter settings for 2D keypoints, in pixels."""

    min_cutoff_hz: float = Field(1.0, gt=0, le=100, description="OneEuro: cutoff frequency of a joint at rest, "
                                 "Hz; lower removes more jitter but lags slow motion more.")
    beta: float = Field(3.0, ge=0, le=1000, description="OneEuro: cutoff added per unit of joint speed, Hz per "
                        "(person size per second), the person size being the box diagonal in pixels, so one "
                        "value fits near and far people; higher follows fast motion more closely.")
    d_cutoff_hz: float = Field(4.0, gt=0, le=100, description="OneEuro: cutoff frequency of the joint speed "
                               "estimate, Hz.")
    alpha: float = Field(0.5, gt=0, le=1, description="EMA: weight of the newest sample when frames are 1/30 s "
                         "apart (other intervals keep the same time constant); 1 = no smoothing.")


class SmoothingMetres(SmoothingPixels):
    """Filter settings for 3D joints, in metres."""

    beta: float = Field(1.7, ge=0, le=1000, description="OneEuro: cutoff added per unit of joint speed, Hz per "
                        "(metre per second); higher follows fast motion more closely. The default matches the "
                        "pixels default for a person 1.8 m tall.")


class Smoother(LightStage):
    """Smooths keypoints over time per track and joint (OneEuro or EMA), from media timestamps: 2D
    keypoints, and 3D joints when a 3D stage ran before. Untracked persons (track id -1) pass
    through unsmoothed. A joint's filter restarts after a gap; a low-confidence joint is held at
    its last smoothed position with a decaying confidence instead of moving the filter."""

    IMPLEMENTATION = "streampose.stages.smoother:SmootherStage"

    type: Literal["smoother"]
    filter: Literal["one_euro", "ema"] = Field("one_euro", description="Filter kind: one_euro (smooths more at "
                                               "rest, less in fast motion) or ema (fixed smoothing).")
    pixels: SmoothingPixels = Field(default_factory=SmoothingPixels, description="Settings for 2D keypoints.")
    metres: SmoothingMetres = Field(default_factory=SmoothingMetres, description="Settings for 3D joints.")
    min_confidence: float = Field(0.3, ge=0, le=1, description="Joints less confident than this do not update "
                                  "the filter: their last smoothed position is held.")
    hold_half_life_s: float = Field(0.2, gt=0, le=60, description="A held joint's confidence halves every this "
                                    "many seconds; once below the joint's own confidence, or after reset_gap_s, "
                                    "the raw joint passes through.")
    reset_gap_s: float = Field(0.5, gt=0, le=60, description="A joint not updated for longer than this (a gap in "
                               "media time, a long occlusion) starts afresh at its next observation, seconds.")
    max_tracks: int = Field(256, ge=1, le=4096, description="Per stream, most tracks with filter state; beyond "
                            "it the least recently seen track's state is dropped (the tracker normally frees "
                            "ended tracks first).")


class Lift3D(ModelStage, LightStage):
    """Lifts each person's 2D keypoints to 3D joints in metres in the camera frame (x right, y down,
    z forward): a network maps a window of each track's recent 2D poses to a root-relative 3D
    skeleton, which is placed in front of the camera from the person's assumed height (or on the
    floor, when the camera's calibration gives one)."""

    IMPLEMENTATION = "streampose.stages.lift3d:Lift3DStage"
    MODEL_TASK = ("lifter", "a 2D->3D lifter")

    type: Literal["lift3d"]
    model: str = Field("lifter_coco17", description="Lifter model folder (train one with `python -m "
                       "trainers.lifter.train`): a name looked up on the model search path, or a path.")
    calib: str | dict[str, str] | None = Field(
        None, description="Camera calibration files (`streampose calib camera`): a mapping stream id -> file, "
        "or a folder holding <stream id>.yml; relative paths resolve against the graph file. A stream "
        "without one gets the assumed field of view (logged).")
    assumed_hfov_deg: float = Field(60.0, gt=10, lt=170, description="Horizontal field of view assumed for "
                                    "streams without calibration, degrees (typical webcam 60-70, wide CCTV 90-110).")
    person_height_m: float = Field(1.70, ge=0.5, le=2.5, description="Standing height assumed for every person, "
                                   "metres; sets the distance of persons from the camera (10% taller = 10% farther).")
    placement: Literal["auto", "height"] = Field(
        "auto", description="How the 3D skeleton is placed: auto = feet on the floor where the calibration "
        "gives camera_height_m or ground_plane (then the person's size is measured too) and the feet are "
        "seen, else from person_height_m; height = always from person_height_m.")
    min_confidence: float = Field(0.3, ge=0, le=1, description="2D joints less confident than this do not count "
                                  "for placement or for min_joints, 0..1.")
    min_joints: int = Field(6, ge=2, le=17, description="Persons with fewer confident 2D joints get no 3D joints "
                            "(kpts3d confidence 0).")


class JdeDetector(ModelStage):
    """Detects and tracks persons in one network: a FairMOT or JDE export of PaddleDetection (infer_cfg.yml
    with arch FairMOT or JDE, LetterBoxResize pre-processing and a `tracker:` section). The network gives
    every person a box and an appearance embedding; tracks are matched as PaddleDetection's JDETracker
    matches them: by embedding distance fused with a Kalman filter's distance (never beyond its 95% gate),
    then by box overlap. The association settings (conf_thres, det_thresh, tracked_thresh,
    r_tracked_thresh, unconfirmed_thresh, metric_type, track_buffer, min_box_area, vertical_ratio) come
    from the model's `tracker:` section. As after the tracker stage, only persons of confirmed tracks go
    on, ordered by id, with their track ids; ids start at 1 and are never reused in a stream, and a
    removed track's id is listed in the frame's `ended_tracks`. These networks take one frame at a time:
    a batch of frames runs through the network frame by frame."""

    IMPLEMENTATION = "streampose.stages.jde:JdeStage"
    MODEL_TASK = ("jde", "a joint detection-embedding (FairMOT or JDE) export")

    type: Literal["jde"]
    min_hits: int = Field(2, ge=1, le=100, description="Matches (the first detection included) before a track "
                          "is confirmed, gets its id and is published; a tentative track that misses a frame is "
                          "dropped. 2 is PaddleDetection's rule.")
    max_age_s: float | None = Field(None, gt=0, le=600, description="A confirmed track unmatched for longer than "
                                    "this much media time is removed and its id ended, seconds; default: the "
                                    "tracker section's track_buffer frames at 30 fps (PaddleDetection's 30 = 1 s).")
    conf_threshold: float | None = Field(None, ge=0, le=1, description="Detections scoring this or less (0..1) "
                                         "are ignored; default: the tracker section's conf_thres.")


class Plugin(LightStage):
    """Runs a plugin (fall detection, repetition counting, your own) on each frame's tracked persons."""

    IMPLEMENTATION = "streampose.plugins.stage:PluginStage"

    type: Literal["plugin"]
    plugin: str | None = Field(None, description="A shipped plugin by name (fall, reps, hand_raised) or an "
                               "entry point in the `streampose.plugins` group.")
    module: str | None = Field(None, description="Your plugin class as `package.module:ClassName`.")
    params: dict = Field(default_factory=dict, description="The plugin's own parameters, validated by its schema.")


StageSpec = Annotated[Union[tuple(STAGE_TYPES.values())], Field(discriminator="type")]  # noqa: UP007


class Graph(Strict):
    """A graph file: sources, then stages, and how the runtime runs them."""

    sources: list[Source] = Field(min_length=1, description="Video inputs.")
    stages: list[StageSpec] = Field(min_length=1, description="Processing stages, in order.")
    runtime: Runtime = Field(default_factory=Runtime, description="Runtime settings.")
