"""Render example images through the detector and keypoint stages into docs/images/.

    python scripts/render_examples.py [--images DIR] [--models DIR] [--out DIR]
                                      [--detector NAME] [--keypoints NAME]

Each image becomes <out>/<name>.jpg (boxes, scores and skeletons drawn, at most
MAX_SIDE pixels on its long side, under MAX_BYTES), so a reader sees what the models
produce. Per image it prints the persons found and the time each stage took.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2

from streampose.frame import Frame
from streampose.graph import schema
from streampose.runtime.stage import StageContext
from streampose.sinks.draw import draw_frame
from streampose.stages.detector import DetectorStage
from streampose.stages.keypoints import KeypointStage

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
MAX_SIDE = 960
MAX_BYTES = 200_000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def encode_small(image, max_bytes: int = MAX_BYTES) -> bytes:
    """JPEG bytes of `image`, shrunk to MAX_SIDE and re-encoded at lower quality until small enough."""
    scale = min(1.0, MAX_SIDE / max(image.shape[:2]))
    if scale < 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    for quality in (90, 80, 70, 60, 50):
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok and len(data) <= max_bytes:
            return data.tobytes()
    raise ValueError(f"cannot encode a {image.shape[1]}x{image.shape[0]} image under {max_bytes} bytes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=SHARED / "media" / "images", help="folder of images")
    parser.add_argument("--models", type=Path, default=SHARED / "models", help="folder of model folders")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images", help="output folder")
    parser.add_argument("--detector", default="picodet_s_192_pedestrian", help="detector model name")
    parser.add_argument("--keypoints", default="tinypose_256x192_ov", help="keypoint model name")
    args = parser.parse_args(argv)

    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        print(f"no images in {args.images}", file=sys.stderr)
        return 1
    context = StageContext(graph_dir=REPO, output_dir=args.out, model_paths=[args.models])
    detector = DetectorStage("detector", schema.Detector(id="detector", type="detector", model=args.detector),
                             context)
    keypoints = KeypointStage("keypoints", schema.Keypoints(id="keypoints", type="keypoints",
                                                            model=args.keypoints), context)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in images:
        image = cv2.imread(str(path))
        if image is None:
            print(f"{path}: not a readable image, skipped", file=sys.stderr)
            continue
        frame = Frame(stream=path.stem, index=0, image=image, capture_time=0.0, media_time=0.0)
        started = time.perf_counter()
        detector.process([frame])
        detected = time.perf_counter()
        keypoints.process([frame])
        done = time.perf_counter()
        target = args.out / f"{path.stem}.jpg"
        target.write_bytes(encode_small(draw_frame(frame)))
        print(f"{path.name}: {len(frame.persons)} persons, detector {1e3 * (detected - started):.1f} ms, "
              f"keypoints {1e3 * (done - detected):.1f} ms (first runs include network compiles) -> {target}")
    detector.close()
    keypoints.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
