"""The per-step localization core: maps and scores from features, the 3 s window, the gate,
informative moments, pseudo boxes.

numpy only. Every path drives this one core: the live runtime (``soundloc.runtime.stream``,
through ``StepLocalizer``), the benchmark's localization stage (the runtime's own
``Localizer``), export verification and the offline analysis of whole clips
(``soundloc.model.inference``: ``window_map``, ``moment_scores``, ``pseudo_box``). The per-step
features themselves come from the model or an exported graph.
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from .config import EVAL_SIZE, NORM_EPS, SALIENCE_POWER, SILENCE_DB, WINDOW_MODES
from .labels import drawn_head, softmax, window_classes

if TYPE_CHECKING:
    from .visibility import Visibility

Box = tuple[float, float, float, float]  # normalised xmin, ymin, xmax, ymax


def step_maps(V: np.ndarray, za: np.ndarray, kind: str = "dot") -> np.ndarray:
    """Per-step maps from features: V (..., D, T, h, w), z^A (..., T, D) -> (..., T, h, w); the
    numpy twin of ``soundloc.model.classifier.localization_maps`` (``kind``: dot, cosine or
    salient)."""
    if kind in ("cosine", "salient"):
        return powered_cosine_maps(V, za, 0.0 if kind == "cosine" else SALIENCE_POWER)
    return np.einsum("...dthw,...td->...thw", V, za)


def powered_cosine_maps(V: np.ndarray, za: np.ndarray, power: float) -> np.ndarray:
    """cos(V_t, z^A_t) * |V_t|^power per location, shapes as ``step_maps``: power 0 is the cosine
    map, ``SALIENCE_POWER`` the salient one, 1 the dot product's spatial shape."""
    norm = np.maximum(np.linalg.norm(V, axis=-4, keepdims=True), NORM_EPS)
    za = za / np.maximum(np.linalg.norm(za, axis=-1, keepdims=True), NORM_EPS)
    return np.einsum("...dthw,...td->...thw", V / norm ** (1 - power), za)


def moment_scores(zv: np.ndarray, za: np.ndarray) -> np.ndarray:
    """S_av per step: z^V (..., T, D), z^A (..., T, D) -> (..., T); the numpy twin of
    ``soundloc.model.classifier.moment_scores``."""
    return np.einsum("...td,...td->...t", zv, za)


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
        raise ValueError(f"window mode must be one of {', '.join(WINDOW_MODES)}, not {mode!r}")
    return max(start, 0), min(stop, num_steps)


def window_map(maps: np.ndarray, t: int, steps: int, mode: str = "centered") -> np.ndarray:
    """The window average at one step ``t`` of (T, h, w) per-step maps (``centered``: the
    paper's Eq. 4, the mean over [t - d/2, t + d/2])."""
    lo, hi = window_bounds(t, steps, len(maps), mode)
    return maps[lo:hi].mean(axis=0)


def window_average(maps: np.ndarray, steps: int, mode: str = "centered") -> np.ndarray:
    """(T, h, w) per-step maps -> (T, h, w) window averages (edges average what exists)."""
    maps = np.asarray(maps, dtype=np.float64)
    csum = np.concatenate([np.zeros((1, *maps.shape[1:])), np.cumsum(maps, axis=0)])
    out = np.empty_like(maps)
    for t in range(len(maps)):
        a, b = window_bounds(t, steps, len(maps), mode)
        out[t] = (csum[b] - csum[a]) / (b - a)
    return out.astype(np.float32)


@dataclass
class Windowed:
    """One step leaving the window: what was pushed with it, the mean map and S_av over its
    window, and the mean audio power of its last ``gate_steps`` steps."""

    item: Any
    alpha: np.ndarray
    score: float
    power: float
    extra: np.ndarray | None = None  # the window's mean of what was pushed as ``extra`` (the label logits)


class StepWindow:
    """The window of a stream, one step at a time: push each step's map (with its score and
    audio power); each step comes out once its window is complete (``future`` steps later
    when centred, at once when trailing) with the averages ``window_average`` gives offline."""

    def __init__(self, steps: int, mode: str = "trailing", gate_steps: int = 1) -> None:
        if steps < 1 or gate_steps < 1:
            raise ValueError(f"window and gate must cover at least one step, not {steps} and {gate_steps}")
        window_bounds(0, steps, 1, mode)  # checks the mode
        self.steps, self.mode, self.gate_steps = steps, mode, gate_steps
        self.future = steps // 2 if mode == "centered" else 0
        past = steps // 2 if mode == "centered" else steps - 1
        self.buf: deque[tuple[Any, np.ndarray, float, float, np.ndarray | None]] = deque(maxlen=max(past, gate_steps - 1) + self.future + 1)
        self.count = 0
        self.emitted = 0

    def push(self, item: Any, alpha: np.ndarray, score: float = 0.0, power: float = 0.0,
             extra: np.ndarray | None = None) -> list[Windowed]:
        self.buf.append((item, np.asarray(alpha), float(score), float(power), None if extra is None else np.asarray(extra)))
        self.count += 1
        ready = []
        while self.emitted + self.future < self.count:
            ready.append(self._average(self.emitted))
        return ready

    def flush(self) -> list[Windowed]:
        """End of stream: the steps still waiting for their future, averaged over what exists."""
        return [self._average(self.emitted) for _ in range(self.count - self.emitted)]

    def _average(self, k: int) -> Windowed:
        first = self.count - len(self.buf)
        lo, hi = window_bounds(k, self.steps, self.count, self.mode)
        steps = [self.buf[i - first] for i in range(lo, hi)]
        recent = [self.buf[i - first][3] for i in range(max(k - self.gate_steps + 1, first), k + 1)]
        self.emitted += 1
        extra = None if steps[0][4] is None else np.mean([s[4] for s in steps], axis=0)
        return Windowed(self.buf[k - first][0], np.mean([s[1] for s in steps], axis=0),
                        float(np.mean([s[2] for s in steps])), float(np.mean(recent)), extra)


def level_db(power: float) -> float:
    """dBFS of a mean square audio power (``SILENCE_DB`` for digital silence)."""
    return SILENCE_DB if power <= 1e-12 else max(SILENCE_DB, 10.0 * float(np.log10(power)))


def is_gated(level: float, score: float, gate_db: float | None, gate_score: float | None) -> bool:
    """Nothing audible comes from the scene: the audio level is below ``gate_db`` (silence) or
    the window's mean S_av is below ``gate_score`` (sound the model ties to nothing visible)."""
    return (gate_db is not None and level < gate_db) or (gate_score is not None and score < gate_score)


@dataclass(frozen=True)
class Localized:
    """One step as users see it: ``heatmap`` (the window's map min-max normalised) is None when
    the step is gated (or the map is flat); ``box`` also when the source is judged not in view
    (``visible`` false) or its class is filtered out. ``classes``: per label head, the window's
    top classes (name, probability), empty for a model without label outputs or a gated step;
    ``label``: the drawn head's top class, set when the box is drawn; ``confidence``: that the
    source is in view (None without a calibration)."""

    item: Any
    heatmap: np.ndarray | None
    box: Box | None
    score: float
    level_db: float
    gated: bool
    classes: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    confidence: float | None = None
    visible: bool = True
    label: str | None = None


@dataclass(frozen=True)
class Labelling:
    """What the label outputs mean: the heads (in the order their logits are concatenated in a
    step's ``extra``), the class names, and ``only``: the classes localized (``--classes``;
    empty: all)."""

    heads: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    only: tuple[str, ...] = ()

    def posteriors(self, extra: np.ndarray | None) -> dict[str, np.ndarray]:
        """Per head, the softmax of its window-mean logits (one softmax over all heads: this
        runs on every step)."""
        if extra is None or not self.heads:
            return {}
        return dict(zip(self.heads, softmax(np.asarray(extra).reshape(len(self.heads), -1))))


class StepLocalizer:
    """The per-step stage of every stream: window, gate, visibility, labels, box. Push each
    finished model step's map, score, audio power and label logits (the heads' concatenated);
    localized steps come out in order (``flush`` at the end)."""

    def __init__(self, steps: int, mode: str = "trailing", gate_steps: int = 1, gate_db: float | None = None,
                 gate_score: float | None = None, box_threshold: float = 0.5,
                 visibility: "Visibility | None" = None, labelling: Labelling = Labelling()) -> None:
        self.window = StepWindow(steps, mode, gate_steps)
        self.gate_db, self.gate_score, self.box_threshold = gate_db, gate_score, box_threshold
        self.visibility, self.labelling = visibility, labelling

    @property
    def future(self) -> int:
        """Steps a step waits for the rest of its window (half the window when centred)."""
        return self.window.future

    def push(self, item: Any, alpha: np.ndarray, score: float, power: float = 0.0,
             logits: np.ndarray | None = None) -> list[Localized]:
        return [self._localize(w) for w in self.window.push(item, alpha, score, power, logits)]

    def flush(self) -> list[Localized]:
        return [self._localize(w) for w in self.window.flush()]

    def _localize(self, w: Windowed) -> Localized:
        db = level_db(w.power)
        gated = is_gated(db, w.score, self.gate_db, self.gate_score)
        heat = None if gated else normalise(w.alpha)
        posteriors = self.labelling.posteriors(w.extra)
        conf = None if self.visibility is None else self.visibility.confidence(w.alpha, w.score, posteriors)
        visible = heat is not None and (conf is None or self.visibility.visible(conf))
        classes = {} if heat is None else window_classes(posteriors, self.labelling.names)
        head = drawn_head(list(classes))
        top = classes[head][0][0] if head else None
        wanted = not self.labelling.only or top in self.labelling.only
        box = pseudo_box(w.alpha, EVAL_SIZE, EVAL_SIZE, self.box_threshold) if visible and wanted else None
        label = f"{top} {classes[head][0][1]:.0%}" if box is not None and head else None
        return Localized(w.item, heat, box, w.score, db, heat is None, classes, conf, visible, label)


def top_k_moments(scores: np.ndarray, k: int = 1) -> list[int]:
    """Indices of the k highest moment scores S_av, best first (ties: earlier step first)."""
    scores = np.asarray(scores, dtype=np.float64)
    scores = np.where(np.isfinite(scores), scores, -np.inf)
    order = np.argsort(-scores, kind="stable")
    return [int(i) for i in order[: max(k, 0)]]


def normalise(m: np.ndarray, flat: float | None = None, dtype: type = np.float32) -> np.ndarray | None:
    """Min-max normalise to [0, 1] (computed in float64, returned as ``dtype``).

    A flat map has no peak: with ``flat=None`` it gives None (nothing to localise: the
    runtime shows no map), with a number every value becomes it (the evaluation protocol
    scores a constant map as all ones). A non-finite map gives None.
    """
    m = np.asarray(m, dtype=np.float64)
    if m.size == 0 or not np.all(np.isfinite(m)):
        return None
    lo, hi = m.min(), m.max()
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return None if flat is None else np.full(m.shape, flat, dtype)
    return ((m - lo) / (hi - lo)).astype(dtype)


@functools.lru_cache(maxsize=64)
def lerp_indices(n_out: int, n_in: int, align_corners: bool = False,
                 dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of ``n_out`` output pixels: the two input cells around it and the weight of the
    second, edges clamped. Pixel centres (``align_corners=False``: OpenCV's INTER_LINEAR,
    torch's default) or corner pixels aligned (torch's ``align_corners=True``). Cached and
    read-only: every frame of a stream, every map of a benchmark has the same size."""
    if align_corners:
        x = np.arange(n_out) * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
    else:
        x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0, n_in - 1)
    lo = np.floor(x).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (x - lo).astype(dtype)
    for a in (lo, hi, frac):
        a.setflags(write=False)
    return lo, hi, frac


def upsample(m: np.ndarray, height: int, width: int, align_corners: bool = False,
             dtype: type = np.float32) -> np.ndarray:
    """Bilinear resize of a (h, w) map to (height, width), computed in ``dtype``: separable
    lerps (no BLAS call), pixel centres by default (see ``lerp_indices``). The boxes use
    float32; the evaluation protocol float64, where it equals torch's ``interpolate``."""
    m = np.asarray(m, dtype=dtype)
    y0, y1, fy = lerp_indices(height, m.shape[0], align_corners, dtype)
    x0, x1, fx = lerp_indices(width, m.shape[1], align_corners, dtype)
    rows = m[y0] * (1 - fy)[:, None] + m[y1] * fy[:, None]
    return rows[:, x0] * (1 - fx)[None, :] + rows[:, x1] * fx[None, :]


BOX_SEGMENTS = ("largest", "peak")  # which thresholded segment a box is drawn around


def pseudo_box(m: np.ndarray, height: int, width: int, threshold: float = 0.5, segment: str = "largest") -> Box | None:
    """Paper §5.2: upsample to the frame, min-max normalise, threshold, keep the largest
    connected component, box around it. Returns a normalised box, or None for a flat map.
    ``segment="peak"`` keeps the component around the map's maximum instead: the box follows
    the object the map points at, not a larger stretch of background elsewhere."""
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), not {threshold}")
    if segment not in BOX_SEGMENTS:
        raise ValueError(f"segment must be one of {', '.join(BOX_SEGMENTS)}, not {segment!r}")
    small = normalise(m)
    if small is None:
        return None
    up = normalise(upsample(small, height, width))
    if up is None:
        return None
    labels, count = ndimage.label(up > threshold)
    if count == 0:
        return None
    if segment == "peak":
        keep = int(labels.flat[int(np.argmax(up))]) - 1  # the maximum is 1 > threshold: always labelled
    else:
        keep = int(np.argmax(ndimage.sum_labels(np.ones_like(up), labels, index=np.arange(1, count + 1))))
    ys, xs = ndimage.find_objects(labels)[keep]
    return (xs.start / width, ys.start / height, xs.stop / width, ys.stop / height)
