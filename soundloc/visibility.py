"""Is the sound's source in view? A per-window confidence, calibrated to a false-alarm rate.

A live camera often hears sounds whose source is not in the frame (off-screen speech, a radio
behind the camera) or plain noise; the map still has a highest cell, so without this every
audible window would get a box. Two statistics of a window are candidates:

- ``top25``: SLAVC's (Mo & Morgado 2022) confidence, the mean of the highest quarter of the
  map's cells (``sort(map)[-n // 4:]``), here on the window's mean map at the model's map
  resolution;
- ``score``: the window's mean audio-visual score S_av (the paper's informative-moment score);
- ``heard_seen``: the vision head's probability of the class the audio head hears best
  (``soundloc.labels``: both over the window): high when the heard class's object is in the
  frame, low when it is off-screen or hidden, or when the sound is no class at all.

Either is mapped to [0, 1] over a fixed range ``[lo, hi]`` that belongs to the model (SLAVC
uses its map's range [-1/tau, 1/tau]; our maps have no such bound, so the range is the 1st-99th
percentile of the statistic over the calibration windows) and compared with a threshold chosen
on calibration clips -- positives (source in view and sounding) and negatives (source off-screen
or occluded, or noise) -- so that at most ``target_false_alarm`` of the negative windows pass.
``calibrate`` computes both statistics and keeps the one that keeps more positives at that
rate. The result lives in the export's ``soundloc.json`` under ``visibility``; the audio-level
gate (``--gate-db``) still handles silence. numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

STATISTICS = ("top25", "score", "heard_seen")
TARGET_FALSE_ALARM = 0.10  # negatives (off-screen, occluded, noise) that may still get a box


def top_quarter_mean(m: np.ndarray) -> float:
    """SLAVC's confidence statistic: the mean of the highest quarter of the map's values
    (``np.sort(m.flatten())[-n // 4:]``, as its test.py writes it)."""
    flat = np.sort(np.asarray(m, np.float64).ravel())
    return float(flat[-flat.size // 4:].mean())


def heard_seen(posteriors: Mapping[str, np.ndarray] | None) -> float:
    """The vision head's probability of the audio head's top class (0 without both heads)."""
    if not posteriors or "vision" not in posteriors or "audio" not in posteriors:
        return 0.0
    return float(posteriors["vision"][int(np.argmax(posteriors["audio"]))])


def raw_statistic(name: str, window_map: np.ndarray, score: float,
                  posteriors: Mapping[str, np.ndarray] | None = None) -> float:
    """The named statistic of one window (its mean map, mean S_av and heads' posteriors)."""
    if name == "top25":
        return top_quarter_mean(window_map)
    if name == "score":
        return float(score)
    if name == "heard_seen":
        return heard_seen(posteriors)
    raise ValueError(f"visibility statistic must be one of {', '.join(STATISTICS)}, not {name!r}")


@dataclass(frozen=True)
class Visibility:
    """A calibrated confidence: ``statistic`` mapped over ``[lo, hi]`` to [0, 1]; a window is
    visible when its confidence is >= ``threshold``. ``false_alarm`` and ``recall`` are what the
    threshold gave on the calibration windows (negatives kept, positives kept)."""

    statistic: str
    lo: float
    hi: float
    threshold: float
    target_false_alarm: float = TARGET_FALSE_ALARM
    false_alarm: float | None = None
    recall: float | None = None
    windows: tuple[int, int] = (0, 0)  # (positive, negative) calibration windows

    def confidence(self, window_map: np.ndarray, score: float,
                   posteriors: Mapping[str, np.ndarray] | None = None) -> float:
        return self.normalise(raw_statistic(self.statistic, window_map, score, posteriors))

    def normalise(self, raw: float | np.ndarray):
        out = np.clip((np.asarray(raw, np.float64) - self.lo) / max(self.hi - self.lo, 1e-12), 0.0, 1.0)
        return float(out) if out.ndim == 0 else out

    def visible(self, confidence: float) -> bool:
        return confidence >= self.threshold

    def to_dict(self) -> dict:
        d = asdict(self)
        d["windows"] = list(self.windows)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Visibility":
        d = dict(d)
        d["windows"] = tuple(d.get("windows", (0, 0)))
        if d.get("statistic") not in STATISTICS:
            raise ValueError(f"unknown visibility statistic {d.get('statistic')!r}")
        return cls(**d)


def threshold_for(negatives: np.ndarray, target: float) -> float:
    """The lowest threshold that at most ``target`` of ``negatives`` reach (conf >= thr)."""
    neg = np.sort(np.asarray(negatives, np.float64))
    if neg.size == 0:
        return 0.0
    allowed = int(np.floor(target * neg.size))  # negatives that may pass
    if allowed >= neg.size:
        return float(neg[0])
    return float(np.nextafter(neg[neg.size - allowed - 1], np.inf))


def fit(name: str, positives: Sequence[float], negatives: Sequence[float],
        target: float = TARGET_FALSE_ALARM) -> Visibility:
    """The calibration of one statistic from raw positive and negative window values."""
    pos, neg = np.asarray(positives, np.float64), np.asarray(negatives, np.float64)
    both = np.concatenate([pos, neg])
    lo, hi = (float(v) for v in np.percentile(both, [1, 99]))
    if hi <= lo:
        hi = lo + 1.0
    base = Visibility(name, lo, hi, 0.0, target)
    thr = threshold_for(base.normalise(neg), target)
    fa = float(np.mean(base.normalise(neg) >= thr)) if neg.size else 0.0
    rec = float(np.mean(base.normalise(pos) >= thr)) if pos.size else 0.0
    return Visibility(name, lo, hi, thr, target, round(fa, 4), round(rec, 4), (int(pos.size), int(neg.size)))


def calibrate(positives: dict[str, Sequence[float]], negatives: dict[str, Sequence[float]],
              target: float = TARGET_FALSE_ALARM) -> tuple[Visibility, dict[str, Visibility]]:
    """Fit every statistic (raw values per statistic name); the chosen one keeps the most
    positives at the target false-alarm rate (ties: the first of ``STATISTICS``)."""
    fits = {name: fit(name, positives[name], negatives[name], target) for name in STATISTICS if name in positives}
    best = max(fits.values(), key=lambda v: (v.recall or 0.0, -STATISTICS.index(v.statistic)))
    return best, fits
