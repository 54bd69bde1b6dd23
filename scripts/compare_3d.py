"""BlazePose's world landmarks against the learned lifter, on the same 2D keypoints, for docs/lifter.md.

    python scripts/compare_3d.py [--every N]

Each clip runs through the pose stage (network: blazepose, world_3d: true), then the tracker
and the lift3d stage (the shipped lifter_coco17) on BlazePose's own 2D keypoints, so the two 3D
sources see the same joints. Per clip, over frames where both gave 3D joints:

- MPJPE: mean distance between the two skeletons' joints after moving both roots (hip
  midpoints) together, metres (how much the two disagree on the pose itself);
- depth gap: median |z| difference of the roots, metres (placement: both are placed from the
  2D keypoints, the lifter with an assumed 1.70 m person, BlazePose with its own metric size);
- torso angle: median |difference| of the torso's angle from the vertical (hip midpoint to
  shoulder midpoint against the camera's y axis), degrees, the fall plugin's main 3D cue;
- thigh CV: the coefficient of variation of the left thigh's length over the clip, each source
  (a rigid bone should not change: the lower, the steadier).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import av
import numpy as np

from streampose.frame import Frame
from streampose.geometry.lifting import root_of
from streampose.graph import schema
from streampose.models.folder import default_search_path
from streampose.runtime.stage import StageContext
from streampose.stages.lift3d import Lift3DStage
from streampose.stages.pose import PoseStage
from streampose.stages.tracker import TrackerStage

SHARED = Path(os.environ.get("STREAMPOSE_SHARED", Path(__file__).resolve().parent.parent.parent / "shared"))
CLIPS = ("squat_side_view.mp4", "office_man_walking_1280x720.mp4", "fall_faint_studio_1280x720.mp4",
         "adl_lie_down_on_floor_home.mp4", "reps_pushups_side_home_floorcam.mp4", "reps_jumping_jacks_front_studio.mp4")


def torso_angle(joints: np.ndarray) -> np.ndarray:
    """(N,) degrees between the hip->shoulder vector of (N, 17, 3) joints and straight up (-y)."""
    up = (joints[:, 5] + joints[:, 6]) / 2 - (joints[:, 11] + joints[:, 12]) / 2
    cos = -up[:, 1] / np.maximum(np.linalg.norm(up, axis=1), 1e-9)
    return np.degrees(np.arccos(np.clip(cos, -1, 1)))


def main(every: int) -> None:
    context = StageContext(graph_dir=Path("."), output_dir=Path("."),
                           model_paths=default_search_path([SHARED / "models"]), streams=list(CLIPS))
    pose = PoseStage("p", schema.Pose(id="p", type="pose", network="blazepose", model="blazepose_lite_tflite"),
                     context)
    print("| clip | frames compared | MPJPE (m) | root depth gap (m) | torso angle gap (deg) | "
          "thigh CV blazepose | thigh CV lifter |")
    print("|---|---|---|---|---|---|---|")
    for clip in CLIPS:
        tracker = TrackerStage("t", schema.Tracker(id="t", type="tracker"), context)
        lifter = Lift3DStage("l", schema.Lift3D(id="l", type="lift3d"), context)
        blaze, lifted = [], []
        with av.open(str(SHARED / "media" / "video" / clip)) as container:
            for i, decoded in enumerate(container.decode(video=0)):
                frame = Frame(clip, i, decoded.to_ndarray(format="bgr24"), 0.0, float(decoded.time))
                pose.process([frame])
                tracker.process([frame])
                if not len(frame.persons) or i % every:
                    continue
                own = frame.persons.kpts3d.copy()
                lifter.process([frame])
                both = (own[:, :, 3].max(1) > 0) & (frame.persons.kpts3d[:, :, 3].max(1) > 0)
                blaze.extend(own[both, :, :3])
                lifted.extend(frame.persons.kpts3d[both, :, :3])
        lifter.close()
        a, b = np.array(blaze), np.array(lifted)
        if not len(a):
            print(f"| {clip} | 0 | | | | | |")
            continue
        ra, rb = a - root_of(a)[:, None], b - root_of(b)[:, None]
        mpjpe = np.linalg.norm(ra - rb, axis=-1).mean()
        depth = np.median(np.abs(root_of(a)[:, 2] - root_of(b)[:, 2]))
        angle = np.median(np.abs(torso_angle(a) - torso_angle(b)))

        def thigh_cv(joints):
            length = np.linalg.norm(joints[:, 11] - joints[:, 13], axis=1)
            return length.std() / length.mean()
        print(f"| {clip} | {len(a)} | {mpjpe:.3f} | {depth:.2f} | {angle:.1f} | {thigh_cv(a):.2f} | "
              f"{thigh_cv(b):.2f} |")
    pose.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=int, default=3)
    main(parser.parse_args().every)
