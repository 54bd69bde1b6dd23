"""A real RTSP server for tests: serves an MP4's H.264 video, looped forever.

Run it with the system Python, which has GStreamer's introspection bindings
(the project's virtualenv has not):

    /usr/bin/python3 tests/rtsp_server.py PORT NAME FILE

It prints `READY rtsp://127.0.0.1:PORT/NAME` once it listens and serves until
killed. The file's H.264 access units are demuxed once into memory and pushed
again and again with shifted timestamps, so looping costs no re-encoding; every
client gets its own copy of the stream, starting at the file's first keyframe.

Tests import `RtspServer` from here to run it in a child process.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"


def load_access_units(path: str):
    """The file's video as (caps, [(buffer, pts, dts, duration)]) in byte-stream form."""
    from gi.repository import Gst

    pipeline = Gst.parse_launch(
        f'filesrc location="{path}" ! qtdemux ! h264parse config-interval=-1 '
        "! video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=sink sync=false")
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    units, caps = [], None
    while (sample := sink.emit("pull-sample")) is not None:
        buffer = sample.get_buffer()
        caps = sample.get_caps()
        units.append((buffer, buffer.pts, buffer.dts, buffer.duration))
    pipeline.set_state(Gst.State.NULL)
    if not units:
        raise SystemExit(f"{path}: no H.264 video found")
    return caps, units


def serve(port: int, name: str, path: str) -> None:
    import gi
    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    caps, units = load_access_units(path)
    # The first pass starts at 0: decoding timestamps may precede presentation ones.
    start = min(min(pts, dts) for _, pts, dts, _ in units)
    period = max(pts + duration for _, pts, _, duration in units) - min(pts for _, pts, _, _ in units)

    def feed(appsrc):
        """Pushes the access units in a loop, each pass `period` later than the last."""
        count = 0

        def on_need_data(src, _length):
            nonlocal count
            loop, position = divmod(count, len(units))
            buffer, pts, dts, duration = units[position]
            copy = buffer.copy()
            shift = loop * period - start
            copy.pts = pts + shift
            copy.dts = dts + shift if dts != Gst.CLOCK_TIME_NONE else Gst.CLOCK_TIME_NONE
            copy.duration = duration
            count += 1
            src.emit("push-buffer", copy)

        appsrc.set_property("caps", caps)
        appsrc.connect("need-data", on_need_data)

    def on_media_configure(_factory, media):
        feed(media.get_element().get_by_name("src"))

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch("( appsrc name=src format=time is-live=false "
                       "! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )")
    factory.connect("media-configure", on_media_configure)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    server.get_mount_points().add_factory(f"/{name}", factory)
    if server.attach(None) == 0:
        raise SystemExit(f"cannot listen on 127.0.0.1:{port}")
    print(f"READY rtsp://127.0.0.1:{port}/{name}", flush=True)
    GLib.MainLoop().run()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RtspServer:
    """The server above in a child process, which a test may stop, pause and restart on the same port."""

    def __init__(self, video: Path, name: str = "cam", port: int | None = None):
        self.video, self.name = video, name
        self.port = port or free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/{name}"
        self.process: subprocess.Popen | None = None
        self._output = tempfile.TemporaryFile()

    def start(self, timeout_s: float = 15.0) -> None:
        """Starts the server and waits until it accepts connections."""
        self.process = subprocess.Popen(
            [SYSTEM_PYTHON, __file__, str(self.port), self.name, str(self.video)],
            stdout=self._output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    self._output.seek(0)
                    raise RuntimeError(f"RTSP server on port {self.port} did not start:\n"
                                       f"{self._output.read().decode(errors='replace')}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Kills the server at once, as a crash or a power cut would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def pause(self) -> None:
        """Freezes the server: connections stay open but no data flows."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def __enter__(self) -> RtspServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        self._output.close()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    serve(int(sys.argv[1]), sys.argv[2], sys.argv[3])
