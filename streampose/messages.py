"""The messages streampose publishes, as plain JSON-compatible dicts, and their encoding.

Three kinds, each on its own ZeroMQ topic (docs/messages.md documents every field;
streampose/message_schema.json is the JSON Schema they follow):

- pose   (`pose/<stream>`):   every person of one frame.
- event  (`event/<stream>`):  something a plugin noticed on a frame.
- status (`status/<stream>`): a change in a stream's life (opened, lost, ended).

Floats are rounded to what their unit can meaningfully resolve (pixels to 0.01,
scores to 0.001, metres to 0.001, durations to 1 microsecond) so JSON payloads
stay small. A payload is msgpack (default) or compact UTF-8 JSON; `decode` tells
them apart by the first byte, since every message is a map and a JSON object
starts with "{" (which in msgpack would be a bare integer, never a message).
"""

from __future__ import annotations

import functools
import json
import threading
import time
from importlib import resources
from itertools import repeat
from typing import Literal

import msgpack
import numpy as np

from streampose.frame import Event, Frame, StreamEvent

SCHEMA_VERSION = 1
KINDS = ("pose", "event", "status")
FORMATS = ("msgpack", "json")
Format = Literal["msgpack", "json"]

PX_DECIMALS = 2
SCORE_DECIMALS = 3
METRE_DECIMALS = 3
SECOND_DECIMALS = 6

_FLOAT32_PERSON_FIELDS = frozenset({"box", "score", "keypoints", "pose_score", "kpts3d"})
_packers = threading.local()  # see _thread_packers


def topic(kind: str, stream: str) -> str:
    """The ZeroMQ topic of a message: "pose/cam1", "event/cam1", "status/cam1"."""
    return f"{kind}/{stream}"


def pose_message(frame: Frame, now: float | None = None) -> dict:
    """The pose message of `frame`; `latency` is `now` (default: time.time()) minus capture."""
    persons = frame.persons
    boxes = np.round(persons.boxes.astype(np.float64), PX_DECIMALS).tolist()
    scores = np.round(persons.scores.astype(np.float64), SCORE_DECIMALS).tolist()
    keypoints = pose_scores = kpts3d = repeat(None)
    if persons.keypoints is not None:
        keypoints = _round_columns(persons.keypoints, (PX_DECIMALS, PX_DECIMALS, SCORE_DECIMALS)).tolist()
    if persons.pose_scores is not None:
        pose_scores = np.round(persons.pose_scores.astype(np.float64), SCORE_DECIMALS).tolist()
    if persons.kpts3d is not None:
        kpts3d = _round_columns(persons.kpts3d, (METRE_DECIMALS,) * 3 + (SCORE_DECIMALS,)).tolist()
    now = time.time() if now is None else now
    return {
        "v": SCHEMA_VERSION,
        "type": "pose",
        "stream": frame.stream,
        "frame": int(frame.index),
        "segment": int(frame.segment),
        "capture_time": round(float(frame.capture_time), SECOND_DECIMALS),
        "media_time": round(float(frame.media_time), SECOND_DECIMALS),
        "latency": round(now - float(frame.capture_time), SECOND_DECIMALS),
        "width": frame.width,
        "height": frame.height,
        "timings": {stage: round(float(s), SECOND_DECIMALS) for stage, s in frame.timings.items()},
        "failed_stages": list(frame.failed_stages),
        "ended_tracks": [int(t) for t in frame.ended_tracks],
        "persons": [
            {"track_id": track_id, "box": box, "score": score, "keypoints": kpts,
             "pose_score": pose_score, "kpts3d": k3d, "annotations": annotations}
            for track_id, box, score, kpts, pose_score, k3d, annotations in zip(
                persons.track_ids.tolist(), boxes, scores, keypoints, pose_scores, kpts3d,
                persons.annotations)
        ],
    }


def encoded_pose(frame: Frame, fmt: Format) -> bytes:
    """`frame`'s pose message encoded in `fmt`, built once per frame and format however many
    sinks ask (kept in `frame.encoded`; its latency is capture to the first encoding). A JSON
    message of 4 persons with keypoints and 3D joints costs 0.14 ms of CPU (msgpack less), so
    a publisher and a jsonl sink in JSON spent 0.28 ms a frame on it before, 0.14 ms now."""
    payload = frame.encoded.get(fmt)
    if payload is None:
        payload = frame.encoded[fmt] = encode(pose_message(frame), fmt)
    return payload


def event_message(event: Event, frame_index: int | None, now: float | None = None) -> dict:
    """The message of `event`, raised on frame `frame_index` of its stream (None: raised outside
    any frame, e.g. a track ended at a stream gap)."""
    now = time.time() if now is None else now
    return {
        "v": SCHEMA_VERSION,
        "type": "event",
        "stream": event.stream,
        "frame": None if frame_index is None else int(frame_index),
        "capture_time": round(float(event.capture_time), SECOND_DECIMALS),
        "media_time": round(float(event.media_time), SECOND_DECIMALS),
        "latency": round(now - float(event.capture_time), SECOND_DECIMALS),
        "kind": event.kind,
        "track_id": int(event.track_id),
        "score": round(float(event.score), SCORE_DECIMALS),
        "data": event.data,
    }


def status_message(event: StreamEvent) -> dict:
    """The message of a stream's change of state. It belongs to no frame, so it carries
    the wall time of the change and the segment frames will carry from now on."""
    return {
        "v": SCHEMA_VERSION,
        "type": "status",
        "stream": event.stream,
        "kind": event.kind,
        "segment": int(event.segment),
        "wall_time": round(float(event.wall_time), SECOND_DECIMALS),
        "detail": event.detail,
        "failed": event.failed,
    }


def encode(msg: dict, fmt: Format = "msgpack") -> bytes:
    """`msg` as msgpack or compact JSON bytes. Numpy scalars and arrays that plugins
    left in annotations or event data are converted; NaN and infinity are refused
    (JSON cannot carry them)."""
    if fmt == "msgpack":
        return _pack_msgpack(msg)
    if fmt == "json":
        return json.dumps(msg, separators=(",", ":"), allow_nan=False, default=_builtin).encode()
    raise ValueError(f"unknown message format {fmt!r}; expected one of {FORMATS}")


def decode(payload: bytes) -> dict:
    """The message in a msgpack or JSON payload (detected). Raises ValueError if it is neither."""
    try:
        if payload[:1] == b"{":
            msg = json.loads(payload)
        else:
            msg = msgpack.unpackb(payload, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as err:
        raise ValueError(f"payload of {len(payload)} bytes is neither msgpack nor JSON: {err}") from err
    if not isinstance(msg, dict):
        raise ValueError(f"payload holds a {type(msg).__name__}, not a message map")
    return msg


@functools.cache
def message_schema() -> dict:
    """The JSON Schema (draft 2020-12) all messages follow."""
    return json.loads(resources.files("streampose").joinpath("message_schema.json").read_text())


def _pack_msgpack(msg: dict) -> bytes:
    """msgpack of `msg`, with each person's geometry and scores as float32 (7 significant
    digits: 0.001 px up to 8192 px) instead of float64, which nearly halves a pose
    payload; times and everything else stay float64."""
    double, single = _thread_packers()
    persons = msg.get("persons") if msg.get("type") == "pose" else None
    if persons is None:
        return double.pack(msg)
    out = [double.pack_map_header(len(msg))]
    for key, value in msg.items():
        out.append(double.pack(key))
        if key != "persons":
            out.append(double.pack(value))
            continue
        out.append(double.pack_array_header(len(persons)))
        for person in persons:
            out.append(double.pack_map_header(len(person)))
            for field, item in person.items():
                packer = single if field in _FLOAT32_PERSON_FIELDS else double
                out += (packer.pack(field), packer.pack(item))
    return b"".join(out)


def _thread_packers() -> tuple[msgpack.Packer, msgpack.Packer]:
    """This thread's (float64, float32) packers. Made once per thread rather than per
    message, since each allocates a 256 KiB buffer (making the pair took most of a small
    message's encoding time); not shared between threads, since sinks in different
    threads encode at once and a Packer packs into its one buffer."""
    packers = getattr(_packers, "pair", None)
    if packers is None:
        packers = _packers.pair = (msgpack.Packer(use_bin_type=True, default=_builtin),
                                   msgpack.Packer(use_bin_type=True, default=_builtin, use_single_float=True))
    return packers


def _round_columns(array: np.ndarray, decimals: tuple[int, ...]) -> np.ndarray:
    """`array` (..., C) as float64 with column c rounded to decimals[c]."""
    scale = 10.0 ** np.array(decimals)
    return np.round(array.astype(np.float64) * scale) / scale


def _builtin(value):
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot encode {type(value).__name__} in a message; use JSON-compatible values")
