"""MP4 recordings, a series of files per stream: annotated and encoded with x264, or the source's
own compressed video copied unchanged (`encode: copy`).

Each stream has at most one open file, in the stage's state store (runtime/state.py). A
file ends at a timeline break (the stream is lost, ends or reopens, media time jumps back),
when its media time exceeds `segment_s`, when the frame size changes, or when encoding a
frame fails; the next frame starts a new one. After a file is closed the oldest files of that stream beyond
`keep_files` / `keep_bytes` are deleted.

Files are fragmented MP4 (Mp4Writer), synced every `flush_s` of media time, so a
killed daemon leaves playable files. A storage error (a full disk) abandons the
stream's file, keeping what reached the disk, and pauses that stream's recording
with backoff (sinks/pause.py) while everything else runs on; with retention
configured, a full disk also deletes the stream's oldest finished file before each
retry.

Frames are stamped with their media time relative to the file's first frame, so
the file plays at real speed even when frames were dropped upstream. Nothing is
buffered here beyond what the encoder holds and the fragment being written.

With `encode: copy` nothing is drawn or encoded: each frame carries the packets its source
demuxed since the stream's previous frame, those of the frames dropped at the entrance
included (Frame.packets; the runtime collects them only for streams a copying recorder reads,
sources/packets.py), and they are muxed as they are (Mp4Copy): 0.08 ms of CPU per 1280x720
frame against x264's 12.7 ms (benchmarks/recorder_cpu.py). Packets
are numbered in their source's demuxing order, so a gap (the source's bounded carry-over shed
packets, or this sink's queue dropped a frame and its packets with it) shows as a missing
number: writing stops there and resumes at the next keyframe, so no GOP has a hole; a gap
within a file plays as a gap. A file starts at a keyframe; `segment_s` ends it at the first
keyframe after; fragments end at the source's keyframes (`flush_s` does not apply). A new
opening of the source (a reconnect, a looped file's next pass) starts a new file. An image
sequence has no packets (graph/check.py refuses it at start); a codec MP4 cannot hold is
refused with one error line per stream (the stream is not recorded): falling back to x264
would spend the cores that copy was chosen to save (a third of a core per 25 fps 1280x720
stream) without the operator knowing.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import string
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path, PurePosixPath

import av
import cv2
import numpy as np
from av.video.frame import PictureType

from streampose.frame import Event, Frame, PacketSource
from streampose.graph import schema
from streampose.runtime.stage import Stage, StageContext
from streampose.sinks.draw import draw_frame
from streampose.sinks.pause import StoragePause
from streampose.sinks.retention import apply_retention, make_room

TIME_BASE = Fraction(1, 90000)
# x264 needs a frame rate for its rate control; the timestamps carry the real timing.
NOMINAL_RATE = 30
# A killed process leaves a playable file up to its last fragment: an empty moov up front,
# then a fragment (moof + mdat) from each keyframe, each written out as it ends. Measured
# against a plain MP4 with the same keyframes: 0.05% larger (squat_side_view, 960x544).
FRAGMENTED_MP4 = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}
X264_KEYINT_INFINITE = 1 << 30
FPS_WINDOW = 32  # frames over which the overlay's fps is measured
BANNER_S = 3.0  # seconds of media time an event's banner stays on screen


class FragmentedMp4:
    """A fragmented MP4 file with one video stream, muxed packet by packet.

    Each keyframe ends a fragment (moof + mdat), which is then written and synced to disk, so a
    killed process (or a power cut) leaves a file that plays up to its last fragment.

    A write that fails (a full disk) leaves the file broken: `close` then abandons it without
    muxing anything more, because muxing into a container whose header write failed makes FFmpeg
    write the header again over freed state and crash the process (PyAV 18 / FFmpeg 8: SIGSEGV).
    A broken file is cut back to the fragments synced to disk, or removed if none was.

    make_stream(container): the file's video stream, added to the container.
    """

    def __init__(self, path: Path, make_stream: Callable[[av.container.OutputContainer], av.video.stream.VideoStream]):
        self.path = path
        self.frames = 0
        self.fragments = 0  # fragments written and synced to disk
        self.broken: BaseException | None = None  # the error that broke the file
        self._packets = 0
        self._synced_bytes = 0  # the file's size at its last sync: the end of its last fragment
        path.parent.mkdir(parents=True, exist_ok=True)
        # The file is ours, not FFmpeg's: its descriptor is closed even when the header write
        # fails (FFmpeg then leaks the one it opened), and it can be synced.
        self._file = _WholeWrites(path, "wb")
        try:
            self._container = av.open(self._file, "w", format="mp4", container_options=FRAGMENTED_MP4)
            self._stream = make_stream(self._container)
        except BaseException:
            self._file.close()
            path.unlink(missing_ok=True)
            raise

    def _check_writable(self) -> None:
        if self.broken is not None:
            raise RuntimeError(f"{self.path}: the file is broken by an earlier error: {self.broken}")

    def _mux(self, packets: list[av.Packet]) -> None:
        fragment_ended = False
        for packet in packets:
            fragment_ended |= packet.is_keyframe and self._packets > 0
            self._packets += 1
        try:
            self._container.mux(packets)
            if fragment_ended:  # the muxer wrote the fragment before the keyframe: make it durable
                self._sync()
        except BaseException as error:
            self.broken = error
            raise

    def _sync(self) -> None:
        os.fdatasync(self._file.fileno())
        self._synced_bytes = os.fstat(self._file.fileno()).st_size
        if not self.fragments:  # the file's name, too, must survive a power cut
            folder = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        self.fragments += 1

    def _drain(self) -> list[av.Packet]:
        """The packets still held back (an encoder's delayed frames) when the file closes."""
        return []

    def close(self) -> None:
        """Finish the file; a file without frames is removed, and so is a broken one without a
        fragment on disk."""
        container = self._container
        if container is None:
            return
        try:
            if self.frames and self.broken is None:
                try:
                    self._mux(self._drain())
                    container.close()  # writes the last fragment
                    self._sync()
                except BaseException as error:
                    self.broken = error
                    raise
        finally:
            self._container = None
            if self.broken is not None:
                self._abandon(container)
            self._file.close()
            if not self.frames or (self.broken is not None and not self.fragments):
                self.path.unlink(missing_ok=True)

    def _abandon(self, container: av.container.OutputContainer) -> None:
        try:
            container.close()  # only frees the muxer: after a failed write its trailer fails too
        except OSError:
            pass
        # Whatever reached the disk after the last fragment is a torn fragment: cut it off, so
        # that the file ends cleanly (and a full disk gets those bytes back).
        os.ftruncate(self._file.fileno(), self._synced_bytes)


class Mp4Writer(FragmentedMp4):
    """One H.264 (yuv420p) fragmented MP4 file, encoded frame by frame with x264.

    width, height: size of the images that will be written, pixels. H.264 in
    yuv420p needs even sizes, so an odd size loses its last row or column.
    flush_s: media time between keyframes, seconds. Each keyframe ends a fragment, so a killed
    process loses at most flush_s plus the encoder's lookahead (x264 veryfast: 11 frames, 0.37 s
    at 30 fps).
    """

    def __init__(self, path: Path, width: int, height: int, crf: int, preset: str,
                 flush_s: float = schema.Recorder.model_fields["flush_s"].default):
        if width < 2 or height < 2:
            raise ValueError(f"cannot record {width}x{height} images to {path}: both sides must be >= 2 pixels")
        self.source_size = (width, height)
        self.width, self.height = width - width % 2, height - height % 2
        self.flush_s = flush_s
        self.start_time: float | None = None  # media time of the first frame, seconds
        self.last_media_time: float | None = None
        self._last_pts = -1
        self._frame_interval = 0  # pts units between the last two frames
        self._keyframe_time: float | None = None  # media time of the last keyframe asked for
        super().__init__(path, lambda container: self._x264_stream(container, crf, preset))

    def _x264_stream(self, container: av.container.OutputContainer, crf: int, preset: str):
        stream = container.add_stream("libx264", rate=NOMINAL_RATE, time_base=TIME_BASE)
        stream.width, stream.height = self.width, self.height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": preset}
        # Keyframes follow media time (write); x264's frame-count limit is moved out of the way.
        stream.codec_context.gop_size = X264_KEYINT_INFINITE
        return stream

    def write(self, image_bgr: np.ndarray, media_time: float) -> None:
        """Append `image_bgr` ((height, width, 3) uint8 BGR) shown at `media_time` seconds."""
        self._check_writable()
        if image_bgr.shape[1::-1] != self.source_size:
            raise ValueError(f"{self.path}: image is {image_bgr.shape[1]}x{image_bgr.shape[0]}, "
                             f"the file was opened for {self.source_size[0]}x{self.source_size[1]}")
        if self.start_time is None:
            self.start_time = media_time
        pts = max(round((media_time - self.start_time) / TIME_BASE), self._last_pts + 1)
        # OpenCV's BT.601 conversion is the same as swscale's but several times faster.
        yuv = cv2.cvtColor(image_bgr[:self.height, :self.width], cv2.COLOR_BGR2YUV_I420)
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = pts
        frame.time_base = TIME_BASE
        if self._keyframe_time is None or media_time - self._keyframe_time >= self.flush_s:
            frame.pict_type = PictureType.I
            self._keyframe_time = media_time
        if self._last_pts >= 0:
            self._frame_interval = pts - self._last_pts
        self._mux(self._stream.encode(frame))
        self._last_pts = pts
        self.last_media_time = media_time
        self.frames += 1

    def _mux(self, packets: list[av.Packet]) -> None:
        # x264 gives packets no duration, and the muxer would take the last frame's from
        # the nominal rate; the latest frame interval is the best guess at hand.
        for packet in packets:
            packet.duration = self._frame_interval
        super()._mux(packets)

    def _drain(self) -> list[av.Packet]:
        return self._stream.encode(None)

    @property
    def duration(self) -> float:
        """Media time from the first to the last frame written, seconds."""
        return 0.0 if self.start_time is None else self.last_media_time - self.start_time


class UnsupportedCodec(ValueError):
    """The source's codec cannot go into an MP4 file unchanged."""


class Mp4Copy(FragmentedMp4):
    """A source's compressed packets, unchanged, in a fragmented MP4 file (encode: copy).

    The stream is made from the source's codec parameters, in its time base. The first packet
    must be a keyframe with a presentation time; timestamps are rebased to its decoding time, so
    the file starts at 0 and each packet keeps its pts - dts. A packet without a decoding time
    (RTP carries none for H.264 P-frames) gets the previous one's plus its duration, as FFmpeg's
    command line predicts it; one without a presentation time gets its decoding time. Fragments
    end at the source's keyframes. Raises UnsupportedCodec for a codec MP4 cannot hold.
    """

    def __init__(self, path: Path, source: PacketSource):
        self.source = source
        self.time_base = source.template.time_base
        # The reorder delay in frames (B-frames), to place a first keyframe that has no decoding time.
        self._delay = int(source.template.codec_context.has_b_frames)
        self._origin: int | None = None  # decoding time of the first packet, time base units
        self._first_pts = 0
        self._last_dts = 0
        self._end_pts = 0  # the end of the latest frame shown, time base units
        super().__init__(path, self._copy_stream)

    def _copy_stream(self, container: av.container.OutputContainer):
        try:
            return container.add_stream_from_template(self.source.template, opaque=True)
        except ValueError as error:  # FFmpeg's avformat_query_codec says no
            raise UnsupportedCodec(str(error)) from None

    def elapsed(self, packet: av.Packet) -> float:
        """Seconds from the file's first frame to `packet`'s presentation (a packet with one)."""
        return float((packet.pts - self._first_pts) * self.time_base)

    def write(self, packet: av.Packet) -> None:
        """Append a packet of the source (the first: a keyframe with a pts). The packet is not
        changed: a copy of it is muxed."""
        self._check_writable()
        step = packet.duration or self.source.frame_step
        pts, dts = packet.pts, packet.dts
        if self._origin is None:
            if pts is None or not packet.is_keyframe:
                raise ValueError(f"{self.path}: a copy must start at a keyframe with a presentation time")
            self._first_pts = pts
            self._origin = pts - self._delay * step if dts is None else dts
            self._last_dts = self._origin - 1
        if dts is None:
            dts = self._last_dts + step
        dts = max(dts, self._last_dts + 1)
        pts = dts if pts is None else max(pts, dts)
        copy = av.Packet(packet)
        copy.pts, copy.dts, copy.duration = pts - self._origin, dts - self._origin, step
        copy.time_base = self.time_base
        copy.is_keyframe = packet.is_keyframe
        copy.stream = self._stream
        self._mux([copy])
        self._last_dts = dts
        self._end_pts = max(self._end_pts, pts + step - self._origin)
        self.frames += 1

    @property
    def duration(self) -> float:
        """Presentation time from the first frame to the end of the last, seconds."""
        return float((self._end_pts - (self._first_pts - (self._origin or 0))) * self.time_base)


class _WholeWrites(io.FileIO):
    """An unbuffered file whose `write` writes everything or raises. FFmpeg ignores a short
    write (what a filling disk does first), so it would go on as if the bytes were written."""

    def write(self, data) -> int:
        view = memoryview(data)
        while view:
            view = view[super().write(view):]
        return len(data)


class PathTemplate:
    """The recorder's file path template, confined to the output directory.

    Fields: {stream} anywhere; {date} (YYYYMMDD) and {time} (HHMMSS), the local wall
    clock of the file's first capture, and {segment}, the file's number in its
    stream since the recorder started, only in the file name, so that each stream's
    files share one folder. A subclass may name other fields (FIELDS, with sample
    values in EXAMPLE) and passes their values to `resolve`.
    """

    FIELDS = ("stream", "date", "time", "segment")
    EXAMPLE = {"segment": 0}  # values of the fields beyond stream, date and time, to check format specs
    NAME = "recorder path"  # what the template is called in errors
    _FIELD_PATTERNS = {"date": r"\d{8}", "time": r"\d{6}", "segment": r"\d+"}

    def __init__(self, template: str, output_dir: Path, streams: list[str] = ()):
        self.template = template
        self.output_dir = output_dir.resolve()
        relative = PurePosixPath(template)
        self.fields = _fields(template)
        unknown = self.fields - set(self.FIELDS)
        if unknown:
            raise ValueError(f"{self.NAME} {template!r}: unknown field(s) {sorted(unknown)}; "
                             f"allowed: {', '.join('{' + f + '}' for f in self.FIELDS)}")
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"{self.NAME} {template!r} escapes the output directory {self.output_dir}: "
                             f"use a relative path without '..'")
        if relative.suffix != ".mp4":
            raise ValueError(f"{self.NAME} {template!r} must end in .mp4")
        if _fields(str(relative.parent)) - {"stream"}:
            raise ValueError(f"{self.NAME} {template!r}: only {{stream}} may appear in folder names")
        if len(streams) > 1 and "stream" not in self.fields:
            raise ValueError(f"{self.NAME} {template!r} has no {{stream}} field but {len(streams)} streams "
                             f"reach it; their files would mix")
        self.resolve("stream", time.time(), **self.EXAMPLE)  # a bad format spec fails here, not at the first frame

    def resolve(self, stream: str, wall_time: float, segment: int = 0, **fields: object) -> Path:
        """The path of a new file, made unique with a -N suffix if one exists already."""
        local = time.localtime(wall_time)
        path = self.output_dir / self.template.format(
            stream=stream, date=time.strftime("%Y%m%d", local), time=time.strftime("%H%M%S", local),
            segment=segment, **fields)
        if not path.resolve().is_relative_to(self.output_dir):
            raise ValueError(f"{self.NAME} {self.template!r} for stream {stream!r} escapes the "
                             f"output directory {self.output_dir}")
        unique, n = path, 0
        while unique.exists():
            n += 1
            unique = path.with_name(f"{path.stem}-{n}{path.suffix}")
        return unique

    def recordings(self, stream: str) -> list[Path]:
        """The stream's files that this template produced, oldest first."""
        relative = PurePosixPath(self.template)
        folder = self.output_dir / str(relative.parent).format(stream=stream)
        pattern = []
        for literal, name, _, _ in string.Formatter().parse(relative.stem):
            pattern.append(re.escape(literal))
            if name is not None:
                pattern.append(re.escape(stream) if name == "stream" else self._FIELD_PATTERNS[name])
        name_pattern = re.compile("".join(pattern) + r"(?:-\d+)?\.mp4")
        files = [p for p in folder.glob("*.mp4") if name_pattern.fullmatch(p.name) and p.is_file()]
        return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


@dataclass
class _Recording:
    """A stream's open file and the measurements shown in its overlay."""

    writer: Mp4Writer | Mp4Copy | None = None
    failing: bool = False  # the last write failed; further failures are logged quietly
    # encode: copy. The opening whose packets came last, the number of the packet expected next
    # from it, and whether the packets since the last keyframe all came (the next may be written).
    source: PacketSource | None = None
    next_packet: int = 0
    in_gop: bool = False
    media_times: deque = field(default_factory=lambda: deque(maxlen=FPS_WINDOW))
    recent_events: deque = field(default_factory=lambda: deque(maxlen=8))

    def banners_for(self, frame: Frame) -> list[Event]:
        """The newest event of each kind and track from the last BANNER_S seconds (the frame's
        own, and those that reached the stage outside frames)."""
        self.recent_events.extend(frame.events)
        recent = [e for e in self.recent_events if 0 <= frame.media_time - e.media_time <= BANNER_S]
        # One banner per kind and track: the newest (a rep counter's latest count).
        newest = {(e.kind, e.track_id): e for e in recent}
        return list(newest.values())

    def overlay_for(self, frame: Frame) -> dict[str, object]:
        """The overlay of `frame`: fps over the recent frames, this one included, and its
        capture-to-record latency."""
        self.media_times.append(frame.media_time)
        span = self.media_times[-1] - self.media_times[0]
        fps = (len(self.media_times) - 1) / span if span > 0 else 0.0
        latency_ms = (time.time() - frame.capture_time) * 1000
        return {"fps": fps, "latency": f"{latency_ms:.0f} ms"}


class RecorderStage(Stage):
    """Writes each stream's frames, annotated, to rotating MP4 files."""

    params: schema.Recorder

    def __init__(self, stage_id: str, params: schema.Recorder, context: StageContext):
        super().__init__(stage_id, params, context)
        self.paths = PathTemplate(params.path, context.output_dir, context.streams)
        self.pause = StoragePause(self)
        self.recordings = self.per_stream(_Recording, on_drop=lambda stream, _, recording, __:
                                          self._finish(stream, recording))
        self._files_opened: dict[str, int] = {}  # per stream since the stage started: {segment} in paths
        self._refused: dict[str, PacketSource] = {}  # encode: copy: per stream, the last opening refused

    def process(self, frames: list[Frame]) -> None:
        for frame in frames:
            self._record(frame)

    def on_events(self, stream: str, events: list[Event]) -> None:
        """Events outside frames get their banners on the stream's next frames."""
        recording = self.recordings.peek(stream)
        if recording is not None:
            recording.recent_events.extend(events)

    def paused_reason(self, stream: str) -> str | None:
        return self.pause.reason(stream)

    def _record(self, frame: Frame) -> None:
        recording = self.recordings.get(frame)
        if self.params.encode == "copy":
            self._copy(frame, recording)
            return
        if recording.writer is not None and self._needs_new_file(recording, frame):
            self._finish(frame.stream, recording)
        if self.pause.skip(frame.stream):
            return
        image = (draw_frame(frame, recording.overlay_for(frame), recording.banners_for(frame))
                 if self.params.draw else frame.image)
        try:
            if recording.writer is None:
                recording.writer = self._open(frame, recording)
            recording.writer.write(image, frame.media_time)
        except OSError as error:  # the storage, not the frame: a full disk, a vanished folder...
            path = recording.writer.path if recording.writer else "a new file"
            self._finish(frame.stream, recording)
            self._storage_failed(frame.stream, path, error)
        except Exception as error:
            self._count_error(frame.stream, recording, error)
            self._finish(frame.stream, recording)
        else:
            recording.failing = False
            if recording.writer.fragments:  # only a fragment on disk shows the storage works again
                self.pause.succeeded(frame.stream)

    def _copy(self, frame: Frame, recording: _Recording) -> None:
        """Write the packets `frame` carries (encode: copy), from a keyframe on, never across a gap."""
        carried = frame.packets
        if carried is None:
            raise ValueError(f"frame {frame.index} of stream {frame.stream} carries no packets to copy: only a "
                             f"video source of a graph with this recorder gives frames their packets")
        if carried.source is not recording.source:  # the source reopened: a new timeline, a new file
            self._finish(frame.stream, recording)
            recording.source, recording.in_gop = carried.source, False
        elif carried.first != recording.next_packet:  # packets were lost: resume at the next keyframe
            recording.in_gop = False
        recording.next_packet = carried.end
        if carried.source is self._refused.get(frame.stream):
            return
        if self.pause.skip(frame.stream):
            recording.in_gop = False
            return
        for packet in carried.packets:
            keyframe = packet.is_keyframe and packet.pts is not None
            recording.in_gop |= keyframe
            if not recording.in_gop:
                continue
            writer = recording.writer
            if writer is not None and keyframe and 0 < self.params.segment_s <= writer.elapsed(packet):
                self._finish(frame.stream, recording)  # segment_s is past: the file ends before this keyframe
            try:
                if recording.writer is None:
                    recording.writer = self._open_copy(frame, carried.source)
                recording.writer.write(packet)
            except UnsupportedCodec as error:
                self._refuse(frame.stream, carried.source, error)
                return
            except OSError as error:  # the storage, not the packet: a full disk, a vanished folder...
                path = recording.writer.path if recording.writer else "a new file"
                self._finish(frame.stream, recording)
                recording.in_gop = False
                self._storage_failed(frame.stream, path, error)
                return
            except Exception as error:
                self._count_error(frame.stream, recording, error)
                self._finish(frame.stream, recording)
                recording.in_gop = False
            else:
                recording.failing = False
                if recording.writer.fragments:
                    self.pause.succeeded(frame.stream)

    def _refuse(self, stream: str, source: PacketSource, error: UnsupportedCodec) -> None:
        """The stream's codec cannot be copied into MP4: one error line per stream and codec, and
        none of this opening's packets are tried again."""
        self.context.metrics.inc("errors", stage=self.id, stream=stream)
        refused_before = self._refused.get(stream)
        self._refused[stream] = source
        again = refused_before is not None and refused_before.detail == source.detail
        level = logging.DEBUG if again else logging.ERROR
        self.log.log(level, "stream %s: not recorded: encode: copy cannot put its %s video in an MP4 file (%s); "
                     "set encode: x264 on recorder '%s' to encode the frames instead, or have the camera send "
                     "H.264 or H.265", stream, source.detail, error, self.id)

    def _open_copy(self, frame: Frame, source: PacketSource) -> Mp4Copy:
        opened = self._files_opened.get(frame.stream, 0)
        path = self.paths.resolve(frame.stream, frame.capture_time, opened)
        writer = Mp4Copy(path, source)
        self._files_opened[frame.stream] = opened + 1
        self.log.info("recording stream %s to %s (copying its %s video)", frame.stream, path, source.detail)
        return writer

    def _needs_new_file(self, recording: _Recording, frame: Frame) -> bool:
        writer = recording.writer
        return (writer.source_size != (frame.width, frame.height)
                or 0 < self.params.segment_s <= frame.media_time - writer.start_time)

    def _open(self, frame: Frame, recording: _Recording) -> Mp4Writer:
        opened = self._files_opened.get(frame.stream, 0)
        path = self.paths.resolve(frame.stream, frame.capture_time, opened)
        self._files_opened[frame.stream] = opened + 1
        self.log.info("recording stream %s to %s", frame.stream, path)
        return Mp4Writer(path, frame.width, frame.height, self.params.crf, self.params.preset, self.params.flush_s)

    def _count_error(self, stream: str, recording: _Recording, error: Exception) -> None:
        self.context.metrics.inc("errors", stage=self.id, stream=stream)
        path = recording.writer.path if recording.writer else "a new file"
        if recording.failing:  # the same trouble as the frame before: don't flood the log
            self.log.debug("stream %s: recording to %s failed again: %s", stream, path, error)
        else:
            self.log.error("stream %s: recording to %s failed; closing it and starting a new file",
                           stream, path, exc_info=error)
        recording.failing = True

    def _storage_failed(self, stream: str, path: Path | str, error: OSError) -> None:
        """Pause the stream's recording; on a full disk, retention (if configured) makes room first."""
        if error.errno in (errno.ENOSPC, errno.EDQUOT) and (self.params.keep_files or self.params.keep_bytes):
            make_room(self._finished_files(stream), self.log, stream)
        self.pause.failed(stream, f"recording {path}", error)

    def _finish(self, stream: str, recording: _Recording) -> None:
        """Close the stream's open file (if any), then apply retention."""
        writer, recording.writer = recording.writer, None
        if writer is None:
            return
        try:
            writer.close()
        except OSError as error:
            self._storage_failed(stream, writer.path, error)
        except Exception:
            self.log.exception("stream %s: error while closing %s", stream, writer.path)
        if writer.broken is not None:
            if writer.fragments:
                self.log.info("stream %s: kept %s up to its last fragment on disk (%d fragments)", stream,
                              writer.path, writer.fragments)
        elif writer.frames:
            self.log.info("stream %s: closed %s (%d frames, %.1f s)", stream, writer.path, writer.frames,
                          writer.duration)
        if writer.path.exists():
            self._apply_retention(stream, newest=writer.path)

    def _finished_files(self, stream: str) -> list[Path]:
        """The stream's recordings that are not open, oldest first."""
        recording = self.recordings.peek(stream)
        open_files = {recording.writer.path} if recording is not None and recording.writer is not None else set()
        return [p for p in self.paths.recordings(stream) if p not in open_files]

    def _apply_retention(self, stream: str, newest: Path) -> None:
        # The file just closed is the newest and is always kept.
        files = [p for p in self._finished_files(stream) if p != newest] + [newest]
        apply_retention(files, self.params.keep_files, self.params.keep_bytes, self.log, stream)
