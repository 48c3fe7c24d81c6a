"""The sound-localization evaluation protocol of docs/design.md §2: cIoU, AP50, AUC, pointing game.

Two protocols exist in the literature and disagree by a few points; both are implemented
exactly and every number must name the one that produced it:

- ``lvs`` (Chen et al. 2021, the default): OpenCV ``INTER_LINEAR`` resize to 224x224 (pixel
  centres, ``align_corners=False``), min-max normalise, ``thr = sort(P)[224*224 // 2]``, predict
  ``P > thr``. The reference code writes ``pred[pred > thr] = 1; pred[pred < 1] = 0``, which
  also keeps pixels equal to the maximum when more than half the map ties at it: kept here.
- ``ezvsl`` (Mo & Morgado 2022): ``F.interpolate(bilinear, align_corners=True)``, same
  normalisation and threshold, predict ``P >= thr``.

Documented choices where the reference code is silent or crashes:

- A constant map (no information) normalises to all ones, so both protocols predict the whole
  frame, as the reference code does for a non-negative constant map: cIoU = GT area / frame.
- Non-finite values (NaN, +-inf) are replaced by the map's finite minimum (never predicted) and
  the map is flagged; a map with no finite value scores as an empty prediction (cIoU 0,
  pointing miss).
- Empty GT (no box survives clipping): cIoU = 0 (0/0 when the prediction is empty too) and
  pointing = miss; such clips stay in every mean, as in the reference code.
- Pointing game: a hit when the first (row-major) maximum of the upsampled 224x224 map lies on
  a GT pixel with G > 0 (for Flickr: inside any annotator's box).

numpy only: this module runs on an edge box without torch or OpenCV.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .config import EVAL_SIZE
from .data.annotations import Box
from .fileio import atomic_write_bytes
from .localize import normalise, upsample
from .errors import SoundlocError

PROTOCOLS = ("lvs", "ezvsl")
# how the normalised map is cut: the median (both protocols), or SSL-Align's adaptive threshold (its
# test.py's cIoU_adap: as many pixels predicted as the GT has, ``thr = sort(P)[n - |G > 0|]``, ``P > thr``;
# half the frame for an empty GT)
THRESHOLD_RULES = ("median", "adaptive")
DEFAULT_PROTOCOL = "lvs"
THRESHOLDS = tuple(0.05 * i for i in range(21))  # success-curve thresholds, as the reference code builds them


class MetricError(SoundlocError, ValueError):
    """A map or protocol the metrics cannot score (wrong shape, unknown protocol)."""


@dataclass(frozen=True)
class MapScore:
    """The score of one map against one GT map."""

    ciou: float
    pointing: bool
    pred_pixels: int  # positive pixels of the binarised 224x224 prediction
    gt_pixels: float  # sum of the GT map (Flickr: consensus weights)
    non_finite: bool  # the map had NaN/inf values (see the module doc)


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise MetricError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    return protocol


# -- prediction --------------------------------------------------------------------------------
def as_map(m: np.ndarray) -> np.ndarray:
    """A map as a finite-or-not float64 (h, w) array; leading singleton axes are dropped."""
    a = np.asarray(m)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2 or a.size == 0 or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise MetricError(f"a map must be a non-empty 2-D numeric array, got shape {a.shape} dtype {a.dtype}")
    return a.astype(np.float64)


def sanitize(m: np.ndarray) -> tuple[np.ndarray | None, bool]:
    """(map with non-finite values set to its finite minimum, had non-finite values).

    The map is None when no value is finite: it is scored as an empty prediction.
    """
    finite = np.isfinite(m)
    if finite.all():
        return m, False
    if not finite.any():
        return None, True
    return np.where(finite, m, m[finite].min()), True


def check_threshold(rule: str) -> str:
    if rule not in THRESHOLD_RULES:
        raise MetricError(f"unknown threshold {rule!r}; choose from {', '.join(THRESHOLD_RULES)}")
    return rule


def adaptive_binarize(p: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """SSL-Align's adaptive threshold (``THRESHOLD_RULES``): ``P > sort(P)[n - |G > 0|]``."""
    n = p.size
    k = int(np.count_nonzero(gt)) or n // 2
    thr = np.partition(p.ravel(), n - k)[n - k] if k < n else p.min()
    return (p > thr).astype(np.float64)


def binarize(p: np.ndarray, protocol: str = DEFAULT_PROTOCOL) -> np.ndarray:
    """Median-threshold a normalised (224, 224) map into the 0/1 prediction of ``protocol``."""
    k = p.size // 2
    thr = np.partition(p.ravel(), k)[k]  # == np.sort(p.ravel())[k], in linear time
    if check_protocol(protocol) == "lvs":
        return ((p > thr) | (p >= 1.0)).astype(np.float64)
    return (p >= thr).astype(np.float64)


def prediction(m: np.ndarray, protocol: str = DEFAULT_PROTOCOL) -> tuple[np.ndarray, np.ndarray]:
    """(upsampled normalised map, binary prediction), both (224, 224), of a finite (h, w) map."""
    p = normalise(upsample(m, EVAL_SIZE, EVAL_SIZE, align_corners=check_protocol(protocol) == "ezvsl", dtype=np.float64),
                  flat=1.0, dtype=np.float64)
    return p, binarize(p, protocol)


# -- ground truth ------------------------------------------------------------------------------
def _box_pixels(box: Box) -> tuple[int, int, int, int]:
    return tuple(int(EVAL_SIZE * min(max(v, 0.0), 1.0)) for v in box)  # type: ignore[return-value]


def union_gt_map(boxes: Sequence[Box]) -> np.ndarray:
    """VGG-SS GT: (224, 224) binary union of normalised boxes, pixels ``int(224 * v)``."""
    g = np.zeros((EVAL_SIZE, EVAL_SIZE))
    for box in boxes:
        x0, y0, x1, y1 = _box_pixels(box)
        g[y0:y1, x0:x1] = 1.0
    return g


def consensus_gt_map(boxes: Sequence[Box]) -> np.ndarray:
    """Flickr-SoundNet GT: every annotator's box adds 1, then G / 2 capped at 1: (224, 224).

    Boxes are normalised (pixel / 256), so ``int(224 * v)`` equals the reference
    ``int(224 * pixel / 256)`` exactly (division by a power of two is exact).
    """
    g = np.zeros((EVAL_SIZE, EVAL_SIZE))
    for box in boxes:
        x0, y0, x1, y1 = _box_pixels(box)
        g[y0:y1, x0:x1] += 1.0
    return np.minimum(g / 2.0, 1.0)


# -- scores ------------------------------------------------------------------------------------
def ciou(pred: np.ndarray, gt: np.ndarray) -> float:
    """``sum(P*G) / (sum(G) + sum(P*[G==0]))``; 0 when both are empty (empty GT: always 0)."""
    den = gt.sum() + (pred * (gt == 0)).sum()
    return float((pred * gt).sum() / den) if den > 0 else 0.0


def pointing_hit(p: np.ndarray, gt: np.ndarray) -> bool:
    """Does the map's first maximum (row-major) fall on a positive GT pixel? Same shapes."""
    y, x = np.unravel_index(int(np.argmax(p)), p.shape)
    return bool(gt[y, x] > 0)


def score_map(m: np.ndarray, gt: np.ndarray, protocol: str = DEFAULT_PROTOCOL, threshold: str = "median") -> MapScore:
    """Score one map of any (h, w) size against a (224, 224) GT map under ``protocol`` (its
    upsampling) and ``threshold`` (``THRESHOLD_RULES``)."""
    clean, non_finite = sanitize(as_map(m))
    if clean is None:
        return MapScore(0.0, False, 0, float(gt.sum()), True)
    p, pred = prediction(clean, protocol)
    if check_threshold(threshold) == "adaptive":
        pred = adaptive_binarize(p, gt)
    return MapScore(ciou(pred, gt), pointing_hit(p, gt), int(pred.sum()), float(gt.sum()), non_finite)


def success_curve(cious: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds 0, 0.05, ..., 1; fraction of cIoUs >= each threshold)."""
    c = np.asarray(cious, dtype=np.float64)
    if c.size == 0:
        return np.asarray(THRESHOLDS), np.zeros(len(THRESHOLDS))
    return np.asarray(THRESHOLDS), np.array([np.mean(c >= t) for t in THRESHOLDS])


def auc(cious: Sequence[float]) -> float:
    """Trapezoid area under the success curve (what ``sklearn.metrics.auc`` computes)."""
    t, s = success_curve(cious)
    return float(np.sum((t[1:] - t[:-1]) * (s[1:] + s[:-1]) / 2.0))


def summarize(cious: Sequence[float], hits: Sequence[bool] = ()) -> dict[str, float]:
    """AP50 (= mean(cIoU >= 0.5)), AUC, mean cIoU, pointing accuracy and the clip count."""
    c = np.asarray(cious, dtype=np.float64)
    n = int(c.size)
    return {
        "ap50": float(np.mean(c >= 0.5)) if n else 0.0,
        "auc": auc(c),
        "mean_ciou": float(c.mean()) if n else 0.0,
        "pointing": float(np.mean(np.asarray(hits, dtype=bool))) if len(hits) else 0.0,
        "n": n,
    }


# -- baselines and plots -----------------------------------------------------------------------
def center_prior(h: int, w: int, sigma: float = 0.25) -> np.ndarray:
    """A centred Gaussian (h, w) map, ``sigma`` in units of the frame side.

    Under the median threshold any such prior predicts the central disc of half the frame,
    so ``sigma`` changes no cIoU; it only shapes pictures.
    """
    if h < 1 or w < 1 or sigma <= 0:
        raise MetricError(f"center_prior needs h, w >= 1 and sigma > 0, got {h}, {w}, {sigma}")
    y = (np.arange(h) + 0.5) / h - 0.5
    x = (np.arange(w) + 0.5) / w - 0.5
    return np.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2))


def plot_success_curves(curves: Mapping[str, Sequence[float]], path: str | Path, title: str = "") -> Path:
    """Write a PNG of success(t) for each named list of cIoUs (legend shows AUC and AP50)."""
    try:  # Figure + Agg canvas directly: no pyplot, no change to the caller's backend
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MetricError("the success-curve plot needs matplotlib: pip install matplotlib") from None
    fig = Figure(figsize=(5, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, cious in curves.items():
        t, s = success_curve(cious)
        sm = summarize(cious)
        ax.plot(t, s, marker="o", markersize=3, label=f"{name} (AUC {sm['auc']:.3f}, AP50 {sm['ap50']:.3f})")
    ax.set(xlabel="cIoU threshold", ylabel="fraction of clips", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


# -- extended metrics: clips with and without a visible sounding object (SLAVC) ----------------
# Mo & Morgado (NeurIPS 2022) score a localizer on test sets that add clips whose sound has no
# visible source: each clip has a confidence that something visible sounds; a clip without a
# box (``n_boxes == 0``) and a confidence >= the threshold is a false positive, a clip with a
# box counts as a true positive only when its cIoU >= ``ciou_threshold`` too (else a false
# positive), and one under the threshold is a false negative. AP sweeps the threshold over the
# confidences; max-F1 takes the best F1 over every tenth confidence; "precision" is the
# precision with every clip detected. These functions follow their evaluator's arithmetic
# exactly (checked clip by clip in tests/test_metrics.py against a transcription of its rule).


def extended_precision_recall(n_boxes: Sequence[int], cious: Sequence[float], confidences: Sequence[float],
                              threshold: float, ciou_threshold: float = 0.5) -> tuple[float, float]:
    """(precision, recall) at one confidence threshold; 1.0 where a ratio has nothing to count."""
    boxes, c, conf = np.asarray(n_boxes), np.asarray(cious, np.float64), np.asarray(confidences, np.float64)
    detected = conf >= threshold
    tp = int(np.sum(detected & (boxes > 0) & (c >= ciou_threshold)))
    fp = int(np.sum(detected & ((boxes == 0) | (c < ciou_threshold))))
    fn = int(np.sum(~detected & (boxes > 0)))
    return (1.0 if tp + fp == 0 else tp / (tp + fp)), (1.0 if tp + fn == 0 else tp / (tp + fn))


def extended_ap(n_boxes: Sequence[int], cious: Sequence[float], confidences: Sequence[float],
                ciou_threshold: float = 0.5) -> float:
    """Average precision over confidence thresholds: every confidence but the highest, from
    high to low (every ``n // 200``-th when there are many), interpolated (the best precision
    at any lower threshold) and summed over the recall steps."""
    conf = np.sort(np.asarray(confidences, np.float64))
    thresholds = conf[:-1][::-1][:: max(1, len(conf) // 200)]
    if len(thresholds) < 2:
        return 0.0
    pr = np.array([extended_precision_recall(n_boxes, cious, confidences, t, ciou_threshold) for t in thresholds])
    best_after = np.maximum.accumulate(pr[::-1, 0])[::-1]
    return float(np.sum(best_after[:-1] * np.diff(pr[:, 1])))


def extended_f1s(n_boxes: Sequence[int], cious: Sequence[float], confidences: Sequence[float],
                 ciou_threshold: float = 0.5) -> list[float]:
    """F1 at every tenth confidence (sorted, from the lowest): max-F1 is their maximum."""
    conf = sorted(float(v) for v in confidences)
    out = []
    for t in conf[:: max(1, len(conf) // 10)]:
        p, r = extended_precision_recall(n_boxes, cious, confidences, t, ciou_threshold)
        out.append(2 * p * r / (p + r) if p + r > 0 else 0.0)
    return out


def extended_summary(n_boxes: Sequence[int], cious: Sequence[float], confidences: Sequence[float],
                     ciou_threshold: float = 0.5) -> dict[str, float]:
    """AP, max-F1 and precision (every clip detected) over clips with and without a visible
    sounding object, and how many of each."""
    if len(cious) == 0:
        raise MetricError("no clip to score")
    precision, _ = extended_precision_recall(n_boxes, cious, confidences, -np.inf, ciou_threshold)
    boxes = np.asarray(n_boxes)
    return {"ap": extended_ap(n_boxes, cious, confidences, ciou_threshold),
            "max_f1": float(max(extended_f1s(n_boxes, cious, confidences, ciou_threshold))),
            "precision": precision, "n_visible": int(np.sum(boxes > 0)), "n_negative": int(np.sum(boxes == 0))}
