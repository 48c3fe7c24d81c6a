"""From per-step maps to what users see: 3 s window averages, informative moments, pseudo boxes.

numpy only: the runtime, the evaluation and the annotation tools share it. The per-step maps
themselves (alpha_t = V_t . z^A_t) come from the model or an exported graph.
"""

from __future__ import annotations

import functools
from collections import deque

import numpy as np
from scipy import ndimage

from .config import NORM_EPS, SALIENCE_POWER

Box = tuple[float, float, float, float]  # normalised xmin, ymin, xmax, ymax


def step_maps(V: np.ndarray, za: np.ndarray, kind: str = "dot") -> np.ndarray:
    """Per-step maps from features: V (..., D, T, h, w), z^A (..., T, D) -> (..., T, h, w); the
    numpy twin of ``soundloc.model.classifier.localization_maps`` (``kind``: dot, cosine or
    salient)."""
    if kind in ("cosine", "salient"):
        norm = np.maximum(np.linalg.norm(V, axis=-4, keepdims=True), NORM_EPS)
        V = V / (norm if kind == "cosine" else norm ** (1 - SALIENCE_POWER))
        za = za / np.maximum(np.linalg.norm(za, axis=-1, keepdims=True), NORM_EPS)
    return np.einsum("...dthw,...td->...thw", V, za)


def window_bounds(t: int, steps: int, num_steps: int, mode: str = "centered") -> tuple[int, int]:
    """The [start, stop) steps averaged for step ``t``, clipped to the clip.

    ``centered`` is the paper's Eq. 4, K = [t - d/2, t + d/2] (31 steps for d = 30);
    ``trailing`` is the last ``steps`` steps up to t, what a live stream can show without
    waiting 1.5 s more.
    """
    if mode == "centered":
        start, stop = t - steps // 2, t + steps // 2 + 1
    elif mode == "trailing":
        start, stop = t - steps + 1, t + 1
    else:
        raise ValueError(f"window mode must be 'centered' or 'trailing', not {mode!r}")
    return max(start, 0), min(stop, num_steps)


def window_average(maps: np.ndarray, steps: int, mode: str = "centered") -> np.ndarray:
    """(T, h, w) per-step maps -> (T, h, w) window averages (edges average what exists)."""
    maps = np.asarray(maps, dtype=np.float64)
    csum = np.concatenate([np.zeros((1, *maps.shape[1:])), np.cumsum(maps, axis=0)])
    out = np.empty_like(maps)
    for t in range(len(maps)):
        a, b = window_bounds(t, steps, len(maps), mode)
        out[t] = (csum[b] - csum[a]) / (b - a)
    return out.astype(np.float32)


class TrailingWindow:
    """Running trailing average for a live stream: push a step's map, read the window mean."""

    def __init__(self, steps: int) -> None:
        if steps < 1:
            raise ValueError(f"window must cover at least one step, not {steps}")
        self._maps: deque[np.ndarray] = deque(maxlen=steps)

    def push(self, alpha: np.ndarray) -> np.ndarray:
        self._maps.append(np.asarray(alpha, dtype=np.float32))
        return np.mean(self._maps, axis=0)


def top_k_moments(scores: np.ndarray, k: int = 1) -> list[int]:
    """Indices of the k highest moment scores S_av, best first (ties: earlier step first)."""
    scores = np.asarray(scores, dtype=np.float64)
    scores = np.where(np.isfinite(scores), scores, -np.inf)
    order = np.argsort(-scores, kind="stable")
    return [int(i) for i in order[: max(k, 0)]]


def normalise(m: np.ndarray) -> np.ndarray | None:
    """Min-max normalise to [0, 1]; None for a flat or non-finite map (nothing to localise)."""
    m = np.asarray(m, dtype=np.float64)
    if m.size == 0 or not np.all(np.isfinite(m)):
        return None
    lo, hi = m.min(), m.max()
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return None
    return ((m - lo) / (hi - lo)).astype(np.float32)


@functools.lru_cache(maxsize=32)
def lerp_indices(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of ``n_out`` output pixel centres: the two input cells around it and the weight
    of the second (OpenCV's INTER_LINEAR / align_corners=False, edges clamped). Cached: every
    frame of a stream has the same size."""
    x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0, n_in - 1)
    lo = np.floor(x).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (x - lo).astype(np.float32)
    for a in (lo, hi, frac):
        a.setflags(write=False)
    return lo, hi, frac


def upsample(m: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize with pixel-centre alignment (OpenCV's INTER_LINEAR, align_corners=False)."""
    m = np.asarray(m, dtype=np.float32)
    y0, y1, fy = lerp_indices(height, m.shape[0])
    x0, x1, fx = lerp_indices(width, m.shape[1])
    rows = m[y0] * (1 - fy)[:, None] + m[y1] * fy[:, None]
    return rows[:, x0] * (1 - fx)[None, :] + rows[:, x1] * fx[None, :]


def pseudo_box(m: np.ndarray, height: int, width: int, threshold: float = 0.5) -> Box | None:
    """Paper §5.2: upsample to the frame, min-max normalise, threshold, keep the largest
    connected component, box around it. Returns a normalised box, or None for a flat map."""
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), not {threshold}")
    small = normalise(m)
    if small is None:
        return None
    up = normalise(upsample(small, height, width))
    if up is None:
        return None
    labels, count = ndimage.label(up > threshold)
    if count == 0:
        return None
    sizes = ndimage.sum_labels(np.ones_like(up), labels, index=np.arange(1, count + 1))
    ys, xs = ndimage.find_objects(labels)[int(np.argmax(sizes))]
    return (xs.start / width, ys.start / height, xs.stop / width, ys.stop / height)
