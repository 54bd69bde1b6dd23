"""The plugin API: per-person logic over tracked persons, with per-track state.

A plugin is a class with a `Params` schema (a pydantic model; unknown keys are
errors, as everywhere in a graph), a `new_track()` that makes the state of a
track seen for the first time, and an `on_person()` called for every tracked
person of every frame with that person's state. It writes per-person results
into `frame.persons.annotations[i]` (published in pose messages, drawn by the
recorder) and returns events (published on `event/<stream>`, logged, drawn).
The plugin stage creates and frees the states: `end_track()` is called when the
tracker removes the track, the stream has a gap or the graph stops, then the state is
dropped; its events are published like any other.

    class HandRaised(Plugin):
        class Params(PluginParams):
            margin: float = Field(0.05, description="...")

        def new_track(self):
            return {"raised": False}

        def on_person(self, frame, i, state):
            ...
            return [make_event(frame, i, "hand_raised")]
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from streampose.frame import Event, Frame


class PluginParams(BaseModel):
    """Base of every plugin's parameter schema: as strict as the graph's own (graph/schema.py):
    no unknown keys, no `true` for a number, no .inf or .nan."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class Plugin:
    """Base class of plugins; override `new_track` and `on_person`."""

    Params: type[PluginParams] = PluginParams

    def __init__(self, params: PluginParams):
        self.params = params

    def new_track(self) -> Any:
        """The state of a track seen for the first time."""
        return None

    def on_person(self, frame: Frame, i: int, state: Any) -> list[Event]:
        """Row `i` of `frame.persons` (a tracked person) in this frame, with its state."""
        raise NotImplementedError

    def continues(self, frame: Frame, i: int, lost: dict[int, Any]) -> int | None:
        """Row `i` of `frame.persons` is a track seen for the first time: the id of the track
        among `lost` (this stream's tracks with a state that are not in this frame: id ->
        state, to read) that it continues, whose state it then takes over; None for a new state
        from `new_track`. Optional."""
        return None

    def end_track(self, frame: Frame | None, track_id: int, state: Any) -> list[Event]:
        """The track ended (at `frame`, or None at a stream gap); last events, if any."""
        return []

    def close(self) -> None:
        """The graph is stopping."""


def make_event(frame: Frame, i: int, kind: str, score: float = 1.0, **data) -> Event:
    """An event about person `i` of `frame`, stamped with the frame's times."""
    return Event(kind=kind, stream=frame.stream, track_id=int(frame.persons.track_ids[i]),
                 media_time=frame.media_time, capture_time=frame.capture_time, score=float(score), data=data)
