import numpy as np
import pytest

from soundloc.localize import (StepWindow, normalise, pseudo_box, top_k_moments, upsample, window_average,
                               window_bounds)


def test_window_bounds_match_paper_and_live_definitions():
    assert window_bounds(50, 30, 100, "centered") == (35, 66)  # Eq. 4: [t-15, t+15]
    assert window_bounds(50, 30, 100, "trailing") == (21, 51)  # [t-29, t]
    assert window_bounds(3, 30, 100, "centered") == (0, 19)
    assert window_bounds(98, 30, 100, "centered") == (83, 100)
    with pytest.raises(ValueError):
        window_bounds(0, 30, 10, "future")


def test_window_average_on_hand_made_sequence():
    seq = np.arange(6, dtype=np.float32)[:, None, None] * np.ones((6, 2, 2), np.float32)
    centred = window_average(seq, 2, "centered")[:, 0, 0]  # steps [t-1, t+1]
    np.testing.assert_allclose(centred, [0.5, 1, 2, 3, 4, 4.5])
    trailing = window_average(seq, 3, "trailing")[:, 0, 0]  # steps [t-2, t]
    np.testing.assert_allclose(trailing, [0, 0.5, 1, 2, 3, 4])


def test_trailing_window_matches_offline():
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((40, 7, 7)).astype(np.float32)
    w = StepWindow(30, "trailing")
    live = np.stack([out.alpha for m in maps for out in w.push(None, m)])
    np.testing.assert_allclose(live, window_average(maps, 30, "trailing"), atol=1e-5)


def test_top_k_moments():
    assert top_k_moments(np.array([0.1, 3.0, -1.0, 2.0]), 2) == [1, 3]
    assert top_k_moments(np.array([1.0, np.nan, 5.0]), 3) == [2, 0, 1]
    assert top_k_moments(np.array([1.0, 1.0]), 1) == [0]


def test_pseudo_box_surrounds_larger_blob():
    m = np.zeros((7, 7), np.float32)
    m[0:2, 0:2] = 1.0  # small, hotter blob: 4 cells
    m[3:7, 2:7] = 0.9  # larger blob: 20 cells
    box = pseudo_box(m, 112, 112, threshold=0.5)
    assert box is not None
    x0, y0, x1, y1 = box
    assert 2 / 7 - 0.08 < x0 < 3 / 7 and x1 == 1.0
    assert 3 / 7 - 0.08 < y0 < 4 / 7 and y1 == 1.0


def test_peak_segment_box_follows_the_peak_not_the_largest_segment():
    """By hand: [1, 0, .8, .8] upsampled to 8 pixels is [1, .75, .25, .2, .6, .8, .8, .8],
    normalised [1, .6875, .0625, 0, .5, .75, .75, .75]; above 0.5: pixels 0-1 (the peak) and
    5-7 (the largest segment; pixel 4 sits exactly at the threshold and is out)."""
    m = np.array([[1.0, 0.0, 0.8, 0.8]])
    np.testing.assert_allclose(upsample(m, 1, 8)[0], [1, 0.75, 0.25, 0.2, 0.6, 0.8, 0.8, 0.8], atol=1e-6)
    assert pseudo_box(m, 1, 8) == pseudo_box(m, 1, 8, segment="largest") == (5 / 8, 0.0, 1.0, 1.0)
    assert pseudo_box(m, 1, 8, segment="peak") == (0.0, 0.0, 2 / 8, 1.0)
    blob = np.zeros((7, 7))
    blob[2:5, 2:5] = 1.0  # one segment: both rules give the same box
    assert pseudo_box(blob, 224, 224, segment="peak") == pseudo_box(blob, 224, 224)
    with pytest.raises(ValueError, match="segment must be one of largest, peak"):
        pseudo_box(m, 1, 8, segment="biggest")


@pytest.mark.parametrize("m", [np.zeros((7, 7)), np.full((7, 7), 3.0), np.full((7, 7), np.nan)])
def test_flat_or_invalid_map_gives_no_box(m):
    assert pseudo_box(m, 112, 112) is None
    assert normalise(m) is None


def test_upsample_is_pixel_centre_bilinear():
    m = np.array([[0.0, 1.0]], np.float32)
    up = upsample(m, 1, 4)
    np.testing.assert_allclose(up[0], [0, 0.25, 0.75, 1.0])
    assert upsample(np.ones((7, 7)), 224, 224).shape == (224, 224)


def test_upsample_matches_torch_align_corners_false():
    torch = pytest.importorskip("torch", reason="torch (the train extra) not installed")
    m = np.random.default_rng(1).standard_normal((7, 7)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(m)[None, None], size=(224, 160), mode="bilinear",
                                          align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(upsample(m, 224, 160), ref, atol=1e-5)
