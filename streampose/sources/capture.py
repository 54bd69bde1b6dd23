"""A graph source: frames of one stream, and the stream's life told as StreamEvents.

Files and image sequences play once or loop; network streams and webcams are
live and are reopened with exponential backoff whenever they end, stall or fail.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import av
import numpy as np

from streampose.frame import Frame, StreamEvent
from streampose.graph import schema
from streampose.sources.images import ImageReader, is_image_pattern
from streampose.sources.packets import PacketCarry
from streampose.sources.urls import mask_credentials
from streampose.sources.video import STREAM_ERRORS, VideoReader
from streampose.vision.bars import PictureFinder

log = logging.getLogger("streampose.sources")

NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https")
WEBCAM_PREFIX = "/dev/video"


class Playback(Protocol):
    """One pass over an opened source (see VideoPlayback, ImagePlayback)."""

    frame_step: float
    detail: str
    packets: PacketCarry | None  # compressed packets kept for the frames that enter (video only)

    def __iter__(self) -> Iterator[tuple[Callable[[], np.ndarray], float]]: ...
    def close(self) -> None: ...


class Reader(Protocol):
    def open(self) -> Playback: ...


def backoff_delays(policy: schema.Reconnect) -> Iterator[float]:
    """Waits before successive reopening attempts: initial_s, times factor each time, at most max_s."""
    delay = policy.initial_s
    while True:
        yield min(delay, policy.max_s)
        delay *= policy.factor


class Pacer:
    """Holds frames back until their media time has come, as a camera would deliver them."""

    def __init__(self) -> None:
        self._origin: float | None = None  # monotonic clock time of media time 0

    def wait(self, media_time: float, stop: threading.Event) -> None:
        now = time.monotonic()
        if self._origin is None:
            self._origin = now - media_time
        stop.wait(self._origin + media_time - now)


class Capture:
    """Decodes one source. `frames(stop)` yields its Frames and StreamEvents.

    Raises ValueError at construction for a URI no reader takes. A file or image
    source that cannot be read is that stream's failure, not the graph's: its
    stream ends at once with a failed "ended" event naming the cause, and the other
    streams run. `decoder_threads`: threads of the video decoder, 0 = FFmpeg's choice.
    `on_packets_shed`: frames carry their compressed packets (Frame.packets, for a recorder that
    copies them; sources/packets.py), and the packets the bounded carry-over sheds are counted
    with it; None: they carry none. An image sequence has no packets.
    """

    def __init__(self, spec: schema.Source, graph_dir: Path, count: Callable[[str], None], decoder_threads: int = 0,
                 on_packets_shed: Callable[[int], None] | None = None):
        """`count(name)` counts what happens to the stream: frames_captured, reconnects, decode_errors."""
        self.stream = spec.id
        self.zones = tuple(zone.to_zone() for zone in spec.zones)
        self.options = spec.options
        self._count = count
        self._decoder_threads = decoder_threads
        self._on_packets_shed = on_packets_shed
        self._index = 0
        self._admit: Callable[[], bool] | None = None  # see frames()
        self._bars = PictureFinder()  # the black bars around the picture, learnt from the frames let in
        self._reader, self._reconnects = self._make_reader(spec.uri, graph_dir)
        self.live = self._reconnects or self.options.realtime
        self._pacer = Pacer() if self.options.realtime and not self._reconnects else None

    def _make_reader(self, uri: str, graph_dir: Path) -> tuple[Reader, bool]:
        """The reader of `uri`, and whether it is a live input to reopen when lost."""
        options, on_error = self.options, self._count_decode_error
        timeout = (options.open_timeout_s, options.read_timeout_s)
        scheme = urlsplit(uri).scheme.lower()
        if scheme in NETWORK_SCHEMES:
            av_options = {"rtsp_transport": options.transport} if scheme.startswith("rtsp") else {}
            return VideoReader(uri, on_error, options=av_options, timeout=timeout, threads=self._decoder_threads,
                               on_packets_shed=self._on_packets_shed), True
        if "://" in uri:
            raise ValueError(f"source {self.stream!r}: unsupported URI scheme {scheme!r} in {mask_credentials(uri)!r}; "
                             f"use a file, an image folder or glob, {', '.join(NETWORK_SCHEMES)} or {WEBCAM_PREFIX}N")
        if uri.startswith(WEBCAM_PREFIX):
            return VideoReader(uri, on_error, av_format="v4l2", timeout=timeout, threads=self._decoder_threads,
                               on_packets_shed=self._on_packets_shed), True
        path = graph_dir / uri
        if is_image_pattern(uri) or path.is_dir():
            return ImageReader(path, options.fps, on_error), False
        return VideoReader(str(path), on_error, threads=self._decoder_threads,
                           on_packets_shed=self._on_packets_shed), False

    def frames(self, stop: threading.Event, admit: Callable[[], bool] | None = None) -> Iterator[Frame | StreamEvent]:
        """Frames and events until the source ends or `stop` is set; see the module doc.

        admit() is asked for each decoded frame, at its time for a paced source: a frame it
        refuses is neither converted to BGR nor yielded (its index is skipped). None: every
        frame is yielded."""
        self._admit = admit
        if self._reconnects:
            yield from self._live_frames(stop)
        else:
            yield from self._recorded_frames(stop)

    def _recorded_frames(self, stop: threading.Event) -> Iterator[Frame | StreamEvent]:
        """A file or image sequence: played once, or looped with media time running on."""
        offset = 0.0
        opened = False
        while True:
            try:
                playback = self._reader.open()
            except STREAM_ERRORS as error:
                # Missing, empty, not a video, or deleted while looping: it will not come back.
                yield self._event("ended", 0, f"cannot {'reopen' if opened else 'open'}: {error}", failed=True)
                return
            if not opened:
                yield self._event("opened", 0, playback.detail)
                opened = True
            with closing(playback):
                span, error = yield from self._play(playback, 0, offset, stop)
            reason = "end of input"
            if error is not None:
                # A damaged file: what could be read stands, the rest is skipped.
                self._count_decode_error()
                reason = f"read error: {error}"
            if stop.is_set():
                return
            if not self.options.loop or span is None:
                yield self._event("ended", 0, reason if span else f"{reason}, no frames")
                return
            first, last = span
            offset += last - first + playback.frame_step

    def _live_frames(self, stop: threading.Event) -> Iterator[Frame | StreamEvent]:
        """A network stream or webcam: reopened with backoff whenever it is lost."""
        policy = self.options.reconnect
        delays = backoff_delays(policy)
        segment = -1
        failures = 0  # attempts in a row that brought no frame
        told_lost = False
        while True:
            try:
                playback = self._reader.open()
            except STREAM_ERRORS as error:
                span, reason = None, f"cannot open: {error}"
            else:
                segment += 1
                if segment > 0:
                    self._count("reconnects")
                yield self._event("opened", segment, playback.detail)
                told_lost = False
                with closing(playback):
                    span, error = yield from self._play(playback, segment, 0.0, stop)
                reason = "stream ended" if error is None else self._read_failure(error)
            if stop.is_set():
                return
            if span is None:
                failures += 1
            else:
                failures, delays = 0, backoff_delays(policy)
            if policy.max_attempts and failures >= policy.max_attempts:
                yield self._event("ended", max(segment, 0), f"gave up after {failures} attempts: {reason}",
                                  failed=True)
                return
            if not told_lost:
                yield self._event("lost", max(segment, 0), reason)
                told_lost = True
            delay = next(delays)
            log.info("stream %s: %s; reopening in %.1f s", self.stream, mask_credentials(reason), delay)
            if stop.wait(delay):
                return

    def _read_failure(self, error: Exception) -> str:
        # PyAV's interrupt on a read timeout reads "Immediate exit requested": say what happened.
        if isinstance(error, av.error.ExitError):
            return f"no data for {self.options.read_timeout_s:g} s"
        return f"read failed: {error}"

    def _play(self, playback: Playback, segment: int, offset: float,
              stop: threading.Event) -> Generator[Frame, None, tuple[tuple[float, float] | None, Exception | None]]:
        """Yields the frames of one pass. Returns their (first, last) media time, None if
        no frame came, and the error that ended the pass, None at its end or on stop."""
        span = None
        try:
            for convert, media_time in playback:
                if stop.is_set():
                    break
                media_time += offset
                if self._pacer is not None:
                    self._pacer.wait(media_time, stop)
                    if stop.is_set():
                        break
                span = (span[0] if span else media_time, media_time)
                self._count("frames_captured")
                self._index += 1
                if self._admit is None or self._admit():
                    packets = playback.packets.take() if playback.packets is not None else None
                    image = convert()
                    yield Frame(self.stream, self._index - 1, image, time.time(), media_time, segment,
                                zones=self.zones, packets=packets, picture=self._bars.update(image))
        except STREAM_ERRORS as error:
            return span, error
        return span, None

    def _event(self, kind: str, segment: int, detail: str, failed: bool = False) -> StreamEvent:
        # Events are logged, shown in /health and published on status/: never with a password.
        return StreamEvent(self.stream, kind, segment, mask_credentials(detail), time.time(), failed)

    def _count_decode_error(self) -> None:
        self._count("decode_errors")
