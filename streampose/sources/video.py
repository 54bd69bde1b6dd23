"""Video decoded with PyAV (FFmpeg): files, network streams and webcams."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial

import av
import numpy as np

from streampose.sources.packets import PacketCarry, packet_source

# What PyAV raises when a stream cannot be opened or read: FFmpeg's errors, and
# the OS errors it maps them to (ConnectionRefusedError, TimeoutError...).
STREAM_ERRORS = (av.FFmpegError, OSError)


class VideoPlayback:
    """One pass over an opened video: its decoded frames, until the end or a read error.

    Iterating yields (picture, media_time): picture() converts the decoded frame to an
    (H, W, 3) uint8 BGR image (left uncalled for a frame that will be dropped: the conversion
    is 25-40% of decoding's cost), media_time the presentation time in seconds. Packets the decoder rejects are skipped and
    reported to `on_decode_error`; errors reading the container propagate.

    packets: where every demuxed packet is kept for the frames that enter the graph (None: not
    kept), taken by the source at each frame it lets in (sources/packets.py).
    """

    def __init__(self, container: av.container.InputContainer, on_decode_error: Callable[[], None],
                 threads: int = 0, packets: PacketCarry | None = None):
        self._container = container
        self.packets = packets
        self._stream = container.streams.video[0]
        self._stream.codec_context.thread_type = "AUTO"
        self._stream.codec_context.thread_count = threads
        self._on_decode_error = on_decode_error
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.frame_step = float(1 / rate) if rate else 0.0  # seconds between frames, nominal
        codec = self._stream.codec_context
        self.detail = f"{codec.name} {codec.width}x{codec.height} {float(rate or 0):.3g} fps"

    def __iter__(self) -> Iterator[tuple[Callable[[], np.ndarray], float]]:
        last_time = None
        for packet in self._container.demux(self._stream):
            if self.packets is not None and packet.size:
                self.packets.add(packet)
            # The empty packet that ends the demuxing flushes the decoder's delayed frames.
            try:
                frames = self._stream.decode(packet)
            except av.FFmpegError:
                self._on_decode_error()
                continue
            for frame in frames:
                # Decoders may leave a timestamp out (e.g. the first frame of some RTSP streams).
                if frame.time is not None:
                    last_time = frame.time
                else:
                    last_time = 0.0 if last_time is None else last_time + self.frame_step
                yield partial(frame.to_ndarray, format="bgr24"), last_time

    def close(self) -> None:
        self._container.close()


class VideoReader:
    """Opens a video PyAV can read: a file, a network stream or a webcam device.

    av_format:  FFmpeg input format when it cannot be guessed (e.g. "v4l2").
    options:    FFmpeg demuxer options (e.g. {"rtsp_transport": "tcp"}).
    timeout:    (open, read) seconds for live inputs; None waits forever.
    threads:    decoder threads; 0 = FFmpeg's choice (about one per core).
    on_packets_shed: keep the compressed packets of each opening for the frames that enter (a
                recorder copies them); called with the number of packets the bounded carry-over
                shed. None: packets are not kept.
    """

    def __init__(self, uri: str, on_decode_error: Callable[[], None], *, av_format: str | None = None,
                 options: dict[str, str] | None = None, timeout: tuple[float, float] | None = None,
                 threads: int = 0, on_packets_shed: Callable[[int], None] | None = None):
        self.uri = uri
        self._on_packets_shed = on_packets_shed
        self._threads = threads
        self._on_decode_error = on_decode_error
        self._format = av_format
        self._options = options or {}
        self._timeout = timeout

    def open(self) -> VideoPlayback:
        """Raises one of STREAM_ERRORS when the input cannot be opened or has no video."""
        container = av.open(self.uri, format=self._format, options=self._options, timeout=self._timeout)
        if not container.streams.video:
            container.close()
            raise av.error.InvalidDataError(av.error.ErrorType.INVALIDDATA.value, "no video stream", self.uri)
        carry = None
        if self._on_packets_shed is not None:
            carry = PacketCarry(packet_source(container.streams.video[0]), self._on_packets_shed)
        return VideoPlayback(container, self._on_decode_error, self._threads, carry)
