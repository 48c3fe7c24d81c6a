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

- ``combined``: a logistic rule on several statistics of the window's map and its S_av
  (``FEATURES``: the means of the map's top quarter, top tenth and bottom quarter, its maximum,
  mean and spread, and S_av), each standardised, weights fitted on the calibration windows
  (L2-penalised logistic regression, ``fit_combined``): a peaky, high map with a strong S_av
  is a source in view; a broad map (noise drives every cell) or a low one is not. On the
  issue-25 test clips its streams kept the box of 81 % / 97 % of visible sources (two seeds)
  where ``top25`` kept 68 %, at the same calibrated false-alarm rate (benchmarks/RESULTS.md).

Any is mapped to [0, 1] over a fixed range ``[lo, hi]`` that belongs to the model (SLAVC
uses its map's range [-1/tau, 1/tau]; our maps have no such bound, so the range is the 1st-99th
percentile of the statistic over the calibration windows) and compared with a threshold chosen
on calibration clips -- positives (source in view and sounding) and negatives (source off-screen
or occluded, or noise) -- so that at most ``target_false_alarm`` of the negative windows pass.
``calibrate`` fits every candidate and keeps the one that keeps the most positives at that
rate, judged by cross-validation over calibration clips (``combined`` has fitted weights: its
in-sample figure would flatter it). The result lives in the export's ``soundloc.json`` under ``visibility``; the audio-level
gate (``--gate-db``) still handles silence. numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import cached_property

import numpy as np

STATISTICS = ("top25", "score", "heard_seen", "combined")
FEATURES = ("top25", "top10", "bottom25", "max", "mean", "std", "score")  # the combined rule's inputs
COMBINED_L2 = 1e-2  # the logistic fit's penalty on the standardised weights
CV_FOLDS = 5  # calibration clips split this many ways to judge the candidates
TARGET_FALSE_ALARM = 0.10  # negatives (off-screen, occluded, noise) that may still get a box


def top_quarter_mean(m: np.ndarray) -> float:
    """SLAVC's confidence statistic: the mean of the highest quarter of the map's values
    (``np.sort(m.flatten())[-n // 4:]``, as its test.py writes it)."""
    flat = np.sort(np.asarray(m, np.float64).ravel())
    return float(flat[-flat.size // 4:].mean())


def map_features(window_map: np.ndarray, score: float) -> np.ndarray:
    """The combined rule's inputs (``FEATURES``, in that order) from one window's mean map and
    mean S_av: one sort of the map's cells."""
    flat = np.sort(np.asarray(window_map, np.float64).ravel())
    n, q, d = flat.size, max(flat.size // 4, 1), max(flat.size // 10, 1)
    top = flat[-n // 4:]  # SLAVC's slice: the highest ceil(n / 4) cells
    mean = flat.sum() / n
    dev = flat - mean  # one pass each, not numpy's generic mean/std (this runs on every step)
    return np.array([top.sum() / top.size, flat[-d:].sum() / d,
                     flat[:q].sum() / q, flat[-1], mean, np.sqrt(dev @ dev / n), float(score)])


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
    if name == "combined":
        raise ValueError("the combined statistic needs its fitted weights (Visibility.raw)")
    raise ValueError(f"visibility statistic must be one of {', '.join(STATISTICS)}, not {name!r}")


@dataclass(frozen=True)
class Visibility:
    """A calibrated confidence: ``statistic`` mapped over ``[lo, hi]`` to [0, 1]; a window is
    visible when its confidence is >= ``threshold``. ``false_alarm`` and ``recall`` are what the
    threshold gave on the calibration windows (negatives kept, positives kept);
    ``cv_recall`` the recall judged on held-out calibration clips (what the choice used).
    ``combined`` also carries its rule: the raw statistic is
    ``((map_features - centre) / scale) @ weights + bias`` (a logit)."""

    statistic: str
    lo: float
    hi: float
    threshold: float
    target_false_alarm: float = TARGET_FALSE_ALARM
    false_alarm: float | None = None
    recall: float | None = None
    windows: tuple[int, int] = (0, 0)  # (positive, negative) calibration windows
    cv_recall: float | None = None
    centre: tuple[float, ...] = ()
    scale: tuple[float, ...] = ()
    weights: tuple[float, ...] = ()
    bias: float = 0.0

    def raw(self, window_map: np.ndarray, score: float,
            posteriors: Mapping[str, np.ndarray] | None = None) -> float:
        """The statistic of one window before the [lo, hi] mapping."""
        if self.statistic == "combined":
            return float(self.logit(map_features(window_map, score)))
        return raw_statistic(self.statistic, window_map, score, posteriors)

    def logit(self, features: np.ndarray) -> float | np.ndarray:
        """The combined rule on ``FEATURES`` rows (one window or (N, F)):
        ``((features - centre) / scale) @ weights + bias``, folded into one dot product."""
        w, b = self._folded
        return np.asarray(features, np.float64) @ w + b

    @cached_property
    def _folded(self) -> tuple[np.ndarray, float]:
        """The rule's weights over the raw features and its bias (computed once, not per step)."""
        w = np.asarray(self.weights, np.float64) / np.asarray(self.scale, np.float64)
        return w, float(self.bias - np.asarray(self.centre, np.float64) @ w)

    def confidence(self, window_map: np.ndarray, score: float,
                   posteriors: Mapping[str, np.ndarray] | None = None) -> float:
        return self.normalise(self.raw(window_map, score, posteriors))

    def normalise(self, raw: float | np.ndarray):
        if isinstance(raw, float):  # one window, every step: plain float arithmetic
            return min(max((raw - self.lo) / max(self.hi - self.lo, 1e-12), 0.0), 1.0)
        out = np.clip((np.asarray(raw, np.float64) - self.lo) / max(self.hi - self.lo, 1e-12), 0.0, 1.0)
        return float(out) if out.ndim == 0 else out

    def visible(self, confidence: float) -> bool:
        return confidence >= self.threshold

    def to_dict(self) -> dict:
        d = asdict(self)
        d["windows"] = list(self.windows)
        for k in ("centre", "scale", "weights"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Visibility":
        d = dict(d)
        d["windows"] = tuple(d.get("windows", (0, 0)))
        for k in ("centre", "scale", "weights"):
            d[k] = tuple(float(x) for x in d.get(k, ()))
        if d.get("statistic") not in STATISTICS:
            raise ValueError(f"unknown visibility statistic {d.get('statistic')!r}")
        if d["statistic"] == "combined" and not len(d["weights"]) == len(d["centre"]) == len(d["scale"]) == len(FEATURES):
            raise ValueError(f"the combined statistic needs {len(FEATURES)} weights, centres and scales")
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
        target: float = TARGET_FALSE_ALARM, **rule) -> Visibility:
    """The calibration of one statistic from raw positive and negative window values
    (``rule``: the combined statistic's centre, scale, weights and bias)."""
    pos, neg = np.asarray(positives, np.float64), np.asarray(negatives, np.float64)
    both = np.concatenate([pos, neg])
    lo, hi = (float(v) for v in np.percentile(both, [1, 99]))
    if hi <= lo:
        hi = lo + 1.0
    base = Visibility(name, lo, hi, 0.0, target)
    thr = threshold_for(base.normalise(neg), target)
    fa = float(np.mean(base.normalise(neg) >= thr)) if neg.size else 0.0
    rec = float(np.mean(base.normalise(pos) >= thr)) if pos.size else 0.0
    return Visibility(name, lo, hi, thr, target, round(fa, 4), round(rec, 4), (int(pos.size), int(neg.size)),
                      **{k: tuple(float(x) for x in v) if k != "bias" else float(v) for k, v in rule.items()})


def recall_at(positives: np.ndarray, negatives: np.ndarray, target: float = TARGET_FALSE_ALARM) -> float:
    """The share of ``positives`` at or above the threshold that keeps ``target`` of ``negatives``."""
    if positives.size == 0 or negatives.size == 0:
        return 0.0
    return float(np.mean(positives >= threshold_for(negatives, target)))


def fit_combined(features: np.ndarray, labels: np.ndarray, l2: float = COMBINED_L2) -> dict:
    """The combined rule from ``FEATURES`` rows of calibration windows (``labels`` 1: source in
    view): each feature standardised over these windows, then an L2-penalised logistic
    regression (scipy's L-BFGS). Returns the rule's ``centre``, ``scale``, ``weights``, ``bias``."""
    from scipy.optimize import minimize

    x, y = np.asarray(features, np.float64), np.asarray(labels, np.float64)
    centre, scale = x.mean(0), np.maximum(x.std(0), 1e-9)
    z = np.c_[(x - centre) / scale, np.ones(len(x))]

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        logit = z @ w
        value = np.mean(y * np.logaddexp(0, -logit) + (1 - y) * np.logaddexp(0, logit)) + l2 * np.sum(w[:-1] ** 2)
        grad = z.T @ (1 / (1 + np.exp(-logit)) - y) / len(y) + np.r_[2 * l2 * w[:-1], 0.0]
        return float(value), grad

    w = minimize(loss, np.zeros(z.shape[1]), jac=True, method="L-BFGS-B").x
    return {"centre": centre, "scale": scale, "weights": w[:-1], "bias": float(w[-1])}


def cross_validated_logits(features: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                           folds: int = CV_FOLDS) -> np.ndarray:
    """The combined rule's logit of every window from a rule fitted without its clip's fold
    (clips, ``groups``, dealt round-robin in sorted order into ``folds``)."""
    groups = np.asarray(groups)
    clips = np.unique(groups)
    out = np.empty(len(groups))
    for k in range(min(folds, clips.size)):
        held = np.isin(groups, clips[k::folds])
        if held.all():  # a single clip: nothing to fit on
            held[:] = False
        rule = fit_combined(features[~held], labels[~held])
        rule_v = Visibility("combined", 0.0, 1.0, 0.0, **{k2: tuple(np.atleast_1d(v)) if k2 != "bias" else v
                                                          for k2, v in rule.items()})
        out[held] = rule_v.logit(features[held])
    return out


def calibrate(positives: dict[str, Sequence[float]], negatives: dict[str, Sequence[float]],
              target: float = TARGET_FALSE_ALARM, groups: tuple[Sequence, Sequence] | None = None
              ) -> tuple[Visibility, dict[str, Visibility]]:
    """Fit every statistic (raw values per statistic name; ``"features"``: the windows'
    ``FEATURES`` rows, for the combined rule, which also needs ``groups``: the clip of each
    positive and negative window). The chosen one keeps the most positives at the target
    false-alarm rate on held-out clips (``cv_recall``; ties: the first of ``STATISTICS``)."""
    fits = {name: fit(name, positives[name], negatives[name], target)
            for name in STATISTICS if name in positives and name != "combined"}
    fits = {n: replace(v, cv_recall=v.recall) for n, v in fits.items()}  # no fitted weights: held out = in sample
    if "features" in positives and groups is not None:
        x = np.concatenate([np.asarray(positives["features"], np.float64), np.asarray(negatives["features"], np.float64)])
        y = np.r_[np.ones(len(positives["features"])), np.zeros(len(negatives["features"]))]
        g = np.concatenate([np.asarray(groups[0]), np.asarray(groups[1])])
        held = cross_validated_logits(x, y, g)
        rule = fit_combined(x, y)
        v = Visibility("combined", 0.0, 1.0, 0.0, **{k: tuple(np.atleast_1d(r)) if k != "bias" else r
                                                    for k, r in rule.items()})
        logit = v.logit(x)
        combined = fit("combined", logit[y == 1], logit[y == 0], target, **rule)
        fits["combined"] = replace(combined, cv_recall=round(recall_at(held[y == 1], held[y == 0], target), 4))
    best = max(fits.values(), key=lambda v: (v.cv_recall or 0.0, -STATISTICS.index(v.statistic)))
    return best, fits
