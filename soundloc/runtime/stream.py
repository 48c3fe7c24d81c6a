"""The streaming loop: step inputs in, localized steps out, through the exact step graph.

Per step: the frame is normalised, the step's 1,600 samples go through the incremental
log-mel, and one model call returns the map of the step ``lookahead`` steps back (the input
waits in a queue for it). Maps are averaged over a 3 s window -- trailing (what a live view
can show now) or centred (the paper's Eq. 4, 1.5 s more delay; for files) -- and the step is
*gated* when nothing audible comes from the scene: the window's audio level is below
``gate_db`` (silence), or the window's mean moment score S_av is below ``gate_score`` (sound
the model does not tie to anything visible). A gated step carries no map and no box.
"""

from __future__ import annotations

import math

import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from ..families import family_of
from ..localize import normalise, pseudo_box
from .engine import StepModel
from .results import StepResult
from .sources import StepInput

WINDOWS = ("trailing", "centered")
SILENCE_DB = -120.0  # level reported for digital silence


@dataclass(frozen=True)
class StreamOptions:
    """How steps become what users see.

    ``gate_db``: hide the map when the audio RMS level of the last ``gate_seconds`` up to the
    step is below this (dBFS; speech at a metre is about -25, a quiet room through a laptop
    mic -50 to -60, digital silence -120). The level is taken over a short span, not the 3 s
    map window, so the map disappears within half a second of the sound stopping.
    ``gate_score``: also hide it when the window's mean S_av is below this (model-specific;
    ``None`` uses the export's calibrated value when it has one, else no score gate).
    ``box_threshold``: pseudo-box binarisation level.
    """

    window: str = "trailing"
    window_seconds: float = 3.0
    gate_db: float | None = -40.0
    gate_seconds: float = 0.5
    gate_score: float | None = None
    box_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.window not in WINDOWS:
            raise ValueError(f"window must be one of {', '.join(WINDOWS)}, not {self.window!r}")
        if not 0 < self.window_seconds <= 60:
            raise ValueError(f"window_seconds must be in (0, 60], not {self.window_seconds}")
        if not 0 < self.gate_seconds <= self.window_seconds:
            raise ValueError(f"gate_seconds must be in (0, window_seconds], not {self.gate_seconds}")
        for name in ("gate_db", "gate_score"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number (or unset), not {value}")
        if not 0 <= self.box_threshold < 1:
            raise ValueError(f"box_threshold must be in [0, 1), not {self.box_threshold}")


@dataclass
class _Step:
    inp: StepInput
    alpha: np.ndarray
    score: float
    power: float  # mean square of the step's audio
    model_ms: float


class _Window:
    """Recent steps; emits each step with its window averages once its window is complete:
    the mean map and S_av over the window, and the mean audio power of the last ``gate_steps``."""

    def __init__(self, steps: int, mode: str, gate_steps: int = 5) -> None:
        self.future = steps // 2 if mode == "centered" else 0
        self.past = steps // 2 if mode == "centered" else steps - 1
        self.gate_steps = gate_steps
        self.buf: deque[_Step] = deque(maxlen=max(self.past, gate_steps - 1) + self.future + 1)
        self.count = 0
        self.emitted = 0

    def push(self, step: _Step) -> list[tuple[_Step, np.ndarray, float, float]]:
        self.buf.append(step)
        self.count += 1
        ready = []
        while self.emitted + self.future < self.count:
            ready.append(self._average(self.emitted))
        return ready

    def flush(self) -> list[tuple[_Step, np.ndarray, float, float]]:
        return [self._average(self.emitted) for _ in range(self.count - self.emitted)]

    def _average(self, k: int) -> tuple[_Step, np.ndarray, float, float]:
        first = self.count - len(self.buf)
        lo, hi = max(k - self.past, first), min(k + self.future + 1, self.count)
        steps = [self.buf[i - first] for i in range(lo, hi)]
        recent = [self.buf[i - first].power for i in range(max(k - self.gate_steps + 1, first), k + 1)]
        self.emitted += 1
        return (self.buf[k - first], np.mean([s.alpha for s in steps], axis=0),
                float(np.mean([s.score for s in steps])), float(np.mean(recent)))


def level_db(power: float) -> float:
    return SILENCE_DB if power <= 1e-12 else max(SILENCE_DB, 10.0 * float(np.log10(power)))


class Localizer:
    """Per-stream state around a shared ``StepModel``: feed ``StepInput``s, get ``StepResult``s."""

    def __init__(self, model: StepModel, options: StreamOptions = StreamOptions()) -> None:
        self.model, self.options = model, options
        cfg = model.config
        family = family_of(cfg)  # what the step takes, and whether maps are averaged over the window
        self.feeder = family.feeder(cfg, options.window)
        steps = max(1, int(round(options.window_seconds * cfg.fps))) if family.averages_maps else 1
        self.window = _Window(steps, options.window, max(1, int(round(options.gate_seconds * cfg.fps))))
        self.lookahead_s = (model.lookahead + self.feeder.lookahead + self.window.future) / cfg.fps
        gate = options.gate_score if options.gate_score is not None else model.bundle_gate_score
        self.gate_score = gate
        self.state = model.new_state(1)
        self.pending: deque[StepInput] = deque()
        self.latencies: deque[float] = deque(maxlen=100)
        self.gated = 0
        self.steps_out = 0

    def push(self, inp: StepInput) -> list[StepResult]:
        """One captured step in; the steps that became final out (none during the lookahead)."""
        ready = self.feeder.push(inp)
        self.pending.append(inp)
        return [r for frame, audio in ready for r in self._run(frame, audio, 1.0)]

    def flush(self) -> list[StepResult]:
        """End of stream: the feeder's waiting frames, the lookahead's padding frames, then the window."""
        out = [r for frame, audio in self.feeder.flush() for r in self._run(frame, audio, 1.0)]
        blank = self.feeder.blank()
        while self.pending:
            out += self._run(*blank, 0.0)
        return out + [self._result(*r) for r in self.window.flush()]

    def _run(self, frame: np.ndarray, mel: np.ndarray, valid: float) -> list[StepResult]:
        t0 = time.perf_counter()
        out, self.state = self.model.step(frame, mel, np.array([valid], np.float32), self.state)
        ms = (time.perf_counter() - t0) * 1000
        self.latencies.append(ms)
        if not out.valid[0]:
            return []
        inp = self.pending.popleft()
        power = float(np.mean(np.square(inp.audio))) if inp.has_audio else 0.0
        step = _Step(inp, out.alpha[0], float(out.score[0]), power, ms)
        return [self._result(*r) for r in self.window.push(step)]

    def _result(self, step: _Step, alpha: np.ndarray, score: float, power: float) -> StepResult:
        db = level_db(power)
        gated = (self.options.gate_db is not None and db < self.options.gate_db) or \
                (self.gate_score is not None and score < self.gate_score)
        heat = None if gated else normalise(alpha)
        box = None if heat is None else pseudo_box(alpha, 224, 224, self.options.box_threshold)
        self.gated += heat is None
        self.steps_out += 1
        lat = sorted(self.latencies)
        stats = {"level_db": round(db, 1), "model_ms": round(step.model_ms, 2),
                 "step_ms_p50": round(lat[len(lat) // 2], 2) if lat else 0.0}
        return StepResult(index=step.inp.index, pts=step.inp.pts, frame=step.inp.frame, audio=step.inp.audio,
                          heatmap=heat, score=score, box=box, gated=heat is None,
                          capture_time=step.inp.capture_time, output_time=time.monotonic(),
                          lookahead_s=self.lookahead_s, stats=stats)


def localize_stream(source: Iterable[StepInput], model: StepModel,
                    options: StreamOptions = StreamOptions()) -> Iterator[StepResult]:
    """Generator of localized steps for one stream, the end flushed (every input step comes out)."""
    loc = Localizer(model, options)
    for inp in source:
        yield from loc.push(inp)
    yield from loc.flush()
