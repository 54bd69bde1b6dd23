"""Measure the detector-free pose networks against the top-down path, for docs/models.md.

    python scripts/compare_posenets.py speed [--frames N]      # ms per frame against persons per frame
    python scripts/compare_posenets.py agreement [--every N]   # keypoints against TinyPose-256x192

speed: the first N frames of the crowd, office and squat clips through top-down (PicoDet-S-320
LCNet + TinyPose-128x96, the demo graph's pair), bottom-up (human-pose-estimation-0001) and MoveNet
Lightning, each frame timed alone (pre-processing, network, decoding); a least-squares line
ms = a + b x persons over all frames says what each extra person costs.

agreement: the shared images and every N-th frame of the single- and few-person clips; the
reference is PicoDet-S-320 + TinyPose-256x192; the demo's TinyPose-128x96 (same detector) is
scored beside the three networks as a yardstick. Each reference person (with a visible torso) is
matched to the nearest found person by torso centre (not matched when farther than a torso
length); joints confident in the reference (> 0.5) count. px = median distance, PCK@0.1 = share
within 0.1 x the torso length (shoulder midpoint to hip midpoint), recall = share of reference
persons matched. Single-person networks (movenet, blazepose) run over every frame of each clip (so
their crop follows the person) and are scored on frames whose reference holds one person.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import av
import cv2
import numpy as np

from streampose.frame import Frame, KEYPOINT_INDEX as J
from streampose.graph import schema
from streampose.runtime.stage import StageContext
from streampose.stages.detector import DetectorStage
from streampose.stages.keypoints import KeypointStage
from streampose.stages.pose import PoseStage

SHARED = Path(os.environ.get("STREAMPOSE_SHARED", Path(__file__).resolve().parent.parent.parent / "shared"))
MODELS = SHARED / "models"
VIDEOS = SHARED / "media" / "video"
IMAGES = SHARED / "media" / "images"
SPEED_CLIPS = ("crowd_walking_overhead.mp4", "office_man_walking_1280x720.mp4", "squat_side_view.mp4")
AGREEMENT_CLIPS = ("squat_side_view.mp4", "office_man_walking_1280x720.mp4", "fall_faint_studio_1280x720.mp4",
                   "reps_squats_side_studio.mp4", "reps_jumping_jacks_front_studio.mp4",
                   "mmaction2_demo_skeleton_2persons.mp4")
POSE_MODELS = {"openpose": "human_pose_estimation_0001_int8_ov", "movenet": "movenet_singlepose_lightning_int8_tflite",
               "blazepose": "blazepose_lite_tflite"}
SINGLE_PERSON = ("movenet", "blazepose")
CONTEXT = StageContext(graph_dir=Path("."), output_dir=Path("."), model_paths=[MODELS])


class TopDown:
    def __init__(self, keypoints: str):
        self.det = DetectorStage("d", schema.Detector(id="d", type="detector",
                                                      model="picodet_s_320_lcnet_pedestrian_ov"), CONTEXT)
        self.kp = KeypointStage("k", schema.Keypoints(id="k", type="keypoints", model=keypoints), CONTEXT)

    def process(self, frames: list[Frame]) -> None:
        self.det.process(frames)
        self.kp.process(frames)


def method(name: str):
    if name == "top-down":
        return TopDown("tinypose_128x96_ov")
    return PoseStage("p", schema.Pose(id="p", type="pose", network=name, model=POSE_MODELS[name]), CONTEXT)


def frames_of(path: Path, count: int | None = None):
    with av.open(str(path)) as container:
        for i, decoded in enumerate(container.decode(video=0)):
            if count is not None and i >= count:
                return
            yield i, decoded.to_ndarray(format="bgr24")


def speed(count: int) -> None:
    print(f"load: {os.getloadavg()[0]:.1f} (1-min average at start, 2 cores)\n")
    print("| clip | method | persons/frame (mean, max) | ms/frame median | ms/frame p90 |")
    print("|---|---|---|---|---|")
    fits = {}
    for name in ("top-down", "openpose", "movenet"):
        runner = method(name)
        all_persons, all_ms = [], []
        for clip in SPEED_CLIPS:
            persons, times = [], []
            for i, image in frames_of(VIDEOS / clip, count):
                frame = Frame(clip, i, image, 0.0, i / 30)
                start = time.perf_counter()
                runner.process([frame])
                times.append((time.perf_counter() - start) * 1000)
                persons.append(len(frame.persons))
            persons, times = np.array(persons[1:]), np.array(times[1:])   # the first run compiles
            print(f"| {clip} | {name} | {persons.mean():.1f}, {persons.max()} | {np.median(times):.1f} | "
                  f"{np.percentile(times, 90):.1f} |")
            all_persons.append(persons)
            all_ms.append(times)
        if name != "movenet":   # one person at most: no cost per person to fit
            fits[name] = np.polyfit(np.concatenate(all_persons), np.concatenate(all_ms), 1)
    print("\n| method | ms per frame with no one (a) | ms per extra person (b) |")
    print("|---|---|---|")
    for name, (slope, intercept) in fits.items():
        print(f"| {name} | {intercept:.1f} | {slope:.1f} |")


def torso(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) torso centres and (N,) lengths of keypoints (N, 17, 3)."""
    shoulders = (k[:, J["left_shoulder"], :2] + k[:, J["right_shoulder"], :2]) / 2
    hips = (k[:, J["left_hip"], :2] + k[:, J["right_hip"], :2]) / 2
    return (shoulders + hips) / 2, np.linalg.norm(shoulders - hips, axis=1)


def score(found: np.ndarray, reference: np.ndarray, tally: dict) -> None:
    centres, lengths = torso(reference)
    seen = reference[:, [5, 6, 11, 12], 2].min(axis=1) > 0.5
    found_centres = torso(found)[0] if len(found) else np.zeros((0, 2))
    for person, centre, length in zip(reference[seen], centres[seen], lengths[seen]):
        tally["persons"] += 1
        if not len(found):
            continue
        distance = np.linalg.norm(found_centres - centre, axis=1)
        if distance.min() > length:
            continue
        tally["matched"] += 1
        match = found[np.argmin(distance)]
        joints = person[:, 2] > 0.5
        error = np.linalg.norm(match[joints, :2] - person[joints, :2], axis=1)
        tally["errors"].extend(error.tolist())
        tally["relative"].extend((error / length).tolist())


def agreement(every: int) -> None:
    reference = TopDown("tinypose_256x192_ov")
    names = ("top-down", *POSE_MODELS)     # top-down: the demo's PicoDet-S-320 + TinyPose-128x96
    tallies = {name: {"persons": 0, "matched": 0, "errors": [], "relative": []} for name in names}
    runners = {name: method(name) for name in names}
    samples = 0
    for path in sorted(IMAGES.iterdir()):
        image = cv2.imread(str(path))
        ref = Frame(path.name, 0, image, 0.0, 0.0)
        reference.process([ref])
        samples += 1
        for name, runner in runners.items():
            if name in SINGLE_PERSON and len(ref.persons) != 1:
                continue
            frame = Frame(path.name, 0, image, 0.0, 0.0)     # its own stream: no crop from elsewhere
            runner.process([frame])
            score(frame.persons.keypoints, ref.persons.keypoints, tallies[name])
    for clip in AGREEMENT_CLIPS:
        for i, image in frames_of(VIDEOS / clip):
            frames = {name: Frame(clip, i, image, 0.0, i / 30) for name in runners}
            for name in SINGLE_PERSON:                      # every frame: the crop follows
                runners[name].process([frames[name]])
            if i % every:
                continue
            ref = Frame(clip, i, image, 0.0, i / 30)
            reference.process([ref])
            samples += 1
            for name in ("top-down", "openpose"):
                runners[name].process([frames[name]])
            for name, frame in frames.items():
                if name in SINGLE_PERSON and len(ref.persons) != 1:
                    continue
                score(frame.persons.keypoints, ref.persons.keypoints, tallies[name])
    print(f"{samples} images and frames (6 images, every {every}th frame of {', '.join(AGREEMENT_CLIPS)})\n")
    print("| network | reference persons | recall | median px | PCK@0.1 torso | PCK@0.2 torso |")
    print("|---|---|---|---|---|---|")
    for name, t in tallies.items():
        errors, relative = np.array(t["errors"]), np.array(t["relative"])
        print(f"| {name} | {t['persons']} | {t['matched'] / max(t['persons'], 1):.2f} | {np.median(errors):.1f} | "
              f"{(relative < 0.1).mean():.2f} | {(relative < 0.2).mean():.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("speed", "agreement"))
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--every", type=int, default=10)
    args = parser.parse_args()
    speed(args.frames) if args.what == "speed" else agreement(args.every)
