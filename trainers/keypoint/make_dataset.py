"""Build a COCO keypoint dataset from videos and images, labelled by a teacher model through
the pipeline's own detector and keypoints stages (pseudo-labels).

    python -m trainers.keypoint.make_dataset [--labeller tinypose_256x192_ov] [--look night] [--out DIR]

Frames are taken from each video every --every-s seconds of media time; the still images are
used as they are. The detector stage finds persons, the keypoints stage running the labeller
(by default TinyPose 256x192 with flip test, the teacher a 128x96 student is distilled from)
gives their joints. The default --out, ~/.cache/streampose/datasets/shared_pseudo_<labeller>,
is keyed by the labeller, so labels of one model are never mistaken for another's. A person is kept when its box
scores at least --min-box-score and is at least --min-box-height pixels tall, and its pose
score reaches --min-pose-score; a joint is labelled (visibility 2) when its confidence reaches
--min-joint-confidence, else unlabelled (0). The detector's box is the annotation's bbox, and
its area the annotation's area (COCO's is the segmentation's, which these labels lack).

--look night saves every frame as a night-time infrared camera would show it (monochrome, a
third of the light, darker corners, soft focus, sensor noise) while the teacher labels the frame
as captured: a camera the released models were not trained for, with labels as good as the
daylight ones. The shared media has no night footage; this stands in for "your cameras" when
showing what fine-tuning gains (docs/training.md).

Whole videos are held out (--val-videos): their frames go to val.json, the rest to train.json.
Written: OUT/images/*.jpg, OUT/train.json, OUT/val.json, OUT/dataset.yml (how it was made).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import zlib
from pathlib import Path

import av
import cv2
import numpy as np
import yaml

from streampose.frame import COCO_KEYPOINTS, COCO_SKELETON, Frame
from streampose.graph import schema
from streampose.runtime.stage import StageContext
from streampose.sources.images import IMAGE_SUFFIXES
from streampose.stages.detector import DetectorStage
from streampose.stages.keypoints import KeypointStage

log = logging.getLogger("trainers.keypoint.make_dataset")

SHARED = Path(os.environ.get("STREAMPOSE_SHARED", Path(__file__).resolve().parents[3] / "shared"))
DEFAULT_VAL_VIDEOS = ("jumping_jacks_Ibbu_1.mp4", "mmaction2_demo_skeleton_2persons.mp4", "squat_side_view.mp4")
DEFAULT_LABELLER = "tinypose_256x192_ov"
DATASETS = Path("~/.cache/streampose/datasets")
BATCH = 4  # frames per stage call
JPEG_QUALITY = 95
LOOKS = ("day", "night")
# The night camera: fraction of the light kept, black level and sensor noise (0..255 grey levels),
# lens blur (pixels), brightness lost in the corners (fraction).
NIGHT_GAIN, NIGHT_BLACK, NIGHT_NOISE_STD, NIGHT_BLUR_SIGMA, NIGHT_VIGNETTE = 0.3, 8.0, 8.0, 1.0, 0.25


def make_dataset(out: Path, media: Path, model_paths: list[Path], *, videos: list[str] | None = None,
                 val_videos: tuple[str, ...] = DEFAULT_VAL_VIDEOS, include_images: bool = True, every_s: float = 0.5,
                 detector: str = "picodet_s_320_lcnet_pedestrian_ov", labeller: str = DEFAULT_LABELLER,
                 min_box_score: float = 0.5, min_box_height: float = 96.0, min_pose_score: float = 0.4,
                 min_joint_confidence: float = 0.3, look: str = "day") -> dict:
    """Write the dataset into `out`; returns what dataset.yml records."""
    if look not in LOOKS:
        raise SystemExit(f"look {look!r}: choose one of {', '.join(LOOKS)}")
    video_dir, image_dir = media / "video", media / "images"
    all_videos = sorted(p.name for p in video_dir.glob("*.mp4")) if video_dir.is_dir() else []
    chosen = all_videos if videos is None else list(videos)
    unknown = sorted(set(chosen) - set(all_videos)) + sorted(set(val_videos) - set(chosen))
    if unknown:
        raise SystemExit(f"video(s) {unknown} not among the chosen videos in {video_dir}: "
                         f"{', '.join(chosen) or 'none'}")
    stills = sorted(p for p in image_dir.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if include_images else []
    (out / "images").mkdir(parents=True, exist_ok=True)

    context = StageContext(graph_dir=Path("."), output_dir=out, model_paths=model_paths)
    detect = DetectorStage("detect", schema.Detector(id="detect", type="detector", model=detector,
                                                     batch={"max_size": BATCH}), context)
    pose = KeypointStage("pose", schema.Keypoints(id="pose", type="keypoints", model=labeller, flip_test=True,
                                                  min_box_score=min_box_score, batch={"max_size": BATCH}), context)
    splits = {"train": _CocoWriter(), "val": _CocoWriter()}
    settings = dict(min_box_score=min_box_score, min_box_height=min_box_height, min_pose_score=min_pose_score,
                      min_joint_confidence=min_joint_confidence, look=look)
    try:
        for name in chosen:
            frames = _sampled_frames(video_dir / name, every_s)
            _label(frames, Path(name).stem, splits["val" if name in val_videos else "train"], out, detect, pose,
                   **settings)
        images = ((cv2.imread(str(p)), p) for p in stills)
        _label((Frame(stream=p.stem, index=0, image=image, capture_time=0.0, media_time=0.0) for image, p in images),
               None, splits["train"], out, detect, pose, **settings)
    finally:
        detect.close()
        pose.close()
    for split, writer in splits.items():
        writer.save(out / f"{split}.json")
    record = {
        "made_by": "python -m trainers.keypoint.make_dataset", "media": str(media), "detector": detector,
        "labeller": f"{labeller} (flip test)", "every_s": every_s, **settings,
        "val_videos": sorted(val_videos), "train_videos": sorted(set(chosen) - set(val_videos)),
        "still_images": [p.name for p in stills],
        "counts": {split: {"images": len(w.images), "persons": len(w.annotations)} for split, w in splits.items()},
    }
    (out / "dataset.yml").write_text(yaml.safe_dump(record, sort_keys=False), encoding="utf-8")
    return record


def _sampled_frames(path: Path, every_s: float):
    """Frames of the video at `path`, one per `every_s` seconds of media time (the first at or after each mark)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        next_time = 0.0
        for index, frame in enumerate(container.decode(stream)):
            time_s = float(frame.time) if frame.time is not None else index * float(1 / stream.average_rate)
            if time_s + 1e-6 >= next_time:
                next_time = time_s + every_s
                yield Frame(stream=path.stem, index=index, image=frame.to_ndarray(format="bgr24"),
                            capture_time=0.0, media_time=time_s)


def _label(frames, video: str | None, writer: _CocoWriter, out: Path, detect, pose, **settings) -> None:
    batch = []
    for frame in frames:
        if frame.image is None:
            raise SystemExit(f"cannot decode image {frame.stream}")
        batch.append(frame)
        if len(batch) == BATCH:
            _label_batch(batch, video, writer, out, detect, pose, **settings)
            batch = []
    if batch:
        _label_batch(batch, video, writer, out, detect, pose, **settings)


def _label_batch(frames: list[Frame], video: str | None, writer: _CocoWriter, out: Path, detect, pose, *,
                 min_box_score: float, min_box_height: float, min_pose_score: float, min_joint_confidence: float,
                 look: str) -> None:
    detect.process(frames)
    pose.process(frames)
    for frame in frames:
        persons = frame.persons
        heights = persons.boxes[:, 3] - persons.boxes[:, 1]
        keep = (persons.scores >= min_box_score) & (heights >= min_box_height) & (persons.pose_scores >= min_pose_score)
        if not keep.any():
            continue
        name = f"{video}_{frame.index:05d}.jpg" if video else f"{frame.stream}.jpg"
        image = night_camera(frame.image, seed=zlib.crc32(name.encode())) if look == "night" else frame.image
        cv2.imwrite(str(out / "images" / name), image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        height, width = frame.image.shape[:2]
        image_id = writer.add_image(name, width, height, video or "images")
        for box, joints in zip(persons.boxes[keep], persons.keypoints[keep]):
            writer.add_person(image_id, box, joints, min_joint_confidence)


def night_camera(image: np.ndarray, seed: int) -> np.ndarray:
    """(H, W, 3) uint8 BGR frame -> the same scene as a night-time infrared camera shows it:
    grey (BGR, three equal channels), dim and darker towards the corners, soft and noisy.
    `seed` makes the noise reproducible."""
    height, width = image.shape[:2]
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)
    y, x = np.ogrid[-1:1:height * 1j, -1:1:width * 1j]
    light = NIGHT_GAIN * (1 - NIGHT_VIGNETTE * (x ** 2 + y ** 2) / 2)
    dim = cv2.GaussianBlur(grey * light + NIGHT_BLACK, (0, 0), NIGHT_BLUR_SIGMA)
    noisy = dim + np.random.default_rng(seed).normal(0, NIGHT_NOISE_STD, dim.shape)
    return cv2.cvtColor(np.clip(noisy, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)


class _CocoWriter:
    def __init__(self):
        self.images: list[dict] = []
        self.annotations: list[dict] = []

    def add_image(self, file_name: str, width: int, height: int, source: str) -> int:
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": file_name, "width": width, "height": height,
                            "source": source})
        return image_id

    def add_person(self, image_id: int, box: np.ndarray, joints: np.ndarray, min_confidence: float) -> None:
        labelled = joints[:, 2] >= min_confidence
        points = np.zeros((len(joints), 3))
        points[labelled, :2] = joints[labelled, :2]
        points[labelled, 2] = 2
        x1, y1, x2, y2 = (float(v) for v in box)
        self.annotations.append({
            "id": len(self.annotations) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
            "area": round((x2 - x1) * (y2 - y1), 2), "num_keypoints": int(labelled.sum()),
            "keypoints": [round(float(v), 2) if i % 3 < 2 else int(v) for i, v in enumerate(points.ravel())],
        })

    def save(self, path: Path) -> None:
        category = {"id": 1, "name": "person", "supercategory": "person", "keypoints": list(COCO_KEYPOINTS),
                    "skeleton": [[a + 1, b + 1] for a, b in COCO_SKELETON]}
        path.write_text(json.dumps({"images": self.images, "annotations": self.annotations,
                                    "categories": [category]}), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers.keypoint.make_dataset",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="dataset folder to write "
                        f"(default: {DATASETS}/shared_pseudo_<labeller's folder name>[_night])")
    parser.add_argument("--media", type=Path, default=SHARED / "media", help="folder with video/ and images/")
    parser.add_argument("--models", type=Path, action="append", help="model folder(s) to search "
                        "(default: $STREAMPOSE_MODELS, else the shared models)")
    parser.add_argument("--videos", nargs="*", help="video file names to use (default: every video)")
    parser.add_argument("--val-videos", nargs="*", default=list(DEFAULT_VAL_VIDEOS), help="videos held out")
    parser.add_argument("--no-images", action="store_true", help="leave out the still images")
    parser.add_argument("--every-s", type=float, default=0.5, help="seconds of video between sampled frames")
    parser.add_argument("--detector", default="picodet_s_320_lcnet_pedestrian_ov")
    parser.add_argument("--labeller", default=DEFAULT_LABELLER, metavar="MODEL",
                        help="keypoint model (name or folder) whose flip-tested predictions become the labels")
    parser.add_argument("--look", choices=LOOKS, default="day",
                        help="day: frames saved as captured; night: as a night-time infrared camera shows them "
                        "(labelled as captured)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from streampose.models.folder import default_search_path

    paths = args.models or ([] if os.environ.get("STREAMPOSE_MODELS") else [SHARED / "models"])
    night = "_night" if args.look == "night" else ""
    out = args.out or DATASETS / f"shared_pseudo_{Path(args.labeller).name}{night}"
    log.info("writing %s", out)
    record = make_dataset(out.expanduser(), args.media, default_search_path(paths), videos=args.videos,
                          val_videos=tuple(args.val_videos), include_images=not args.no_images, every_s=args.every_s,
                          detector=args.detector, labeller=args.labeller, look=args.look)
    print(yaml.safe_dump(record["counts"], sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
