"""The streaming loop: step inputs in, localized steps out, through the exact step graph.

Per step: the frame is normalised, the step's 1,600 samples go through the incremental
log-mel, and one model call returns the map of the step ``lookahead`` steps back (the input
waits in a queue for it). Maps are averaged over a 3 s window -- trailing (what a live view
can show now) or centred (the paper's Eq. 4, 1.5 s more delay; for files) -- and the step is
*gated* when nothing audible comes from the scene: the window's audio level is below
``gate_db`` (silence), or the window's mean moment score S_av is below ``gate_score`` (sound
the model does not tie to anything visible). A gated step carries no map and no box. An
audible step also carries its window's class posteriors (``soundloc.labels``) and, with a
calibrated export, the confidence that the source is in view (``soundloc.visibility``): its box
and label are drawn only when it is.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import WINDOW_MODES, seconds_to_steps
from ..families import family_of
from ..labels import check_classes
from ..localize import Labelling, Localized, StepLocalizer
from .engine import StepModel
from .results import StepResult
from .sources import StepInput


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
    ``classes``: localize only these classes (names of the model's classes; empty: all): a
    window whose top class is another one is still reported (its classes in the event), with
    no box.
    """

    window: str = "trailing"
    window_seconds: float = 3.0
    gate_db: float | None = -40.0
    gate_seconds: float = 0.5
    gate_score: float | None = None
    box_threshold: float = 0.5
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.window not in WINDOW_MODES:
            raise ValueError(f"window must be one of {', '.join(WINDOW_MODES)}, not {self.window!r}")
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
class Finished:
    """One step the model has finished: what was pushed with it, its map and S_av."""

    item: Any
    alpha: np.ndarray
    score: float
    model_ms: float
    logits: np.ndarray | None = None  # the label heads' per-step logits, concatenated (``Labelling.heads`` order)


class StepDriver:
    """One stream's state in a (shared) ``StepModel`` and its lookahead: push each step's
    inputs with an item; the item comes back with the step's outputs once the model has
    finished it (``lookahead`` calls later); ``flush`` pushes blank padding through to finish
    the last ones."""

    def __init__(self, model: StepModel) -> None:
        self.model = model
        self.state = model.new_state(1)
        self.pending: deque[Any] = deque()
        self.latencies: deque[float] = deque(maxlen=100)

    def push(self, frame: np.ndarray, audio: np.ndarray, item: Any) -> list[Finished]:
        """frame (1, 3, H, W) normalised, audio the family's step input (e.g. log-mel (1, 10, 80))."""
        self.pending.append(item)
        return self._run(frame, audio, 1.0)

    def flush(self, blank: tuple[np.ndarray, np.ndarray] | None = None) -> list[Finished]:
        """Blank inputs (default: the model family's) through the lookahead, finishing every item."""
        frame, audio = blank if blank is not None else family_of(self.model.config).feeder(self.model.config).blank()
        out = []
        while self.pending:
            out += self._run(frame, audio, 0.0)
        return out

    def _run(self, frame: np.ndarray, mel: np.ndarray, valid: float) -> list[Finished]:
        t0 = time.perf_counter()
        out, self.state = self.model.step(frame, mel, np.array([valid], np.float32), self.state)
        ms = (time.perf_counter() - t0) * 1000
        self.latencies.append(ms)
        if not out.valid[0]:
            return []
        heads = self.model.label_heads
        logits = np.concatenate([out.logits[h][0] for h in heads]) if heads and all(h in out.logits for h in heads) else None
        return [Finished(self.pending.popleft(), out.alpha[0], float(out.score[0]), ms, logits)]


class Localizer:
    """Per-stream state around a shared ``StepModel``: feed ``StepInput``s, get ``StepResult``s.

    ``push`` is three stages, each a method (the benchmark times them one by one): ``prepare``
    (the model family's feeder: frame normalisation and the incremental log-mel, or EZ-VSL's 3 s
    spectrogram), ``model_step`` (the step graph, through the lookahead) and ``localize``
    (window, gate, box: ``soundloc.localize.StepLocalizer``).
    """

    def __init__(self, model: StepModel, options: StreamOptions = StreamOptions()) -> None:
        self.model, self.options = model, options
        cfg = model.config
        family = family_of(cfg)  # what the step takes, and whether maps are averaged over the window
        self.feeder = family.feeder(cfg, options.window)
        gate = options.gate_score if options.gate_score is not None else model.bundle_gate_score
        self.gate_score = gate
        steps = max(1, seconds_to_steps(options.window_seconds)) if family.averages_maps else 1
        labelling = Labelling(model.label_heads, cfg.class_names, check_classes(options.classes, cfg.class_names))
        self.core = StepLocalizer(steps, options.window, max(1, seconds_to_steps(options.gate_seconds)),
                                  options.gate_db, gate, options.box_threshold, model.visibility, labelling)
        self.lookahead_s = (model.lookahead + self.feeder.lookahead + self.core.future) / cfg.fps
        self.driver = StepDriver(model)
        self.waiting: deque[StepInput] = deque()  # pushed, its model inputs not ready (EZ-VSL's centred audio)
        self.gated = 0
        self.steps_out = 0

    def push(self, inp: StepInput) -> list[StepResult]:
        """One captured step in; the steps that became final out (none during the lookahead)."""
        return self.localize(self.model_step(self.prepare(inp)))

    def prepare(self, inp: StepInput) -> list[tuple[StepInput, np.ndarray, np.ndarray]]:
        """The model inputs that became ready, oldest first, each (input, normalised frame
        (1, 3, H, W), the family's step audio): one per step, later by the feeder's lookahead."""
        self.waiting.append(inp)
        return [(self.waiting.popleft(), frame, audio) for frame, audio in self.feeder.push(inp)]

    def model_step(self, ready: list[tuple[StepInput, np.ndarray, np.ndarray]]) -> list[Finished]:
        return [f for inp, frame, audio in ready for f in self.driver.push(frame, audio, inp)]

    def localize(self, finished: list[Finished]) -> list[StepResult]:
        """Finished model steps through the window, the gate and the box."""
        out = []
        for f in finished:
            power = float(np.mean(np.square(f.item.audio))) if f.item.has_audio else 0.0
            out += [self._result(loc) for loc in self.core.push(f, f.alpha, f.score, power, f.logits)]
        return out

    def flush(self) -> list[StepResult]:
        """End of stream: the feeder's waiting frames, the lookahead's padding frames, then the window."""
        ready = [(self.waiting.popleft(), frame, audio) for frame, audio in self.feeder.flush()]
        out = self.localize(self.model_step(ready))
        return out + self.localize(self.driver.flush(self.feeder.blank())) + [self._result(loc) for loc in self.core.flush()]

    def _result(self, loc: Localized) -> StepResult:
        step: Finished = loc.item
        inp: StepInput = step.item
        self.gated += loc.gated
        self.steps_out += 1
        lat = sorted(self.driver.latencies)
        stats = {"level_db": round(loc.level_db, 1), "model_ms": round(step.model_ms, 2),
                 "step_ms_p50": round(lat[len(lat) // 2], 2) if lat else 0.0}
        return StepResult(index=inp.index, pts=inp.pts, frame=inp.frame, audio=inp.audio,
                          heatmap=loc.heatmap, score=loc.score, box=loc.box, gated=loc.gated,
                          capture_time=inp.capture_time, output_time=time.monotonic(),
                          lookahead_s=self.lookahead_s, stats=stats, classes=loc.classes,
                          confidence=loc.confidence, visible=loc.visible, label=loc.label)


def localize_stream(source: Iterable[StepInput], model: StepModel,
                    options: StreamOptions = StreamOptions()) -> Iterator[StepResult]:
    """Generator of localized steps for one stream, the end flushed (every input step comes out)."""
    loc = Localizer(model, options)
    for inp in source:
        yield from loc.push(inp)
    yield from loc.flush()
