"""Publishes events, stream status, availability and optional poses to an MQTT broker, with
Home Assistant discovery.

Topics (PREFIX is `topic_prefix`, NODE this daemon's name; payloads are JSON unless said):

    PREFIX/daemon/NODE/availability  "online" / "offline", retained; "offline" is the last will,
                                     so the broker says it when the daemon vanishes
    PREFIX/STREAM/event              each event, as on ZeroMQ's event/STREAM (docs/messages.md), QoS 1
    PREFIX/STREAM/status             each change of the stream's life (opened, lost, ended), retained, QoS 1
    PREFIX/STREAM/fall               "ON" / "OFF", retained: an alarm event is up (Home Assistant state)
    PREFIX/STREAM/reps               the latest repetition count, retained (Home Assistant state)
    PREFIX/STREAM/pose               pose messages at most pose_rate_hz, QoS 0 (dropped while offline)
    DISCOVERY/binary_sensor/streampose_STREAM/fall/config and DISCOVERY/sensor/streampose_STREAM/reps/config
                                     Home Assistant discovery, retained

Delivery: QoS 1 messages stay in paho's queue until the broker acknowledges them, and while the
broker is unreachable they wait there (at most `queue_size`; beyond it new ones are dropped and
counted) and go out when it returns. Publishing only appends to that queue, so the pipeline
never waits for the network.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import threading
import time
from collections import OrderedDict

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from streampose import __version__, messages, shard
from streampose.frame import Event, Frame, StreamEvent
from streampose.graph import schema
from streampose.runtime.stage import Stage, StageContext

ACK_EVENTS = ("fall_recovered", "alarm_acknowledged")  # events that turn the fall sensor OFF
EARLY_ACKS = 64  # PUBACKs kept until their publish call has registered the message


class MqttStage(Stage):
    params: schema.Mqtt

    def __init__(self, stage_id: str, params: schema.Mqtt, context: StageContext):
        super().__init__(stage_id, params, context)
        p = params
        current = shard.from_environment()
        self.node = p.node or socket.gethostname() + (f"-shard{current.index}of{current.count}" if current else "")
        self.availability = f"{p.topic_prefix}/daemon/{self.node}/availability"
        self._kinds = None if p.events is None else frozenset(p.events)
        self._alarms = frozenset(p.alarm_events)
        self._pose_every = 1.0 / p.pose_rate_hz if p.pose_rate_hz else None
        self._last_pose = self.per_stream(lambda: [None])  # [media time of the stream's last published pose]
        self._pending: dict[int, float] = {}  # mid -> capture time of an event awaiting its PUBACK
        self._acked_early: OrderedDict[int, float] = OrderedDict()  # mid -> time.time() of a PUBACK not matched yet
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._failing = False  # connection attempts failing since the last success (logged once)

        client = self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"streampose-{self.node}",
                                           protocol=paho.MQTTv311, clean_session=True)
        client.max_queued_messages_set(p.queue_size)
        # paho sends at most 20 unacknowledged messages at once by default; the whole buffer may go
        # out when the broker returns.
        client.max_inflight_messages_set(p.queue_size)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        if p.username is not None:
            client.username_pw_set(p.username, p.password)
        if p.tls is not None:
            def path(name):
                return None if name is None else str(context.graph_dir / name)
            client.tls_set(ca_certs=path(p.tls.ca_file), certfile=path(p.tls.cert_file), keyfile=path(p.tls.key_file),
                           cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        elif p.password is not None and not _is_loopback(p.host):
            self.log.warning("mqtt %s sends its password to %s:%d without TLS; set tls: {} (and port 8883)",
                             stage_id, p.host, p.port)
        client.will_set(self.availability, "offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_publish = self._on_publish
        context.metrics.gauge("mqtt_connected", lambda: float(self._connected.is_set()), stage=stage_id)
        context.metrics.gauge("mqtt_queued", lambda: len(self.client._out_messages), stage=stage_id)
        for kind in ("event", "status", "state", "pose", "discovery", "availability"):
            context.metrics.declare("mqtt_published", stage=stage_id, kind=kind)
            context.metrics.declare("mqtt_dropped", stage=stage_id, kind=kind)
        context.metrics.declare("mqtt_latency", stage=stage_id)
        # connect_async: a broker that is down at start is retried by the network thread, and its
        # messages wait in the queue meanwhile.
        client.connect_async(p.host, p.port, keepalive=p.keepalive_s)
        client.loop_start()
        self.log.info("mqtt to %s:%d as %s (availability %s)", p.host, p.port, self.node, self.availability)
        for stream in context.streams if p.home_assistant else ():
            self._publish("discovery", *self._discovery(stream, "binary_sensor"))
            self._publish("discovery", *self._discovery(stream, "sensor"))
        for stream in context.streams:
            self._publish("state", self._topic(stream, "fall"), "OFF", retain=True)

    # ------------------------------------------------------------------ stage interface

    def process(self, frames: list[Frame]) -> None:
        for frame in frames:
            if frame.events:
                self._send_events(frame.stream, frame.events, frame.index)
            if self._pose_every is not None:
                last = self._last_pose.get(frame)   # reset by the runtime when the stream's time restarts
                if last[0] is None or frame.media_time - last[0] >= self._pose_every:
                    last[0] = frame.media_time
                    self._publish("pose", self._topic(frame.stream, "pose"), messages.encoded_pose(frame, "json"),
                                  qos=0)

    def on_events(self, stream: str, events: list[Event]) -> None:
        self._send_events(stream, events, None)   # raised outside any frame: the message's frame is null

    def _send_events(self, stream: str, events: list[Event], frame_index: int | None) -> None:
        """Publish `events` of `stream` and the Home Assistant states they change."""
        for event in events:
            if self._kinds is None or event.kind in self._kinds:
                payload = messages.encode(messages.event_message(event, frame_index), "json")
                self._publish("event", self._topic(stream, "event"), payload, capture_time=event.capture_time)
            if event.kind in self._alarms:
                self._publish("state", self._topic(stream, "fall"), "ON", retain=True)
            elif event.kind in ACK_EVENTS:
                self._publish("state", self._topic(stream, "fall"), "OFF", retain=True)
            if event.kind == "rep" and "count" in event.data:
                self._publish("state", self._topic(stream, "reps"), str(int(event.data["count"])), retain=True)

    def on_stream_event(self, event: StreamEvent) -> None:
        self._publish("status", self._topic(event.stream, "status"),
                      messages.encode(messages.status_message(event), "json"), retain=True)
        if event.kind == "opened" or event.restarts_stream:  # tracks restart, so does the repetition count
            self._publish("state", self._topic(event.stream, "reps"), "0", retain=True)

    def close(self) -> None:
        deadline = time.monotonic() + self.params.close_timeout_s
        # "offline" said by ourselves: a clean stop sends no last will.
        self._publish("availability", self.availability, "offline", retain=True)
        while self.client._out_messages and time.monotonic() < deadline:
            time.sleep(0.05)  # paho offers no wait for "queue empty"; its network thread empties it
        left = len(self.client._out_messages)
        if left:
            self.log.warning("mqtt %s: %d messages not acknowledged by the broker within close_timeout_s "
                             "(%.1f s); they are lost", self.id, left, self.params.close_timeout_s)
        self._connected.clear()  # a disconnection of our own: no warning
        self.client.disconnect()
        self.client.loop_stop()

    # ------------------------------------------------------------------ paho callbacks (its network thread)

    def _on_connect(self, client, _userdata, _flags, reason, _properties) -> None:
        if reason.is_failure:
            self.log.error("mqtt %s: broker %s:%d refused the connection: %s", self.id, self.params.host,
                           self.params.port, reason)
            return
        self._connected.set()
        self._failing = False
        self.log.info("mqtt %s: connected to %s:%d", self.id, self.params.host, self.params.port)
        self._publish("availability", self.availability, "online", retain=True)

    def _on_connect_fail(self, _client, _userdata) -> None:
        if not self._failing:  # once per outage, not every retry
            self._failing = True
            p = self.params
            self.log.warning("mqtt %s: cannot connect to %s:%d (refused, unreachable, or its TLS certificate "
                             "rejected%s); retrying, QoS 1 messages wait (up to %d)", self.id, p.host, p.port,
                             ": check tls.ca_file" if p.tls else "", p.queue_size)

    def _on_disconnect(self, _client, _userdata, _flags, reason, _properties) -> None:
        if self._connected.is_set():
            self.log.warning("mqtt %s: disconnected from %s:%d (%s); buffering up to %d messages", self.id,
                             self.params.host, self.params.port, reason, self.params.queue_size)
        self._connected.clear()

    def _on_publish(self, _client, _userdata, mid, _reason, _properties) -> None:
        now = time.time()
        with self._lock:
            capture_time = self._pending.pop(mid, None)
            if capture_time is None:
                self._acked_early[mid] = now
                while len(self._acked_early) > EARLY_ACKS:  # acks of messages without a latency to measure
                    self._acked_early.popitem(last=False)
        if capture_time is not None:
            self.context.metrics.observe("mqtt_latency", now - capture_time, stage=self.id)

    # ------------------------------------------------------------------ helpers

    def _topic(self, stream: str, what: str) -> str:
        return f"{self.params.topic_prefix}/{stream}/{what}"

    def _publish(self, kind: str, topic: str, payload: str | bytes, qos: int = 1, retain: bool = False,
                 capture_time: float | None = None) -> None:
        # No lock of ours is held while paho's are taken: paho's network thread holds its own
        # while calling _on_connect and _on_publish, which take ours.
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            self.context.metrics.inc("mqtt_dropped", stage=self.id, kind=kind)
            self.log.warning("mqtt %s: queue full (%d messages); dropped a %s message on %s", self.id,
                             self.params.queue_size, kind, topic)
            return
        self.context.metrics.inc("mqtt_published", stage=self.id, kind=kind)
        if capture_time is not None:
            with self._lock:
                acked = self._acked_early.pop(info.mid, None)
                if acked is None:
                    self._pending[info.mid] = capture_time
            if acked is not None:  # the PUBACK beat us here
                self.context.metrics.observe("mqtt_latency", acked - capture_time, stage=self.id)

    def _discovery(self, stream: str, component: str) -> tuple[str, str, int, bool]:
        """(topic, payload, qos, retain) of Home Assistant's discovery config of one of a stream's entities."""
        p = self.params
        device = {"identifiers": [f"streampose_{stream}"], "name": f"streampose {stream}",
                  "manufacturer": "streampose", "model": "pose camera", "sw_version": __version__}
        common = {"availability_topic": self.availability, "payload_available": "online",
                  "payload_not_available": "offline", "device": device,
                  "json_attributes_topic": self._topic(stream, "event")}
        if component == "binary_sensor":
            config = {"name": "Fall", "unique_id": f"streampose_{stream}_fall", "device_class": "safety",
                      "state_topic": self._topic(stream, "fall"), "payload_on": "ON", "payload_off": "OFF"}
            object_id = "fall"
        else:
            config = {"name": "Repetitions", "unique_id": f"streampose_{stream}_reps", "state_class": "total_increasing",
                      "unit_of_measurement": "reps", "icon": "mdi:counter",
                      "state_topic": self._topic(stream, "reps")}
            object_id = "reps"
        topic = f"{p.discovery_prefix}/{component}/streampose_{stream}/{object_id}/config"
        return topic, json.dumps({**config, **common}), 1, True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
