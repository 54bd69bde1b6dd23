"""Subscribing to a streampose publisher from Python, and the `streampose subscribe` command.

    from streampose.client import Subscriber

    with Subscriber("tcp://127.0.0.1:5555", topics=("pose/cam1",)) as sub:
        for msg in sub:
            print(msg.stream, msg.frame, msg.boxes.shape, msg.latency)

Topics are ZeroMQ prefixes: "pose/" is every stream's poses, and "pose/cam1"
also matches "pose/cam10" (compare `msg.stream` when ids share a prefix).

Latest-only (`conflate=True`): ZeroMQ's own CONFLATE option keeps one message
*frame*, not one message, so it would tear the [topic, payload] pairs apart.
Instead the subscriber drains everything queued on each receive and hands out
only the newest message of each topic, older ones being dropped; the queue is
ZeroMQ's receive buffer (RCVHWM messages), so memory stays bounded.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq
import zmq.auth

from streampose import messages
from streampose.frame import NUM_KEYPOINTS

log = logging.getLogger("streampose.client")

# Upper bound on messages taken off the socket in one latest-only drain, so a
# publisher faster than the drain cannot keep it looping.
MAX_DRAIN = 10_000
_DEFAULT = object()


@dataclass
class PoseMessage:
    """Every person of one frame (see docs/messages.md).

    boxes:       (N, 4) float32, x1, y1, x2, y2 in pixels.
    scores:      (N,) float32, detection confidence 0..1.
    track_ids:   (N,) int64, -1 when untracked.
    keypoints:   (N, 17, 3) float32, x, y in pixels and confidence; None when the
                 frame has no persons or no keypoint stage ran.
    pose_scores: (N,) float32 mean keypoint confidence; None with keypoints.
    kpts3d:      (N, 17, 4) float32, x, y, z in metres and confidence; None when absent.
    annotations: one dict per person from plugins.
    timings:     stage id -> seconds.
    latency:     seconds from capture to publication.
    """

    stream: str
    frame: int
    segment: int
    capture_time: float
    media_time: float
    latency: float
    width: int
    height: int
    boxes: np.ndarray
    scores: np.ndarray
    track_ids: np.ndarray
    keypoints: np.ndarray | None
    pose_scores: np.ndarray | None
    kpts3d: np.ndarray | None
    annotations: list[dict]
    timings: dict[str, float]
    failed_stages: list[str]


@dataclass
class EventMessage:
    """Something a plugin noticed on frame `frame` (e.g. kind "fall_confirmed"); frame None:
    raised outside any frame (a track ended at a stream gap or at shutdown)."""

    stream: str
    frame: int | None
    capture_time: float
    media_time: float
    latency: float
    kind: str
    track_id: int
    score: float
    data: dict


@dataclass
class StatusMessage:
    """A stream opened, was lost or ended; `wall_time` is when, in time.time() seconds;
    `failed`: it ended because its source could not be read."""

    stream: str
    kind: str
    segment: int
    wall_time: float
    detail: str
    failed: bool = False


Message = PoseMessage | EventMessage | StatusMessage


def parse_message(msg: dict) -> Message:
    """The typed form of a decoded message dict (from a socket or a JSONL line)."""
    if msg.get("v") != messages.SCHEMA_VERSION:
        raise ValueError(f"unsupported message schema version {msg.get('v')!r} "
                         f"(this client reads version {messages.SCHEMA_VERSION})")
    kind = msg.get("type")
    try:
        if kind == "pose":
            return _parse_pose(msg)
        if kind == "event":
            return EventMessage(**{name: msg[name] for name in EventMessage.__dataclass_fields__})
        if kind == "status":
            return StatusMessage(**{name: msg[name] for name in ("stream", "kind", "segment", "wall_time", "detail")},
                                 failed=bool(msg.get("failed", False)))  # older daemons leave it out
    except KeyError as err:
        raise ValueError(f"{kind} message lacks field {err}") from err
    except (TypeError, IndexError) as err:
        raise ValueError(f"malformed {kind} message: {err}") from err
    raise ValueError(f"unknown message type {kind!r}; expected one of {messages.KINDS}")


def _parse_pose(msg: dict) -> PoseMessage:
    persons = msg["persons"]
    n = len(persons)

    def stacked(key: str, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray | None:
        values = [person[key] for person in persons]
        if n == 0 or any(value is None for value in values):
            return None
        return np.array(values, dtype).reshape(n, *shape)

    return PoseMessage(
        stream=msg["stream"], frame=msg["frame"], segment=msg["segment"],
        capture_time=msg["capture_time"], media_time=msg["media_time"], latency=msg["latency"],
        width=msg["width"], height=msg["height"],
        boxes=np.array([p["box"] for p in persons], np.float32).reshape(n, 4),
        scores=np.array([p["score"] for p in persons], np.float32).reshape(n),
        track_ids=np.array([p["track_id"] for p in persons], np.int64).reshape(n),
        keypoints=stacked("keypoints", (NUM_KEYPOINTS, 3)),
        pose_scores=stacked("pose_score", ()),
        kpts3d=stacked("kpts3d", (NUM_KEYPOINTS, 4)),
        annotations=[p["annotations"] for p in persons],
        timings=msg["timings"], failed_stages=msg["failed_stages"],
    )


class Subscriber:
    """A ZeroMQ SUB socket connected to a streampose publisher.

    address:           the publisher's endpoint, e.g. "tcp://127.0.0.1:5555".
    topics:            topic prefixes to receive ("pose/", "event/cam1", "" for all).
    conflate:          latest-only: hand out only the newest queued message per topic.
    server_public_key: the publisher's CURVE public key, as a key file (publisher.key)
                       or the 40-character Z85 key; required if the publisher uses CURVE.
    timeout_s:         default wait of recv(), seconds; None waits forever. Iteration
                       ends when a receive times out.

    Like any ZeroMQ socket it must be used from one thread at a time. Messages
    published before the connection and subscription reach the publisher are not
    received (ZeroMQ's "slow joiner").
    """

    def __init__(self, address: str, topics: Iterable[str] = ("pose/",), conflate: bool = False,
                 server_public_key: str | bytes | os.PathLike | None = None, timeout_s: float | None = None):
        if isinstance(topics, str):  # a bare string would subscribe to each of its characters
            topics = (topics,)
        self.address = _checked_address(address)
        self.timeout_s = timeout_s
        self._conflate = conflate
        self._latest: dict[bytes, bytes] = {}
        self._socket = zmq.Context.instance().socket(zmq.SUB)
        self._socket.linger = 0
        try:
            if server_public_key is not None:
                public, secret = zmq.curve_keypair()
                self._socket.curve_serverkey = _public_key(server_public_key)
                self._socket.curve_publickey = public
                self._socket.curve_secretkey = secret
            for topic in topics:
                self._socket.setsockopt_string(zmq.SUBSCRIBE, topic)
            self._socket.connect(address)
        except zmq.ZMQError as err:
            self._socket.close()
            raise ValueError(f"cannot connect to {address!r}: {err}") from err
        except Exception:
            self._socket.close()
            raise

    def recv(self, timeout_s: float | None = _DEFAULT) -> Message | None:
        """The next message, or None if none came within `timeout_s` seconds (default:
        the subscriber's timeout_s; None waits forever). Messages that do not decode,
        or are of an unknown version or type, are logged and skipped."""
        received = self._recv(timeout_s)
        return None if received is None else received[2]

    def recv_dict(self, timeout_s: float | None = _DEFAULT) -> tuple[str, dict] | None:
        """Like recv, but the message as (topic, decoded dict), as published."""
        received = self._recv(timeout_s)
        return None if received is None else received[:2]

    def _recv(self, timeout_s: float | None) -> tuple[str, dict, Message] | None:
        timeout_s = self.timeout_s if timeout_s is _DEFAULT else timeout_s
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            wait_ms = None if deadline is None else max(0, round((deadline - time.monotonic()) * 1000))
            parts = self._next_parts(wait_ms)
            if parts is None:
                return None
            if len(parts) != 2:  # [] when a latest-only drain found only malformed messages
                if parts:
                    log.warning("skipped a message of %d parts from %s (expected [topic, payload])",
                                len(parts), self.address)
                continue
            topic = parts[0].decode(errors="replace")
            try:
                msg = messages.decode(parts[1])
                return topic, msg, parse_message(msg)
            except ValueError as err:
                log.warning("skipped a message on %r from %s: %s", topic, self.address, err)

    def _next_parts(self, wait_ms: int | None) -> list[bytes] | None:
        if not self._conflate:
            return self._socket.recv_multipart() if self._socket.poll(wait_ms) else None
        self._drain()
        if not self._latest:
            if not self._socket.poll(wait_ms):
                return None
            self._drain()
            if not self._latest:
                return []
        topic = next(iter(self._latest))
        return [topic, self._latest.pop(topic)]

    def _drain(self) -> None:
        for _ in range(MAX_DRAIN):
            try:
                parts = self._socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(parts) == 2:
                self._latest[parts[0]] = parts[1]
            else:
                log.warning("skipped a message of %d parts from %s", len(parts), self.address)

    def __iter__(self) -> Iterator[Message]:
        while (msg := self.recv()) is not None:
            yield msg

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _checked_address(address: str) -> str:
    """`address` when it is a publisher endpoint; a ValueError saying how to write it when
    its scheme is missing or wrong (ZeroMQ's own error only says "Invalid argument")."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        raise ValueError(f"address {address!r} has no scheme (did you mean 'tcp://{address}'?)")
    if scheme not in ("tcp", "ipc"):
        raise ValueError(f"address {address!r}: unknown scheme '{scheme}://' (did you mean 'tcp://{rest}'?); "
                         f"a publisher listens on tcp://HOST:PORT or ipc://PATH")
    return address


def _public_key(key: str | bytes | os.PathLike) -> bytes:
    if isinstance(key, bytes):
        return key
    if Path(key).is_file():
        return zmq.auth.load_certificate(key)[0]
    if isinstance(key, str) and len(key) == 40:
        return key.encode()
    raise ValueError(f"server_public_key {key!r} is neither a key file nor a 40-character Z85 key")


# --------------------------------------------------------------------------- CLI

def add_subscribe_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `subscribe` to a CLI's subcommands; its handler is `args.func(args) -> exit code`."""
    parser = subparsers.add_parser(
        "subscribe", help="print messages from a publisher",
        description="Print one line per message (stream, frame, persons, latency), or the full JSON.")
    parser.add_argument("address", help="publisher endpoint, e.g. tcp://127.0.0.1:5555")
    parser.add_argument("--topic", action="append", dest="topics", metavar="PREFIX",
                        help="topic prefix to receive, e.g. pose/cam1 (repeatable; default: pose/, event/ "
                        "and status/ of every stream)")
    parser.add_argument("--json", action="store_true", help="print each message as one line of JSON")
    parser.add_argument("--count", type=int, metavar="N", help="exit after N messages")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="exit (status 1 if fewer than --count arrived) after this long without a message")
    parser.add_argument("--latest", action="store_true", help="skip to the newest message of each topic "
                        "when printing falls behind")
    parser.add_argument("--server-key", metavar="FILE", help="the publisher's CURVE public key file "
                        "(publisher.key from `streampose keys`)")
    parser.set_defaults(func=subscribe_main)
    return parser


def subscribe_main(args: argparse.Namespace) -> int:
    topics = args.topics or ["pose/", "event/", "status/"]
    received = 0
    try:
        subscriber = Subscriber(args.address, topics, conflate=args.latest, server_public_key=args.server_key,
                                timeout_s=args.timeout)
    except ValueError as error:  # a bad address or key: the user's to fix, not a crash
        print(f"streampose subscribe: {error}", file=sys.stderr)
        return 2
    try:
        with subscriber as sub:
            while args.count is None or received < args.count:
                got = sub.recv_dict()
                if got is None:
                    print(f"no message for {args.timeout} s from {args.address}", file=sys.stderr)
                    return 1 if received == 0 or args.count is not None else 0
                msg = got[1]
                print(json.dumps(msg, separators=(",", ":")) if args.json else summary(parse_message(msg)),
                      flush=True)
                received += 1
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # the reader (e.g. `| head`) went away; keep the exit-time flush quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def summary(msg: Message) -> str:
    """One line describing `msg`, for people watching a stream."""
    if isinstance(msg, PoseMessage):
        with_kpts = "" if msg.keypoints is None else " with keypoints"
        return (f"pose   {msg.stream}  frame {msg.frame}  persons {len(msg.boxes)}{with_kpts}  "
                f"latency {msg.latency * 1000:.1f} ms")
    if isinstance(msg, EventMessage):
        where = "no frame" if msg.frame is None else f"frame {msg.frame}"
        return (f"event  {msg.stream}  {where}  {msg.kind}  track {msg.track_id}  "
                f"score {msg.score:.2f}  latency {msg.latency * 1000:.1f} ms")
    detail = f"  {msg.detail}" if msg.detail else ""
    return f"status {msg.stream}  {msg.kind}  segment {msg.segment}{detail}"
