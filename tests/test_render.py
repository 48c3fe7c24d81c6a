"""Overlay drawing: map placement and colour, box pixels, gated indicator, speed."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from soundloc.runtime.render import (
    BOX_COLOR,
    TURBO,
    indicator_region,
    overlay,
    render_step,
    heat_levels,
)
from soundloc.runtime.results import StepResult

GREY = 90


def grey_frame(height: int = 240, width: int = 320) -> np.ndarray:
    return np.full((height, width, 3), GREY, np.uint8)


def one_hot(row: int, col: int, size: int = 7) -> np.ndarray:
    heatmap = np.zeros((size, size), np.float32)
    heatmap[row, col] = 1.0
    return heatmap


@pytest.mark.parametrize("shape", [(240, 320), (241, 321), (720, 1280), (1, 1), (5, 3)])
def test_shapes_dtype_and_input_untouched(shape):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    before = frame.copy()
    out = overlay(frame, rng.random((7, 7)), (0.1, 0.2, 0.8, 0.9), label="dog 0.93")
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert out is not frame
    np.testing.assert_array_equal(frame, before)


def test_turbo_lut_runs_cold_blue_to_hot_red():
    assert TURBO.shape == (256, 3) and TURBO.dtype == np.uint8
    assert TURBO[30, 2] > TURBO[30, 0]  # cold end is blue
    assert TURBO[255, 0] > 3 * TURBO[255, 1] and TURBO[255, 0] > 3 * TURBO[255, 2]  # hot end red
    assert TURBO[128, 1] > 200  # green in the middle


def test_heat_levels_match_pillow_pixel_centre_bilinear():
    rng = np.random.default_rng(1)
    heatmap = rng.random((7, 7)).astype(np.float32)
    ours = heat_levels(heatmap, 240, 320).astype(int)
    reference = Image.fromarray(heatmap * 255, "F").resize((320, 240), Image.Resampling.BILINEAR)
    assert np.abs(ours - np.asarray(reference)).max() <= 1


def test_hottest_cell_is_the_dominant_overlay_colour_at_its_place():
    row, col = 2, 5
    out = overlay(grey_frame(), one_hot(row, col), None).astype(int)
    redness = out[..., 0] - (out[..., 1] + out[..., 2]) / 2
    y, x = np.unravel_index(np.argmax(redness), redness.shape)
    assert int(y * 7 / 240) == row and int(x * 7 / 320) == col
    centre = out[round((row + 0.5) * 240 / 7), round((col + 0.5) * 320 / 7)]
    expected = np.round(GREY * 0.55 + TURBO[255] * 0.45)
    np.testing.assert_allclose(centre, expected, atol=2)
    assert (out[200:, :100] == GREY).all()  # cold map: the scene shows through unchanged


def test_box_pixels_drawn_at_the_right_coordinates():
    frame = np.zeros((240, 320, 3), np.uint8)
    out = overlay(frame, np.zeros((7, 7)), (0.25, 0.25, 0.75, 0.75))
    green = np.all(out == BOX_COLOR, axis=2)
    left, right, top, bottom = 80, 240, 60, 180  # end-exclusive pixel bounds of the box
    assert green[top, left:right].all() and green[top + 1, left:right].all()  # 2 px at 240p
    assert green[bottom - 1, left:right].all() and green[top:bottom, left].all()
    assert green[top:bottom, right - 1].all()
    assert not green[top - 1, left:right].any() and not green[top:bottom, left - 1].any()
    assert not green[bottom, left:right].any() and not green[top:bottom, right].any()
    assert not green[top + 2:bottom - 2, left + 2:right - 2].any()  # hollow


@pytest.mark.parametrize("shape", [(240, 320), (720, 1280), (9, 9)])
def test_gated_frame_unchanged_except_indicator(shape):
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    out = overlay(frame, None, None)
    x0, y0, x1, y1 = indicator_region(shape[1], shape[0])
    changed = np.any(out != frame, axis=2)
    outside = changed.copy()
    outside[y0:y1, x0:x1] = False
    assert not outside.any()
    if shape[0] >= 100:
        assert changed[y0:y1, x0:x1].sum() > 20  # the indicator is really drawn


def test_label_is_drawn_top_left_in_white():
    out = overlay(grey_frame(), None, None, label="dog 0.93")
    corner = out[:20, :100]
    assert np.all(corner > 200, axis=2).sum() > 20  # white (anti-aliased) glyphs
    assert np.all(corner == 0, axis=2).sum() > 200  # on a black band
    assert (out[100:, :] == GREY).all()


def test_bad_maps_and_frames():
    heatmap = np.full((7, 7), np.nan, np.float32)
    heatmap[3, 3] = np.inf
    out = overlay(grey_frame(), heatmap, None)
    assert out.dtype == np.uint8
    with pytest.raises(ValueError, match="frame"):
        overlay(np.zeros((240, 320), np.uint8), None, None)
    with pytest.raises(ValueError, match="frame"):
        overlay(np.zeros((240, 320, 3), np.float32), None, None)
    with pytest.raises(ValueError, match="heatmap"):
        overlay(grey_frame(), np.zeros(7), None)


def test_render_step_draws_each_step_once():
    def step(index: int) -> StepResult:
        return StepResult(index, index / 10, grey_frame(), np.zeros(1600, np.float32), one_hot(1, 1),
                          0.5, (0.1, 0.1, 0.4, 0.4), False, 0.0, 0.0, 0.5)

    first = step(0)
    a = render_step(first)
    assert render_step(first) is a  # second sink gets the cached drawing
    assert not a.flags.writeable
    b = render_step(step(1))
    assert b is not a
    np.testing.assert_array_equal(a, b)  # same content, drawn again for the new step
