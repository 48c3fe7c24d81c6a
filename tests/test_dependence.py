"""The label-free audio-dependence check on constructed maps (numpy only)."""

import numpy as np
import pytest

from soundloc.config import MIN_AUDIO_DEPENDENCE
from soundloc.dependence import audio_dependence, map_change, other_clips, peak_shift


def blob(y: float, x: float, size: int = 7) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 2.0)


def test_maps_identical_under_swapped_audio_are_flagged():
    rng = np.random.default_rng(0)
    own = [blob(*rng.uniform(0, 6, 2)) + 0.1 * rng.random((7, 7)) for _ in range(20)]
    dep = audio_dependence(own, [m.copy() for m in own])
    assert dep.clips == 20 and dep.map_change == 0.0 and dep.peak_moved == 0.0 and dep.peak_distance == 0.0
    assert dep.flagged and "barely depend on the audio" in dep.warning()
    assert dep.to_dict()["flagged"] is True


def test_louder_or_offset_maps_of_the_same_place_are_still_flagged():
    # other audio only rescales and shifts the map (loudness), the place stays: saliency
    own = [blob(2, 3), blob(5, 1), blob(1, 1)]
    dep = audio_dependence(own, [3.0 * m + 1.0 for m in own])
    assert dep.map_change == pytest.approx(0.0, abs=1e-12) and dep.flagged


def test_maps_that_move_with_the_audio_are_not_flagged():
    own = [blob(1, 1), blob(5, 5), blob(1, 5), blob(5, 1)]
    other = [blob(5, 5), blob(1, 1), blob(5, 1), blob(1, 5)]  # another sound lights another object
    dep = audio_dependence(own, other)
    assert dep.map_change > 0.9 > MIN_AUDIO_DEPENDENCE and not dep.flagged and dep.warning() == ""
    assert dep.peak_moved == 1.0 and dep.peak_distance == pytest.approx(np.hypot(4, 4) / 7)


def test_median_ignores_a_minority_of_clips():
    own = [blob(1, 1)] * 5
    other = [blob(5, 5)] * 3 + [blob(1, 1)] * 2
    assert not audio_dependence(own, other).flagged
    assert audio_dependence(own, [blob(5, 5)] * 2 + [blob(1, 1)] * 3).flagged


def test_map_change_and_peak_shift_values():
    a = np.arange(9.0).reshape(3, 3)
    assert map_change(a, a) == pytest.approx(0.0) and map_change(a, -a) == pytest.approx(2.0)
    assert map_change(np.ones((3, 3)), np.ones((3, 3))) == 0.0 and map_change(np.ones((3, 3)), a) == 1.0
    assert peak_shift(a, a[::-1, ::-1]) == pytest.approx(np.hypot(2, 2) / 3)


def test_other_clip_has_another_label_when_there_is_one():
    assert other_clips(["a", "a", "b", "a"], 4) == [2, 2, 3, 2]
    assert other_clips(None, 3) == [1, 2, 0] and other_clips(["a", "a"], 2) == [1, 0]
    assert other_clips(None, 1) == [0]


def test_empty_and_mismatched_inputs():
    dep = audio_dependence([], [])
    assert dep.clips == 0 and not dep.flagged
    with pytest.raises(ValueError, match="2 own-audio maps but 1"):
        audio_dependence([blob(1, 1)] * 2, [blob(1, 1)])


def test_check_step_is_the_top_moment_not_a_silent_middle():
    from soundloc.dependence import check_steps

    scores = np.array([[0.0, 5.0, 1.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0, 4.0]])  # middles (step 2) not loudest
    assert check_steps(scores) == [1, 4] and check_steps(scores[0]) == [1]


def test_too_few_clips_are_not_judged():
    """One clip is paired with its own audio (nothing to compare): never flagged, said so."""
    from soundloc.config import MIN_DEPENDENCE_CLIPS

    for n in range(1, MIN_DEPENDENCE_CLIPS):
        dep = audio_dependence([blob(2, 2)] * n, [blob(2, 2)] * n)
        assert not dep.flagged and not dep.judged and "not enough clips to judge" in dep.warning()
        assert dep.to_dict()["flagged"] is False
    assert audio_dependence([blob(2, 2)] * MIN_DEPENDENCE_CLIPS, [blob(2, 2)] * MIN_DEPENDENCE_CLIPS).flagged
