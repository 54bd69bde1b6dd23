"""Render docs/models.md's pictures of the detector-free pose networks through the real stages.

    python scripts/render_posenets.py [--media DIR] [--models DIR] [--out DIR]

Each picture runs pose (the network) -> tracker -> smoother over the first frames of a shared
video and draws the chosen frame as the recorder would (BlazePose with its 3D inset), as
render_examples.py does for the top-down demo graph.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from render_examples import REPO, SHARED, Example, encode_small, render
from streampose.graph import schema
from streampose.runtime.stage import StageContext
from streampose.sinks.draw import draw_frame
from streampose.stages.pose import PoseStage
from streampose.stages.smoother import SmootherStage
from streampose.stages.tracker import TrackerStage

EXAMPLES = (
    ("openpose", "human_pose_estimation_0001_int8_ov",
     Example("pose_openpose", "video/mmaction2_demo_skeleton_2persons.mp4", index=12)),
    ("movenet", "movenet_singlepose_lightning_int8_tflite", Example("pose_movenet", "video/squat_side_view.mp4",
                                                                    index=252)),
    ("blazepose", "blazepose_lite_tflite", Example("pose_blazepose", "video/fall_faint_studio_1280x720.mp4",
                                                   index=45)),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--media", type=Path, default=SHARED / "media", help="the shared media folder")
    parser.add_argument("--models", type=Path, default=SHARED / "models", help="folder of model folders")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images", help="output folder")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for network, model, example in EXAMPLES:
        context = StageContext(graph_dir=REPO, output_dir=args.out, model_paths=[args.models],
                               streams=[example.name])
        stages = [PoseStage("pose", schema.Pose(id="pose", type="pose", network=network, model=model), context),
                  TrackerStage("track", schema.Tracker(id="track", type="tracker"), context),
                  SmootherStage("smooth", schema.Smoother(id="smooth", type="smoother"), context)]
        try:
            frame, _ = render(example, args.media / example.video, stages)
        finally:
            for stage in stages:
                stage.close()
        target = args.out / f"{example.name}.jpg"
        target.write_bytes(encode_small(draw_frame(frame)))
        print(f"{target.relative_to(REPO)}: {example.video} frame {frame.index}, {len(frame.persons)} persons, "
              f"{target.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
