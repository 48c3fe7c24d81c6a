"""Does the map follow the audio? A label-free check that needs no boxes.

On real VGGSound a user has class labels at most, never boxes, so no localization metric tells
them whether their model's map is the sounding object or visual saliency that ignores the sound
(what the paper's head learns on our benchmark: benchmarks/RESULTS.md). This check answers it
from the model alone: each validation clip's map with its own audio against the same video's
map with *another* clip's audio (of a different class where labels exist, so the two sounds
should point at different things).

The statistic, per clip, then the median over clips (robust to a few silent or odd clips):

- ``map_change`` = 1 - Pearson correlation of the two maps, in [0, 2]. Correlation ignores
  the maps' scale and offset, which the display normalises away anyway (min-max) and which
  follow the loudness of the audio rather than its content: only *where* the map is high
  counts. A map that ignores the audio scores ~0, one that moves to another object ~1.
- ``peak_moved``: the share of clips whose peak cell moves, and ``peak_distance``, the median
  distance it moves in map widths: the pointing game and the pseudo box read the peak.

Where in the clip: the 3 s window centred on the clip's top-1 informative moment (highest
S_av, ``check_steps``), not the middle frame VGG-SS annotates: the middle may be silent (a gap,
or padding of a clip shorter than ``config.clip_seconds``), and a silent step's map cannot
depend on a sound that is not there. The other clip's audio is taken at the same steps.

``flagged`` when the median ``map_change`` is below ``config.MIN_AUDIO_DEPENDENCE``, over at
least ``config.MIN_DEPENDENCE_CLIPS`` clips (fewer: "not enough clips to judge", never flagged). numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .config import MIN_AUDIO_DEPENDENCE, MIN_DEPENDENCE_CLIPS


@dataclass(frozen=True)
class AudioDependence:
    """The check's result over ``clips`` clips (medians; see the module docstring)."""

    clips: int
    map_change: float
    peak_moved: float
    peak_distance: float

    @property
    def judged(self) -> bool:
        """Whether there were enough clips for the median to mean something (with one clip,
        its "other" audio is its own)."""
        return self.clips >= MIN_DEPENDENCE_CLIPS

    @property
    def flagged(self) -> bool:
        return self.judged and self.map_change < MIN_AUDIO_DEPENDENCE

    def warning(self) -> str:
        """A plain sentence when flagged or when too few clips to judge, else empty."""
        if 0 < self.clips < MIN_DEPENDENCE_CLIPS:
            return (f"audio-dependence check: not enough clips to judge ({self.clips} < {MIN_DEPENDENCE_CLIPS}: "
                    "each clip's map is compared with another clip's sound played over it)")
        if not self.flagged:
            return ""
        return (f"warning: the maps barely depend on the audio (median change {self.map_change:.3f} < "
                f"{MIN_AUDIO_DEPENDENCE} when another clip's sound is played over {self.clips} clips): "
                "they show what looks salient, not what sounds")

    def to_dict(self) -> dict:
        return {**asdict(self), "judged": self.judged, "flagged": self.flagged}


def check_steps(scores: np.ndarray) -> list[int]:
    """The step each clip is checked at: its top-1 informative moment, from S_av scores (B, T)."""
    return [int(t) for t in np.argmax(np.atleast_2d(scores), axis=1)]


def other_clips(labels: Sequence | None, n: int) -> list[int]:
    """For each of ``n`` clips, the index of the clip whose audio replaces its own: the next one
    (cyclically) with a different label, or simply the next one without labels or when all
    clips share a label."""
    out = []
    for i in range(n):
        order = [(i + k) % n for k in range(1, n)]
        diff = [j for j in order if labels is not None and labels[j] != labels[i]]
        out.append(diff[0] if diff else (order[0] if order else i))
    return out


def map_change(own: np.ndarray, other: np.ndarray) -> float:
    """1 - Pearson correlation of two maps of one shape (0 to 2: rounding may not push it below 0);
    two flat maps count as unchanged."""
    a = np.asarray(own, np.float64).ravel()
    b = np.asarray(other, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na < 1e-12 or nb < 1e-12:
        return 0.0 if na < 1e-12 and nb < 1e-12 else 1.0
    return float(np.clip(1.0 - a @ b / (na * nb), 0.0, 2.0))


def peak_shift(own: np.ndarray, other: np.ndarray) -> float:
    """Distance between the two maps' peak cells, in map widths."""
    shape = np.asarray(own).shape
    p = np.array(np.unravel_index(int(np.argmax(own)), shape), float)
    q = np.array(np.unravel_index(int(np.argmax(other)), shape), float)
    return float(np.linalg.norm(p - q) / max(shape[-1], 1))


def audio_dependence(own: Sequence[np.ndarray], other: Sequence[np.ndarray]) -> AudioDependence:
    """The check over pairs of (h, w) maps: ``own[i]`` with clip i's audio, ``other[i]`` with
    another clip's (``other_clips`` chooses which)."""
    if len(own) != len(other):
        raise ValueError(f"{len(own)} own-audio maps but {len(other)} other-audio maps")
    if not own:
        return AudioDependence(0, float("nan"), float("nan"), float("nan"))
    changes = [map_change(a, b) for a, b in zip(own, other)]
    shifts = [peak_shift(a, b) for a, b in zip(own, other)]
    return AudioDependence(clips=len(own), map_change=float(np.median(changes)),
                           peak_moved=float(np.mean([s > 0 for s in shifts])), peak_distance=float(np.median(shifts)))
