"""Publishes every frame's poses, plugin events and stream status on a ZeroMQ PUB socket.

Each message is two frames, [topic, payload]: topic "pose/<stream>",
"event/<stream>" or "status/<stream>" (UTF-8), payload a message of
streampose.messages in msgpack or JSON. PUB never blocks the graph: a subscriber
that falls `send_hwm` messages behind loses messages, the others do not wait.

With `curve_secret_key` the socket is a CURVE server: traffic is encrypted and a
subscriber must know the server's public key to complete the handshake. There is
no allow-list of client keys; whoever holds the public key may subscribe.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.auth

from streampose import messages
from streampose.frame import Event, Frame, StreamEvent
from streampose.graph import schema
from streampose.runtime.stage import Stage, StageContext

# Long enough for the last messages (an "ended" status) to leave, short enough not
# to hold up shutdown when a subscriber is gone.
CLOSE_LINGER_MS = 500
KEY_NAME = "publisher"


class PublisherStage(Stage):
    def __init__(self, stage_id: str, params: schema.Publisher, context: StageContext):
        super().__init__(stage_id, params, context)
        self._format = params.format
        self._socket = zmq.Context.instance().socket(zmq.PUB)
        try:
            self._socket.sndhwm = params.send_hwm
            if params.curve_secret_key is not None:
                self._make_curve_server(context.graph_dir / params.curve_secret_key)
            elif not _is_local(params.bind):
                self.log.warning(
                    "publisher %s binds %s without CURVE: anyone who can reach it can read every "
                    "message; set curve_secret_key (keys from `streampose keys DIR`) or bind "
                    "tcp://127.0.0.1", stage_id, params.bind)
            self._socket.bind(params.bind)
        except zmq.ZMQError as err:
            self._socket.close(linger=0)
            if err.errno == zmq.EADDRINUSE:
                raise RuntimeError(f"publisher {stage_id}: cannot bind {params.bind!r}: the address is in use "
                                   f"(another streampose running?); stop that program or give the publisher "
                                   f"another port in its bind") from err
            raise RuntimeError(f"publisher {stage_id}: cannot bind {params.bind!r}: {err.strerror}") from err
        except Exception:
            self._socket.close(linger=0)
            raise
        self.endpoint: str = self._socket.last_endpoint.decode()
        self.log.info("publishing %s messages on %s", self._format, self.endpoint)

    def _make_curve_server(self, secret_file: Path) -> None:
        if not secret_file.is_file():
            raise FileNotFoundError(f"publisher {self.id}: curve_secret_key file not found: {secret_file}")
        try:
            public, secret = zmq.auth.load_certificate(secret_file)
        except ValueError as err:
            raise ValueError(f"publisher {self.id}: curve_secret_key {secret_file} is not a ZeroMQ "
                             f"certificate: {err}") from err
        if secret is None:
            raise ValueError(f"publisher {self.id}: curve_secret_key {secret_file} holds only a public key; "
                             f"give the secret file ({KEY_NAME}.key_secret)")
        self._socket.curve_secretkey = secret
        self._socket.curve_publickey = public
        self._socket.curve_server = True

    def process(self, frames: list[Frame]) -> None:
        for frame in frames:
            self._send_payload("pose", frame.stream, messages.encoded_pose(frame, self._format))
            self._send_events(frame.events, frame.index)

    def on_events(self, stream: str, events: list[Event]) -> None:
        self._send_events(events, None)

    def _send_events(self, events: list[Event], frame_index: int | None) -> None:
        for event in events:
            self._send("event", event.stream, messages.event_message(event, frame_index))

    def on_stream_event(self, event: StreamEvent) -> None:
        self._send("status", event.stream, messages.status_message(event))

    def _send(self, kind: str, stream: str, msg: dict) -> None:
        self._send_payload(kind, stream, messages.encode(msg, self._format))

    def _send_payload(self, kind: str, stream: str, payload: bytes) -> None:
        self._socket.send_multipart([messages.topic(kind, stream).encode(), payload])
        self.context.metrics.inc("published", kind=kind)

    def close(self) -> None:
        self._socket.close(linger=CLOSE_LINGER_MS)


def make_curve_keys(directory: str | os.PathLike) -> tuple[Path, Path]:
    """Create a CURVE key pair in `directory` (made if missing, owner-only) for a publisher:
    (public key file `publisher.key` for subscribers, secret key file
    `publisher.key_secret` for curve_secret_key). Refuses to overwrite existing keys,
    since subscribers holding the old public key would silently stop receiving."""
    directory = Path(directory)
    public_file, secret_file = directory / f"{KEY_NAME}.key", directory / f"{KEY_NAME}.key_secret"
    for path in (public_file, secret_file):
        if path.exists():
            raise FileExistsError(f"{path} exists; remove it first to make new keys")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    zmq.auth.create_certificates(directory, KEY_NAME)
    secret_file.chmod(0o600)
    return public_file, secret_file


def _is_local(endpoint: str) -> bool:
    """Whether only this machine can reach `endpoint` (ipc://, or tcp:// on loopback)."""
    if endpoint.startswith("ipc://"):
        return True
    host = urlsplit(endpoint).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name or a host name: assume reachable
        return False
