"""Every stage type a graph can name, mapped to the class that implements it.

The keys match `streampose.graph.schema.STAGE_TYPES`; each class's `Params` is that
schema model. Model-running stages load their engines in `__init__`, so importing
this module stays cheap.
"""

from streampose.plugins.stage import PluginStage
from streampose.sinks.clips import ClipStage
from streampose.sinks.jsonl import JsonlStage
from streampose.sinks.publisher import PublisherStage
from streampose.sinks.recorder import RecorderStage
from streampose.stages.detector import DetectorStage
from streampose.stages.jde import JdeStage
from streampose.stages.keypoints import KeypointStage
from streampose.stages.lift3d import Lift3DStage
from streampose.stages.noop import NoopStage
from streampose.stages.pose import PoseStage
from streampose.stages.smoother import SmootherStage
from streampose.stages.tracker import TrackerStage

STAGE_CLASSES = {
    "noop": NoopStage,
    "publisher": PublisherStage,
    "recorder": RecorderStage,
    "jsonl": JsonlStage,
    "clips": ClipStage,
    "detector": DetectorStage,
    "keypoints": KeypointStage,
    "pose": PoseStage,
    "lift3d": Lift3DStage,
    "tracker": TrackerStage,
    "smoother": SmootherStage,
    "jde": JdeStage,
    "plugin": PluginStage,
}
