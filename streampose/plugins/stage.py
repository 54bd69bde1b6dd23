"""The `plugin` stage: runs one plugin over each frame's tracked persons. Their per-track
states live in the stage's store (runtime/state.py): created on a track's first appearance,
freed with it (`end_track`, whose events go out with the frame that ended the track, or on
their own path when no frame did: a stream gap, eviction, shutdown)."""

from __future__ import annotations

from pydantic import ValidationError

from streampose.frame import Event, Frame
from streampose.graph import schema
from streampose.plugins.registry import ALLOW_MODULES_ENV, SHIPPED, find_plugin, load_plugin_class
from streampose.runtime.stage import Stage, StageContext

# Most track states per stream; beyond it the least recently seen track's state is ended. A
# tracker ends its tracks, so this only bounds memory when something upstream never does.
MAX_TRACKS = 1024


class PluginStage(Stage):
    def __init__(self, stage_id: str, params: schema.Plugin, context: StageContext):
        super().__init__(stage_id, params, context)
        cls = load_plugin_class(params.plugin, params.module)
        if params.plugin not in SHIPPED:
            # Code from outside streampose now runs in the daemon: say whose.
            self.log.info("imported plugin %s (%s)", find_plugin(params.plugin, params.module),
                          f"module: in the graph; {ALLOW_MODULES_ENV}=0 refuses these" if params.module
                          else f"entry point '{params.plugin}'")
        try:
            plugin_params = cls.Params.model_validate(params.params)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(['params', *map(str, e['loc'])])}: "
                                 f"{e['ctx']['error'] if e['type'] == 'value_error' else e['msg'].lower()}"
                                 for e in error.errors())
            raise ValueError(f"plugin {cls.__name__}: {problems}") from None
        self.plugin = cls(plugin_params)
        self.states = self.per_track(self.plugin.new_track, MAX_TRACKS, on_drop=self._end)

    def process(self, frames: list[Frame]) -> None:
        for frame in frames:
            self.states.follow(frame)  # ended tracks and timeline breaks first: their last events lead
            for i, track_id in enumerate(frame.persons.track_ids.tolist()):
                if track_id < 0:
                    continue
                if self.states.peek(frame.stream, track_id) is None:
                    self._continue(frame, i, track_id)
                self._emit(frame, self.plugin.on_person(frame, i, self.states.get(frame, track_id)))

    def _continue(self, frame: Frame, i: int, track_id: int) -> None:
        """A new track: the plugin may name a lost track it continues, whose state it takes."""
        present = set(frame.persons.track_ids.tolist())
        lost = {key: state for key, state in self.states.live(frame.stream).items() if key not in present}
        old = self.plugin.continues(frame, i, lost) if lost else None
        if old is not None:
            self.states.move(frame, old, track_id)

    def _end(self, stream: str, track_id: int, state, frame: Frame | None) -> None:
        self._emit(frame, self.plugin.end_track(frame, track_id, state), stream)

    def _emit(self, frame: Frame | None, events: list[Event], stream: str = "") -> None:
        for event in events:
            self.context.metrics.inc("events", kind=event.kind, stream=event.stream)
            self.log.info("%s %s track %d at %.2f s, score %.2f %s", event.stream, event.kind, event.track_id,
                          event.media_time, event.score, event.data)
        if frame is not None:
            frame.events.extend(events)
        else:
            self.emit(stream, events)

    def close(self) -> None:
        self.plugin.close()

    @property
    def live_states(self) -> int:
        return len(self.states)
