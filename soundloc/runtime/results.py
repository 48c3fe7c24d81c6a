"""What one streaming step produces: the record every sink (mp4, JSON lines, preview,
terminal) consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class StepResult:
    """Localization for one model step (one video frame at 10 fps).

    ``heatmap`` is the window-averaged map min-max normalised to [0, 1] at the model's map
    resolution (7x7 at 112x112 input, 14x14 for a ``fine_map`` model); it is None when the step is gated (nothing audible
    from the scene), and so is ``box``. Boxes are normalised ``(xmin, ymin, xmax, ymax)``.
    Times: ``pts`` is the step's media time in seconds from the stream start; the
    ``*_time`` fields are ``time.monotonic()`` readings.
    """

    index: int
    pts: float
    frame: np.ndarray  # (H, W, 3) uint8 RGB, original resolution
    audio: np.ndarray  # (1600,) float32, 16 kHz mono: this step's samples
    heatmap: np.ndarray | None
    score: float  # moment score S_av of this step
    box: tuple[float, float, float, float] | None
    gated: bool
    capture_time: float
    output_time: float
    lookahead_s: float
    stats: dict[str, float] = field(default_factory=dict)  # fps, step latency, drops, ...
    classes: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # head -> top (name, p)
    confidence: float | None = None  # that the source is in view (None: the export has no calibration)
    visible: bool = True  # the source is judged in view (always, without a calibration, unless gated)
    label: str | None = None  # the class drawn beside the box ("name 93%"), when a box is drawn

    def event(self) -> dict:
        """The JSON-serialisable part (everything but pixels and samples)."""
        return {
            "index": self.index,
            "pts": round(self.pts, 4),
            "score": float(self.score),
            "gated": self.gated,
            "box": None if self.box is None else [round(float(v), 4) for v in self.box],
            "classes": {head: [[name, round(p, 4)] for name, p in top] for head, top in self.classes.items()},
            "confidence": None if self.confidence is None else round(float(self.confidence), 4),
            "visible": self.visible,
            "label": self.label,
            "peak": None if self.heatmap is None else _peak(self.heatmap),
            "latency_ms": round((self.output_time - self.capture_time) * 1000, 2),
            "lookahead_s": self.lookahead_s,
            **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.stats.items()},
        }


def _peak(heatmap: np.ndarray) -> list[float]:
    """Normalised (x, y) centre of the map's maximum cell."""
    h, w = heatmap.shape
    y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return [round((x + 0.5) / w, 4), round((y + 0.5) / h, 4)]
