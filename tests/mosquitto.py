"""A real mosquitto broker on a free 127.0.0.1 port with its own config, for the MQTT tests."""

from __future__ import annotations

import getpass
import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout: float, what: str, step: float = 0.02):
    """Poll `condition` until it returns something true, or fail after `timeout` seconds naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def make_certificates(folder: Path) -> None:
    """ca.pem (a throwaway CA) and server.pem / server.key (signed by it, for 127.0.0.1) in `folder`."""
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=streampose test CA",
            "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
            "-out", "server.csr")
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.cnf", "-out", "server.pem")


class Mosquitto:
    """mosquitto with persistence (so a subscriber's session and its queued QoS 1 messages survive a
    restart), optionally a password file; `stop()` and `start()` again keep the port."""

    def __init__(self, folder: Path, users: dict[str, str] | None = None, tls: bool = False):
        assert shutil.which("mosquitto"), "mosquitto not installed: run `make test-deps` (Debian package mosquitto)"
        self.folder, self.port = folder, free_port()
        folder.mkdir(parents=True, exist_ok=True)
        # As root mosquitto would switch to the user `mosquitto`, who cannot read the test's folder.
        lines = [f"user {getpass.getuser()}", f"listener {self.port} 127.0.0.1", "persistence true", f"persistence_location {folder}/",
                 f"log_dest file {folder}/mosquitto.log", "log_type all"]
        if users:
            passwords = folder / "passwords"
            passwords.touch(mode=0o600)
            for user, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwords), user, password], check=True)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines.append("allow_anonymous true")
        if tls:  # a second listener, with TLS: a fresh CA and a server certificate for 127.0.0.1
            self.tls_port, self.ca_file = free_port(), folder / "ca.pem"
            make_certificates(folder)
            lines += [f"listener {self.tls_port} 127.0.0.1", f"cafile {self.ca_file}",
                      f"certfile {folder / 'server.pem'}", f"keyfile {folder / 'server.key'}"]
        self.config = folder / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(["mosquitto", "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)

        def accepting():
            if self.process.poll() is not None:
                log = self.folder / "mosquitto.log"
                raise AssertionError(f"mosquitto exited: {log.read_text() if log.exists() else self.config.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False
        wait_for(accepting, 10, "mosquitto to accept connections")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: mosquitto saves its sessions to the persistence file
            self.process.wait(10)

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class Subscriber:
    """A QoS 1 subscriber with a persistent session (clean_session False): what is published while it is
    away (a broker restart) waits for it. `messages` is [(topic, payload str, retain)]."""

    def __init__(self, port: int, topics=("#",), client_id: str = "test-subscriber", **login):
        self.messages: list[tuple[str, str, bool]] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        client = self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        if login:
            client.username_pw_set(login["username"], login["password"])
        client.reconnect_delay_set(0.1, 0.5)

        def on_connect(client, _u, _f, reason, _p):
            if not reason.is_failure:
                client.subscribe([(topic, 1) for topic in topics])

        def on_message(_c, _u, message):
            with self._lock:
                self.messages.append((message.topic, message.payload.decode(), bool(message.retain)))

        client.on_connect = on_connect
        client.on_subscribe = lambda *args: self.subscribed.set()
        client.on_message = on_message
        client.connect_async("127.0.0.1", port, keepalive=5)
        client.loop_start()

    def on(self, topic_suffix: str) -> list[str]:
        with self._lock:
            return [payload for topic, payload, _ in self.messages if topic.endswith(topic_suffix)]

    def events(self) -> list[dict]:
        return [json.loads(payload) for payload in self.on("/event")]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
