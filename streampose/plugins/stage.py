"""The `plugin` stage: runs one plugin over each frame's tracked persons and owns
their per-track states, created on a track's first appearance and freed with it."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from pydantic import ValidationError

from streampose.frame import Frame, StreamEvent
from streampose.graph import schema
from streampose.plugins.base import Plugin
from streampose.runtime.stage import Stage, StageContext

# The plugins streampose ships, by the name a graph uses.
SHIPPED = {
    "fall": "streampose.plugins.fall:FallDetector",
    "reps": "streampose.plugins.reps:RepCounter",
    "hand_raised": "streampose.plugins.hand_raised:HandRaised",
}
ENTRY_POINT_GROUP = "streampose.plugins"


def load_plugin_class(name: str | None, module: str | None) -> type[Plugin]:
    """The class a graph names with `plugin:` (shipped or entry point) or `module:`."""
    if (name is None) == (module is None):
        raise ValueError("give exactly one of 'plugin' (a name) or 'module' (package.module:ClassName)")
    if name is not None:
        if name in SHIPPED:
            module = SHIPPED[name]
        else:
            found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
            if not found:
                installed = sorted(SHIPPED) + sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
                raise ValueError(f"unknown plugin '{name}'; available: {', '.join(installed)} "
                                 f"(or name your class with module: package.module:ClassName)")
            cls = found[0].load()
            return _checked(cls, f"entry point {name}")
    module_name, _, class_name = module.partition(":")
    if not class_name:
        raise ValueError(f"module '{module}': expected package.module:ClassName")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot load plugin {module}: {error}") from None
    return _checked(cls, module)


def _checked(cls: Any, where: str) -> type[Plugin]:
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        raise ValueError(f"{where} is not a streampose.plugins.base.Plugin subclass")
    return cls


class PluginStage(Stage):
    Params = schema.Plugin

    def __init__(self, stage_id: str, params: schema.Plugin, context: StageContext):
        super().__init__(stage_id, params, context)
        cls = load_plugin_class(params.plugin, params.module)
        try:
            plugin_params = cls.Params.model_validate(params.params)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(['params', *map(str, e['loc'])])}: "
                                 f"{e['ctx']['error'] if e['type'] == 'value_error' else e['msg'].lower()}"
                                 for e in error.errors())
            raise ValueError(f"plugin {cls.__name__}: {problems}") from None
        self.plugin = cls(plugin_params)
        self.states: dict[tuple[str, int], Any] = {}

    def process(self, frames: list[Frame]) -> None:
        for frame in frames:
            for track_id in frame.ended_tracks:
                self._end(frame.stream, track_id, frame)
            for i, track_id in enumerate(frame.persons.track_ids.tolist()):
                if track_id < 0:
                    continue
                key = (frame.stream, track_id)
                if key not in self.states:
                    self.states[key] = self.plugin.new_track()
                self._emit(frame, self.plugin.on_person(frame, i, self.states[key]))

    def _end(self, stream: str, track_id: int, frame: Frame | None) -> None:
        state = self.states.pop((stream, track_id), None)
        if state is not None:
            self._emit(frame, self.plugin.end_track(frame, track_id, state))

    def _emit(self, frame: Frame | None, events) -> None:
        for event in events:
            self.context.metrics.inc("events", kind=event.kind, stream=event.stream)
            self.log.info("%s %s track %d at %.2f s, score %.2f %s", event.stream, event.kind, event.track_id,
                          event.media_time, event.score, event.data)
            if frame is not None:
                frame.events.append(event)

    def on_stream_event(self, event: StreamEvent) -> None:
        for stream, track_id in [key for key in self.states if key[0] == event.stream]:
            self._end(stream, track_id, None)

    def close(self) -> None:
        self.plugin.close()

    @property
    def live_states(self) -> int:
        return len(self.states)
