"""Still images played as a video: a folder's images or a glob's matches, in name order."""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def is_image_pattern(uri: str) -> bool:
    return any(char in uri for char in "*?[")


def find_images(pattern: Path) -> list[Path]:
    """The files a glob matches, or a folder's images, sorted by name.

    Raises FileNotFoundError naming `pattern` when there are none.
    """
    if pattern.is_dir():
        paths = [p for p in pattern.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        what = f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder"
    else:
        paths = [Path(p) for p in glob.glob(str(pattern), recursive=True) if Path(p).is_file()]
        what = "no files match"
    if not paths:
        raise FileNotFoundError(f"{what} {pattern}")
    return sorted(paths)


class ImagePlayback:
    """One pass over the images: yields (picture, media_time), picture() the image (H, W, 3)
    uint8 BGR and media_time = position / fps seconds. Unreadable images are skipped and
    reported to `on_decode_error`."""

    def __init__(self, paths: list[Path], fps: float, on_decode_error: Callable[[], None]):
        self._paths = paths
        self._on_decode_error = on_decode_error
        self.frame_step = 1.0 / fps
        self.packets = None  # images have no compressed video to copy
        self.detail = f"{len(paths)} images at {fps:g} fps"

    def __iter__(self) -> Iterator[tuple[Callable[[], np.ndarray], float]]:
        for position, path in enumerate(self._paths):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                self._on_decode_error()
                continue
            yield (lambda image=image: image), position * self.frame_step

    def close(self) -> None:
        """Nothing is held open between images."""


class ImageReader:
    """Plays the images of a folder or glob, listed afresh at every opening (a loop sees files
    added or removed; FileNotFoundError when none is left)."""

    def __init__(self, pattern: Path, fps: float, on_decode_error: Callable[[], None]):
        self._pattern, self._fps, self._on_decode_error = pattern, fps, on_decode_error

    def open(self) -> ImagePlayback:
        return ImagePlayback(find_images(self._pattern), self._fps, self._on_decode_error)
