"""State a stage keeps per stream or per track, owned by the runtime.

A stage asks for a store in `__init__` (Stage.per_stream / Stage.per_track) and, in
`process`, takes a frame's state with `store.get(frame)` (per stream) or
`store.get(frame, track_id)` (per track): the factory makes it when there is none. The store,
not the stage, decides when a state ends:

- **Timeline breaks** drop every state of the stream: a stream event that restarts it
  (`lost`, `ended`, `opened` after a gap), a frame of a new segment, or media time stepping
  back more than MAX_STEP_BACK_S (a camera's clock reset). `breaks` is the only place this
  rule lives.
- **Ended tracks** (`frame.ended_tracks`) are freed when their frame is reached (`follow`:
  the first `get` of the frame, or after the batch for a frame the stage took no state for).
- **Capacity**: at most `capacity` keys per stream; beyond it the least recently used is
  dropped (logged once per store).
- **Retries**: `Stage.run` opens a transaction around a batch of several frames of a stage with
  `batch.max_size` > 1. Each key touched is copied first (copy.deepcopy), so when the batch
  fails and the runner retries its frames one by one, the copies are put back and no frame's
  state is applied twice. A batch of one frame is never retried and copies nothing, so the
  states of stages without batches (sinks holding open files) are never copied.

Every dropped state goes to `on_drop(stream, key, state, frame)`, `frame` being the frame that
ended the track or None (a timeline break, eviction, close): a plugin's last events.
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from streampose.frame import Frame, StreamEvent

S = TypeVar("S")
STREAM = None  # the key of a per-stream state
# Media time may step back a little (rounding, jitter; a recorder nudges it forward); a bigger
# step back is a new timeline (a camera's clock reset) and every stream state starts afresh.
MAX_STEP_BACK_S = 0.5
_ABSENT = object()  # in the undo log: the key had no state


def breaks(position: tuple[int, float] | None, frame: Frame) -> bool:
    """Whether `frame` cannot continue its stream's timeline at `position` (segment, latest
    media time): a new segment, or media time more than MAX_STEP_BACK_S behind."""
    return position is not None and (frame.segment != position[0]
                                     or frame.media_time < position[1] - MAX_STEP_BACK_S)


class StreamStates(Generic[S]):
    """The states of one stage: per (stream, key), key STREAM for per-stream state or a track id."""

    def __init__(self, factory: Callable[[], S], capacity: int, log: logging.Logger,
                 on_drop: Callable[[str, int | None, S, Frame | None], None] | None = None):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.factory, self.capacity, self.log, self.on_drop = factory, capacity, log, on_drop
        self._states: dict[str, OrderedDict] = {}          # stream -> key -> state, least recent first
        self._positions: dict[str, tuple[int, float]] = {}  # stream -> (segment, latest media time)
        self._undo: dict | None = None                     # (stream, key) -> state before the batch
        self._warned_full = False

    def __len__(self) -> int:
        return sum(len(states) for states in self._states.values())

    # ------------------------------------------------------------------ in process

    def get(self, frame: Frame, key: int | None = STREAM) -> S:
        """The state of `key` in `frame`'s stream (made by the factory if missing), after
        dropping the stream's states if `frame` breaks its timeline."""
        self.follow(frame)
        states = self._states.setdefault(frame.stream, OrderedDict())
        self._remember(frame.stream, key)
        state = states.get(key, _ABSENT)
        if state is _ABSENT:
            state = states[key] = self.factory()
            if len(states) > self.capacity:
                self._evict(frame.stream, states)
        else:
            states.move_to_end(key)
        return state

    def peek(self, stream: str, key: int | None = STREAM) -> S | None:
        """The state as it stands, or None; touches nothing (for gauges and tests)."""
        return self._states.get(stream, {}).get(key)

    def live(self, stream: str) -> dict[int | None, S]:
        """The stream's states by key, to read (not to change)."""
        return dict(self._states.get(stream, {}))

    def move(self, frame: Frame, old: int, new: int) -> S:
        """Give track `old`'s state to track `new` (a track continued under a new id); `old`
        then has none, and is not dropped (no on_drop)."""
        states = self._states[frame.stream]
        self._remember(frame.stream, old)
        self._remember(frame.stream, new)
        states[new] = states.pop(old)
        return states[new]

    def follow(self, frame: Frame) -> None:
        """Move the stream's position to `frame`: drop its states first if it breaks the
        timeline, and free the tracks it ends (each once: their states are gone after)."""
        position = self._positions.get(frame.stream)
        if breaks(position, frame):
            self.drop_stream(frame.stream)
            position = None
        self._remember(frame.stream, "position")
        latest = frame.media_time if position is None else max(position[1], frame.media_time)
        self._positions[frame.stream] = (frame.segment, latest)
        states = self._states.get(frame.stream, {})
        for track_id in frame.ended_tracks:
            if track_id in states:
                self._remember(frame.stream, track_id)
                self._drop(frame.stream, track_id, states.pop(track_id), frame)

    def end_frames(self, frames: list[Frame]) -> None:
        """After a batch: follow every frame (those the stage took no state for, too)."""
        for frame in frames:
            self.follow(frame)

    # ------------------------------------------------------------------ resets

    def on_stream_event(self, event: StreamEvent) -> None:
        if event.restarts_stream:
            self.drop_stream(event.stream)
            self._positions.pop(event.stream, None)

    def drop_stream(self, stream: str) -> None:
        states = self._states.pop(stream, None) or {}
        for key in states:
            self._remember(stream, key, states)
        for key, state in states.items():
            self._drop(stream, key, state, None)

    def close(self) -> None:
        for stream in list(self._states):
            self.drop_stream(stream)

    # ------------------------------------------------------------------ transactions

    def begin(self, undo: bool) -> None:
        """A batch starts; with `undo`, what it changes can be put back by `rollback`."""
        self._undo = {} if undo else None

    def commit(self) -> None:
        self._undo = None

    def rollback(self) -> None:
        """Put back every state and position the batch touched."""
        for (stream, key), before in (self._undo or {}).items():
            if key == "position":
                store, key = self._positions, stream
            else:
                store = self._states.setdefault(stream, OrderedDict())
            if before is _ABSENT:
                store.pop(key, None)
            else:
                store[key] = before
        self._undo = None

    def _remember(self, stream: str, key, states: dict | None = None) -> None:
        """Copy the state (or position) of `key` into the undo log, the first time the batch touches it."""
        if self._undo is None or (stream, key) in self._undo:
            return
        if key == "position":
            before = self._positions.get(stream, _ABSENT)
        else:
            before = (self._states.get(stream, {}) if states is None else states).get(key, _ABSENT)
        self._undo[stream, key] = before if before is _ABSENT else copy.deepcopy(before)

    def _evict(self, stream: str, states: OrderedDict) -> None:
        key = next(iter(states))
        self._remember(stream, key)
        if not self._warned_full:
            self._warned_full = True
            self.log.warning("stream %s: more than %d states; dropping the least recently used (logged once)",
                             stream, self.capacity)
        self._drop(stream, key, states.pop(key), None)

    def _drop(self, stream: str, key, state, frame: Frame | None) -> None:
        if self.on_drop is not None:
            self.on_drop(stream, key, state, frame)
