"""vision/bars.py: the black bars around a picture, on images built to show each rule."""

from __future__ import annotations

import numpy as np

from streampose.vision.bars import BLACK, EVERY, FIRST_FRAMES, PictureFinder


def scene(height: int = 480, width: int = 640, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(40, 255, (height, width, 3), np.uint8)


def test_letterbox_and_pillarbox_bars_are_found_at_full_resolution_and_scaled():
    image = scene(1080, 1920)
    image[:132], image[-140:], image[:, :240] = 0, 10, BLACK   # bars as encoders pad them
    picture = PictureFinder().update(image)
    # Read on a copy a quarter the size: within 4 pixels.
    assert np.allclose(picture, (240, 132, 1920, 940), atol=4)
    assert PictureFinder().update(scene()) is None


def test_bars_only_narrow_as_the_scene_lights_them_up():
    finder = PictureFinder()
    dark_top = scene()
    dark_top[:100] = 5                                   # a dark ceiling in the first frames
    for _ in range(FIRST_FRAMES - 1):
        assert finder.update(dark_top) == (0, 100, 640, 480)
    lit = scene(seed=1)                                  # then a lamp comes on up there
    assert finder.update(lit) is None
    assert finder.update(dark_top) is None               # once lit, never a bar again


def test_after_the_first_frames_only_every_few_frames_are_read():
    finder = PictureFinder()
    barred = scene()
    barred[:, :50] = 0
    for _ in range(FIRST_FRAMES):
        finder.update(barred)
    lit = scene(seed=2)
    # Frames FIRST_FRAMES + 1 .. EVERY - 1 are not read; frame EVERY is.
    pictures = [finder.update(lit) for _ in range(EVERY - FIRST_FRAMES)]
    assert pictures[:-1] == [(50, 0, 640, 480)] * (EVERY - FIRST_FRAMES - 1) and pictures[-1] is None


def test_a_dark_scene_is_no_bar_and_a_black_image_no_picture():
    dim = np.zeros((480, 640, 3), np.uint8)
    dim[200:260, 300:340] = 200                          # one lamp in a dark room: bars would be most of it
    assert PictureFinder().update(dim) is None
    assert PictureFinder().update(np.zeros((480, 640, 3), np.uint8)) is None


def test_another_frame_size_starts_afresh():
    finder = PictureFinder()
    small = scene(240, 320)
    small[:30], small[-30:] = 0, 0
    assert finder.update(small) == (0, 30, 320, 210)
    assert finder.update(scene()) is None
