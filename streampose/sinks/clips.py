"""Event clips: a short annotated MP4 around each chosen event, with a JSON sidecar.

Every frame of a stream is drawn and JPEG-encoded into the stream's ring buffer,
which keeps the last `pre_s` seconds of media time but never more than
`max_buffer_bytes`. When a frame carries an event of a chosen kind, a clip opens
with the buffered frames from `pre_s` before it and runs until `post_s` after it;
another chosen event before the end extends the clip, so an incident is one
clip, not several overlapping ones. An event that rides on no frame (a track ended at a stream
gap) opens a clip too, from the buffered frames; the gap then closes it. The ring and the open
clip are the stream's state in the stage's store (runtime/state.py): a timeline break closes
the clip and empties the ring. On close, a sidecar (the clip's path ending in
.json) lists the events as published on `event/<stream>`, and the clip's times.
Clips are fragmented MP4 (recorder.Mp4Writer): a killed daemon leaves the open clip
playable up to its last fragment. A storage error (a full disk) ends the clip, keeping
what reached the disk, and pauses the stream's clips with backoff (sinks/pause.py);
the ring buffer keeps filling, so the first clip after the pause gets its pre-roll.

Why JPEG frames: any frame can open a clip, so the pre-roll starts exactly
`pre_s` before the event (H.264 packets could only start at a keyframe), and a
frame costs ~70-110 KiB at 720p-1080p (30-60 times less than raw) for 2-5 ms of
encoding per frame (libjpeg-turbo). Raw frames would need 2.7-6 MiB each; H.264
packets would be ~10 times smaller than JPEG but cost 3-5 times the CPU on every
frame, event or not.

The pre-roll is not encoded all at once when the event arrives, which would stall
the stream for as long as encoding `pre_s` of video takes: each incoming frame
writes up to CATCH_UP_FRAMES buffered frames, so the clip catches up with the live
frames while the post-roll is recorded. The buffer never drops a frame the open
clip still needs, except to respect `max_buffer_bytes`.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from streampose import messages
from streampose.frame import Event, Frame
from streampose.graph import schema
from streampose.runtime.stage import Stage, StageContext
from streampose.sinks.draw import draw_frame
from streampose.sinks.pause import StoragePause
from streampose.sinks.recorder import Mp4Writer, PathTemplate

# Buffered frames written per incoming frame while a clip's pre-roll is behind.
CATCH_UP_FRAMES = 2


class ClipPathTemplate(PathTemplate):
    """The clip path template: {stream} anywhere; {date}, {time}, {event} and {track} in the file name."""

    FIELDS = ("stream", "date", "time", "event", "track")
    EXAMPLE = {"event": "fall_confirmed", "track": 1}
    NAME = "clips path"


@dataclass
class _Buffered:
    """One frame in a ring buffer."""

    jpeg: np.ndarray  # (bytes,) uint8, the drawn frame as JPEG
    media_time: float  # seconds


@dataclass
class _Clip:
    """A clip being written: ring frames up to `end_time`, written `pending` frames behind the newest."""

    writer: Mp4Writer
    end_time: float  # media time, seconds
    events: list[tuple[Event, int | None]]  # (event, index of the frame that carried it; None: no frame)
    pending: int = 0  # the newest frames of the ring not written yet
    lost_frames: int = 0  # frames dropped from the ring (byte cap) before they were written


@dataclass
class _Clips:
    """A stream's ring buffer of recent frames and its open clip."""

    size: tuple[int, int] | None = None  # width, height of the buffered frames
    ring: deque[_Buffered] = field(default_factory=deque)
    nbytes: int = 0  # JPEG bytes in the ring
    clip: _Clip | None = None
    capped: bool = False  # the byte cap cut the pre-roll short (logged once)

    @property
    def span_s(self) -> float:
        """Media time covered by the ring, seconds."""
        try:
            return self.ring[-1].media_time - self.ring[0].media_time
        except IndexError:  # empty, or emptied while the metrics thread reads it
            return 0.0


class ClipStage(Stage):
    """Saves a clip around each chosen event of each stream."""

    params: schema.Clips

    def __init__(self, stage_id: str, params: schema.Clips, context: StageContext):
        super().__init__(stage_id, params, context)
        self.paths = ClipPathTemplate(params.path, context.output_dir, context.streams)
        self.kinds = frozenset(params.events)
        self.pause = StoragePause(self)
        self.buffers = self.per_stream(_Clips, on_drop=lambda stream, _, clips, __: self._finish(stream, clips))
        for stream in context.streams:
            context.metrics.gauge("clip_buffer_bytes", lambda s=stream: self.buffer_bytes(s), stage=stage_id,
                                  stream=stream)
            context.metrics.gauge("clip_buffer_seconds", lambda s=stream: self.buffer_seconds(s), stage=stage_id,
                                  stream=stream)

    def buffer_bytes(self, stream: str) -> int:
        """JPEG bytes in the stream's ring buffer."""
        clips = self.buffers.peek(stream)
        return clips.nbytes if clips else 0

    def buffer_seconds(self, stream: str) -> float:
        """Media time the stream's ring buffer covers, seconds: the pre-roll a clip opened now would get."""
        clips = self.buffers.peek(stream)
        return clips.span_s if clips else 0.0

    def process(self, frames: list[Frame]) -> None:
        for frame in frames:
            self._take(frame)

    def on_events(self, stream: str, events: list[Event]) -> None:
        clips = self.buffers.peek(stream)
        triggers = [event for event in events if event.kind in self.kinds]
        if clips is not None and clips.ring and triggers:
            self._trigger(stream, clips, triggers, max(e.media_time for e in triggers), None)

    def paused_reason(self, stream: str) -> str | None:
        return self.pause.reason(stream)

    # ------------------------------------------------------------------ per frame

    def _take(self, frame: Frame) -> None:
        clips = self._buffer_for(frame)
        if clips.clip is not None and frame.media_time > clips.clip.end_time:
            self._finish(frame.stream, clips)
        image = draw_frame(frame) if self.params.draw else frame.image
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.params.jpeg_quality])
        if not ok:
            raise RuntimeError(f"stream {frame.stream}: JPEG encoding of frame {frame.index} failed")
        clips.ring.append(_Buffered(jpeg, frame.media_time))
        clips.nbytes += jpeg.nbytes
        if clips.clip is not None:
            clips.clip.pending += 1
        triggers = [event for event in frame.events if event.kind in self.kinds]
        if triggers:
            self._trigger(frame.stream, clips, triggers, frame.media_time, frame.index)
        if clips.clip is not None:
            self._write(frame.stream, clips, CATCH_UP_FRAMES)
        self._trim(frame, clips)

    def _buffer_for(self, frame: Frame) -> _Clips:
        """The stream's buffer, started afresh when the frame size changes."""
        clips = self.buffers.get(frame)
        if clips.size is not None and (frame.width, frame.height) != clips.size:
            self._finish(frame.stream, clips)
            clips.ring.clear()
            clips.nbytes = 0
        clips.size = (frame.width, frame.height)
        return clips

    def _trigger(self, stream: str, clips: _Clips, events: list[Event], media_time: float,
                 index: int | None) -> None:
        """Open a clip (or extend the open one) for `events`, raised at `media_time` on frame
        `index` (None: on no frame; the ring's newest frame is the last one before them)."""
        end_time = media_time + self.params.post_s
        if clips.clip is not None:
            clips.clip.end_time = max(clips.clip.end_time, end_time)
            clips.clip.events.extend((event, index) for event in events)
            self.log.info("stream %s: %s extends clip %s to %.2f s", stream,
                          ", ".join(e.kind for e in events), clips.clip.writer.path.name, clips.clip.end_time)
            return
        first = events[0]
        if self.pause.skip(stream):
            self.log.warning("stream %s: no clip for %s at %.2f s: %s", stream, first.kind, media_time,
                             self.pause.reason(stream))
            return
        path = self.paths.resolve(stream, first.capture_time, event=_file_safe(first.kind), track=first.track_id)
        start_time = media_time - self.params.pre_s
        pending = sum(1 for buffered in clips.ring if buffered.media_time >= start_time)
        try:
            writer = Mp4Writer(path, *clips.size, self.params.crf, self.params.preset, self.params.flush_s)
        except OSError as error:
            self.pause.failed(stream, f"clip {path}", error)
            return
        clips.clip = _Clip(writer, end_time, [(event, index) for event in events], pending)
        self.log.info("stream %s: %s at %.2f s; clip %s with %.2f s of pre-roll (%d frames, buffer %.1f MiB)",
                      stream, first.kind, media_time, path,
                      media_time - clips.ring[-pending].media_time if pending else 0.0, pending,
                      clips.nbytes / 2**20)

    def _write(self, stream: str, clips: _Clips, most: int) -> None:
        """Write up to `most` of the open clip's pending frames, oldest first."""
        clip = clips.clip
        try:
            while clip.pending and most:
                buffered = clips.ring[-clip.pending]
                clip.writer.write(cv2.imdecode(buffered.jpeg, cv2.IMREAD_COLOR), buffered.media_time)
                clip.pending -= 1
                most -= 1
        except OSError as error:  # the storage: a full disk...
            self.pause.failed(stream, f"clip {clip.writer.path}", error)
            clips.clip = None
            self._close(stream, clip)
        except Exception as error:
            self.context.metrics.inc("errors", stage=self.id, stream=stream)
            self.log.error("stream %s: writing clip %s failed; closing it", stream, clip.writer.path,
                           exc_info=error)
            clips.clip = None
            self._close(stream, clip)

    def _trim(self, frame: Frame, clips: _Clips) -> None:
        """Drop the oldest frames beyond the pre-roll (unless the open clip still needs them) or
        beyond the byte cap."""
        oldest_kept = frame.media_time - self.params.pre_s
        pending = clips.clip.pending if clips.clip else 0
        while clips.ring and (clips.nbytes > self.params.max_buffer_bytes
                              or (clips.ring[0].media_time < oldest_kept and len(clips.ring) > pending)):
            dropped = clips.ring.popleft()
            clips.nbytes -= dropped.jpeg.nbytes
            if dropped.media_time >= oldest_kept and not clips.capped:
                clips.capped = True
                self.log.warning("stream %s: max_buffer_bytes (%.1f MiB) holds only %.2f s of frames, less than "
                                 "pre_s (%.2f s); clips get less pre-roll", frame.stream,
                                 self.params.max_buffer_bytes / 2**20, clips.span_s, self.params.pre_s)
            if clips.clip is not None and len(clips.ring) < clips.clip.pending:
                clips.clip.pending -= 1
                clips.clip.lost_frames += 1

    def _finish(self, stream: str, clips: _Clips) -> None:
        """Write the open clip's pending frames, then close it."""
        if clips.clip is not None:
            self._write(stream, clips, clips.clip.pending)
        if clips.clip is not None:  # still open unless writing failed
            clip, clips.clip = clips.clip, None
            self._close(stream, clip)

    def _close(self, stream: str, clip: _Clip) -> None:
        """Close the clip's file and write its sidecar."""
        writer = clip.writer
        try:
            writer.close()
        except OSError as error:
            self.pause.failed(stream, f"clip {writer.path}", error)
        except Exception:
            self.log.exception("stream %s: error while closing clip %s", stream, writer.path)
        if not writer.path.exists():
            return
        if writer.broken is not None:
            self.log.info("stream %s: kept clip %s up to its last fragment on disk (%d fragments)", stream,
                          writer.path, writer.fragments)
        sidecar = writer.path.with_suffix(".json")
        try:
            self._write_sidecar(stream, clip, sidecar)
        except OSError as error:
            self.pause.failed(stream, f"clip sidecar {sidecar}", error)
            return
        if writer.broken is None:
            self.pause.succeeded(stream)
            self.log.info("stream %s: saved clip %s (%d frames, %.2f s, %d event(s)%s)", stream, writer.path,
                          writer.frames, writer.duration, len(clip.events),
                          f", {clip.lost_frames} frames lost to max_buffer_bytes" if clip.lost_frames else "")

    def _write_sidecar(self, stream: str, clip: _Clip, sidecar: Path) -> None:
        writer = clip.writer
        sidecar.write_bytes(messages.encode({
            "stream": stream,
            "clip": writer.path.name,
            "start_media_time": writer.start_time,
            "end_media_time": writer.last_media_time,
            "duration_s": writer.duration,
            "frames": writer.frames,
            "frames_lost": clip.lost_frames,
            "events": [messages.event_message(event, index) for event, index in clip.events],
        }, "json"))


def _file_safe(text: str) -> str:
    """`text` with every character that is not a letter, digit, '_', '.' or '-' replaced by '_'."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)
