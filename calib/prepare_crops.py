"""Cut person crops for INT8 calibration of a top-down keypoint model.

    python calib/prepare_crops.py --out ~/.cache/streampose/calib/keypoints --size 96x128
        [--list calib/keypoint_sources.txt --root $STREAMPOSE_SHARED/media]   persons found by the detector
        [--coco val.json --images DIR]                                       or annotated boxes
        [--count 500]

Crops are cut exactly as the keypoints stage cuts them (streampose.vision.topdown: the box
grown by --expand-ratio, widened to the network's aspect ratio, warped to --size with black
outside the frame), so calibration sees what the network will see. From the list, each source
(an image, or a video with the number of frames to take from it, spread evenly over its length)
goes through the detector stage; persons scoring at least --min-score and at least
--min-height pixels tall are candidates. The --count crops are then taken in turn from each
source (each video, image, or with --coco each annotated image), spread evenly within it, so no
single video dominates. Written: OUT/crop_00001.png ...
(read by `python -m trainers.export tensorrt|quantize --calib OUT` and by the paddle engine's
int8 calibration) and OUT/crops.txt, each crop's source, frame and box. See calib/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import av
import cv2
import numpy as np

from streampose.frame import Frame
from streampose.graph import schema
from streampose.models.folder import default_search_path
from streampose.runtime.stage import StageContext
from streampose.sources.images import IMAGE_SUFFIXES
from streampose.stages.detector import DetectorStage
from streampose.vision import topdown

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STREAMPOSE_SHARED", REPO.parent / "shared"))


def read_list(path: Path, root: Path) -> list[tuple[Path, int]]:
    """(file, frames to take) per line of a source list; images take 1. '#' starts a comment."""
    sources = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        file = Path(fields[0]).expanduser()
        file = file if file.is_absolute() else root / file
        if not file.is_file():
            raise SystemExit(f"{path}:{number}: {file} does not exist")
        if file.suffix.lower() in IMAGE_SUFFIXES:
            frames = 1
        elif len(fields) == 2 and fields[1].isdigit() and int(fields[1]) > 0:
            frames = int(fields[1])
        else:
            raise SystemExit(f"{path}:{number}: a video needs the number of frames to take, e.g. '{fields[0]} 40'")
        sources.append((file, frames))
    if not sources:
        raise SystemExit(f"{path}: lists no sources")
    return sources


def video_frames(path: Path, count: int) -> list[tuple[int, np.ndarray]]:
    """`count` frames (index, BGR image) spread evenly over the video."""
    with av.open(str(path)) as container:
        total = container.streams.video[0].frames
        if total <= 0:  # not in the header: count by decoding
            total = sum(1 for _ in container.decode(video=0))
            container.seek(0)
        wanted = set(np.linspace(0, total - 1, min(count, total)).round().astype(int).tolist())
        return [(i, frame.to_ndarray(format="bgr24")) for i, frame in enumerate(container.decode(video=0))
                if i in wanted]


def cut(image: np.ndarray, box: np.ndarray, size: tuple[int, int], expand_ratio: float) -> np.ndarray:
    """The keypoints stage's crop of `box` (x1, y1, x2, y2) at `size` (width, height)."""
    to_crop, _, _ = topdown.crop_affines(box[None], expand_ratio, size)
    return topdown.warp_crops([image], np.zeros(1, int), to_crop, size)[0]


def detected_persons(sources: list[tuple[Path, int]], detector: DetectorStage, min_score: float, min_height: float,
                     size: tuple[int, int], expand_ratio: float) -> list[list[tuple[str, int, np.ndarray, np.ndarray]]]:
    """Per source, its candidate persons as (source name, frame index, box, crop)."""
    found = []
    for file, count in sources:
        frames = [(0, cv2.imread(str(file)))] if file.suffix.lower() in IMAGE_SUFFIXES else video_frames(file, count)
        persons = []
        for index, image in frames:
            if image is None:
                raise SystemExit(f"cannot decode {file}")
            frame = Frame(stream=file.stem, index=index, image=image, capture_time=0.0, media_time=0.0)
            detector.process([frame])
            boxes, scores = frame.persons.boxes, frame.persons.scores
            keep = (scores >= min_score) & (boxes[:, 3] - boxes[:, 1] >= min_height)
            persons += [(file.name, index, box, cut(image, box, size, expand_ratio)) for box in boxes[keep]]
        found.append(persons)
    return found


def annotated_persons(annotations: Path, images: Path, size: tuple[int, int],
                      expand_ratio: float) -> list[list[tuple[str, int, np.ndarray, np.ndarray]]]:
    """Every non-crowd annotated person of a COCO file, as one source per image."""
    import json

    data = json.loads(annotations.read_text(encoding="utf-8"))
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        if not ann.get("iscrowd", 0):
            by_image.setdefault(ann["image_id"], []).append(ann)
    sources = []
    for record in data["images"]:
        if record["id"] not in by_image:
            continue
        image = cv2.imread(str(images / record["file_name"]))
        if image is None:
            raise SystemExit(f"cannot decode {images / record['file_name']}")
        boxes = [np.array([x, y, x + w, y + h]) for x, y, w, h in (a["bbox"] for a in by_image[record["id"]])]
        sources.append([(record["file_name"], 0, box, cut(image, box, size, expand_ratio)) for box in boxes])
    return sources


def take_evenly(per_source: list[list], count: int) -> list:
    """Up to `count` items, taken in turn from each source, spread evenly within each."""
    quotas = [0] * len(per_source)
    remaining = count
    while remaining > 0 and any(q < len(p) for q, p in zip(quotas, per_source)):
        for i, items in enumerate(per_source):
            if remaining and quotas[i] < len(items):
                quotas[i] += 1
                remaining -= 1
    chosen = []
    for items, quota in zip(per_source, quotas):
        if quota:
            chosen += [items[j] for j in np.linspace(0, len(items) - 1, quota).round().astype(int)]
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python calib/prepare_crops.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the crops (replaced crop_*.png)")
    parser.add_argument("--size", default="96x128", help="network input WIDTHxHEIGHT (infer_cfg trainsize)")
    parser.add_argument("--count", type=int, default=500, help="crops to write")
    parser.add_argument("--list", type=Path, default=REPO / "calib" / "keypoint_sources.txt", help="source list")
    parser.add_argument("--root", type=Path, default=SHARED / "media", help="folder the list's paths are relative to")
    parser.add_argument("--coco", type=Path, help="take annotated boxes from this COCO JSON instead of the list")
    parser.add_argument("--images", type=Path, help="with --coco: its image folder")
    parser.add_argument("--detector", default="picodet_s_320_lcnet_pedestrian_ov", help="detector model")
    parser.add_argument("--models", type=Path, action="append", help="model folder(s) to search")
    parser.add_argument("--min-score", type=float, default=0.5, help="least detection score")
    parser.add_argument("--min-height", type=float, default=48, help="least box height, pixels")
    parser.add_argument("--expand-ratio", type=float, default=0.3, help="the keypoints stage's expand_ratio")
    args = parser.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size {args.size!r}: expected WIDTHxHEIGHT, e.g. 96x128")

    if args.coco:
        if not args.images:
            parser.error("--coco needs --images")
        per_source = annotated_persons(args.coco, args.images, (width, height), args.expand_ratio)
    else:
        paths = args.models or ([] if os.environ.get("STREAMPOSE_MODELS") else [SHARED / "models"])
        context = StageContext(graph_dir=Path("."), output_dir=Path("."), model_paths=default_search_path(paths))
        detector = DetectorStage("detect", schema.Detector(id="detect", type="detector", model=args.detector), context)
        try:
            per_source = detected_persons(read_list(args.list, args.root), detector, args.min_score, args.min_height,
                                          (width, height), args.expand_ratio)
        finally:
            detector.close()
    chosen = take_evenly(per_source, args.count)
    if not chosen:
        raise SystemExit("no person found to crop")
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("crop_*.png"):
        old.unlink()
    lines = ["# crop  source  frame  x1 y1 x2 y2 (box, source pixels)"]
    for number, (name, index, box, crop) in enumerate(chosen, 1):
        file = f"crop_{number:05d}.png"
        cv2.imwrite(str(args.out / file), crop)
        lines.append(f"{file}  {name}  {index}  " + " ".join(f"{v:.1f}" for v in box))
    (args.out / "crops.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    sources = len({line.split()[1] for line in lines[1:]})
    print(f"{len(chosen)} crops of {width}x{height} from {sources} sources in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
