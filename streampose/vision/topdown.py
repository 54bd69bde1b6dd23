"""The top-down crop: which part of the frame a keypoint network sees for each person,
and the affine map between frame pixels and network (or heatmap) pixels.

Conventions are PaddleDetection's, which the TinyPose/HRNet models were trained and
exported with:

- Region (deploy pipeline's `expand_crop`): the box, its corners truncated to whole
  pixels, grows about its centre by `expand_ratio`; if it is then narrower than the
  network's aspect ratio (width / height) it widens to it. Its corners are truncated
  to whole pixels again. Regions are not clipped to the frame: the warp fills what lies
  outside with black, as in training. (The deploy pipeline clips, then scales the
  clipped crop by its width alone, so a person at the frame edge loses head and feet.)
- Center/scale (TopDownEvalAffine): center = the region's centre, scale = its size /
  200 (PaddleDetection's "pixel std"). Only the width sets the zoom; the height follows
  from the network's aspect ratio.
- Affine (get_affine_transform, no rotation): frame point p -> (p - center) * zoom +
  output_size / 2 with zoom = output_width / (scale_x * 200). Heatmap points map back
  with the same formula at the heatmap's size, so no half-pixel shifts anywhere. The
  centre is used unrounded both ways (PaddleDetection's deploy code rounds it when
  mapping back, a shift of up to half a crop pixel).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

PIXEL_STD = 200.0


def crop_regions(boxes: np.ndarray, expand_ratio: float, aspect_ratio: float) -> np.ndarray:
    """Person boxes -> whole-pixel crop regions.

    boxes:        (N, 4) x1, y1, x2, y2 in frame pixels.
    expand_ratio: growth of width and height, as a fraction of the box's size.
    aspect_ratio: the network input's width / height.
    Returns (N, 4) float64 x1, y1, x2, y2 with integer values, possibly outside the frame.
    """
    boxes = np.trunc(np.asarray(boxes, np.float64).reshape(-1, 4))
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * (1 + expand_ratio) / 2
    narrow = half[:, 1] > half[:, 0] / aspect_ratio
    half[narrow, 0] = half[narrow, 1] * aspect_ratio
    return np.floor(np.concatenate([centre - half, centre + half], axis=1))


def center_scale(regions: np.ndarray, aspect_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Regions (N, 4) -> (center (N, 2) in pixels, scale (N, 2) in units of PIXEL_STD pixels),
    scale's height fixed by the network's aspect ratio (width / height)."""
    center = (regions[:, :2] + regions[:, 2:]) / 2
    width = np.maximum(regions[:, 2] - regions[:, 0], 1.0)  # a degenerate box still gets a finite zoom
    scale = np.stack([width, width / aspect_ratio], axis=1) / PIXEL_STD
    return center, scale


def affine_matrices(center: np.ndarray, scale: np.ndarray, output_size: tuple[int, int],
                    inverse: bool = False) -> np.ndarray:
    """THE crop convention: (N, 2, 3) float64 affines from frame pixels to a network
    input or heatmap of `output_size` (width, height), or back with `inverse`.

    center: (N, 2) region centres in frame pixels; scale: (N, 2) region sizes / PIXEL_STD
    (only the width is used: the zoom is uniform).
    """
    center = np.asarray(center, np.float64).reshape(-1, 2)
    out_w, out_h = output_size
    zoom = out_w / (np.asarray(scale, np.float64).reshape(-1, 2)[:, 0] * PIXEL_STD)
    matrices = np.zeros((len(center), 2, 3))
    if inverse:
        matrices[:, 0, 0] = matrices[:, 1, 1] = 1 / zoom
        matrices[:, :, 2] = center - np.array([out_w, out_h]) / 2 / zoom[:, None]
    else:
        matrices[:, 0, 0] = matrices[:, 1, 1] = zoom
        matrices[:, :, 2] = np.array([out_w, out_h]) / 2 - center * zoom[:, None]
    return matrices


def crop_affines(boxes: np.ndarray, expand_ratio: float,
                 input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """THE keypoint stage's crop of each person (crop_regions -> center_scale -> affine_matrices).

    boxes:        (N, 4) x1, y1, x2, y2 in frame pixels.
    expand_ratio: growth of width and height, as a fraction of the box's size.
    input_size:   the network input's (width, height) in pixels; its width / height is the
                  crop's aspect ratio.
    Returns to_crop (N, 2, 3) float64 affines from frame pixels to network input pixels, and
    the crops' center (N, 2) in frame pixels and scale (N, 2) in units of PIXEL_STD pixels,
    from which affine_matrices maps heatmap points back to the frame.
    """
    aspect_ratio = input_size[0] / input_size[1]
    center, scale = center_scale(crop_regions(boxes, expand_ratio, aspect_ratio), aspect_ratio)
    return affine_matrices(center, scale, input_size), center, scale


def apply_affine(points: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """points (N, K, 2) through per-person affines (N, 2, 3) -> (N, K, 2)."""
    return points @ matrices[:, :, :2].transpose(0, 2, 1) + matrices[:, None, :, 2]


def warp_crops(images: Sequence[np.ndarray], image_index: np.ndarray, matrices: np.ndarray,
               output_size: tuple[int, int]) -> np.ndarray:
    """Cut (N, H, W, 3) uint8 crops of `output_size` (width, height): crop i from
    images[image_index[i]] through matrices[i] (frame -> crop), bilinear, black outside."""
    out_w, out_h = output_size
    crops = np.empty((len(matrices), out_h, out_w, 3), np.uint8)
    for i, (index, matrix) in enumerate(zip(image_index, matrices)):
        cv2.warpAffine(images[index], matrix, (out_w, out_h), dst=crops[i], flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return crops
