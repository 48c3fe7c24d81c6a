"""The stages of the live pipeline, each timed apart: decode of a real H.264 + AAC clip, then
preprocess + mel, model step, localization + box and render; and the model step alone."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import IMAGE_SIZE
from ..families import family_of
from ..media import write_mp4
from .stats import Clock, Laps, Plan, Timing, run_timed

STAGES = ("decode", "preprocess+mel", "model step", "localization+box", "render")
FLOOR_FRAMES = 100  # a 10 s clip: long enough that the offline graph's edges cost nothing


# -- inputs: a real H.264 + AAC clip ---------------------------------------------------------------


@dataclass(frozen=True)
class ClipSpec:
    """The generated benchmark clip: a webcam-like 640x480 at 30 fps, 48 kHz AAC."""

    width: int = 640
    height: int = 480
    fps: int = 30
    seconds: float = 10.0
    sample_rate: int = 48_000


def make_clip(path: Path, spec: ClipSpec = ClipSpec()) -> Path:
    """Write a moving-pattern H.264 + AAC clip (once: reused when it exists)."""
    if not path.is_file():
        write_mp4(path, *_pattern(spec), spec.sample_rate, crf=23)
    return path


def _pattern(spec: ClipSpec) -> tuple[np.ndarray, int, np.ndarray]:
    """Frames (T, H, W, 3) of a drifting colour pattern, the rate, a beating 440 Hz tone."""
    y, x = np.mgrid[0:spec.height, 0:spec.width]
    frames = np.stack([np.stack([(x + 4 * i) % 256, (y + 2 * i) % 256, (x + y + i) % 256], -1).astype(np.uint8)
                       for i in range(int(spec.seconds * spec.fps))])
    t = np.arange(int(spec.seconds * spec.sample_rate)) / spec.sample_rate
    audio = (0.2 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 0.5 * t)) / 2).astype(np.float32)
    return frames, spec.fps, audio


class _LoopedSource:
    """Steps of a file through ``StepSource`` (the runtime's decode stage), reopened at its end."""

    def __init__(self, clip: Path, size: int = IMAGE_SIZE) -> None:
        self.clip, self.size = clip, size
        self._open()

    def _open(self) -> None:
        from ..runtime.sources import StepSource

        self.source = StepSource(str(self.clip), realtime=False, live=False, size=self.size)
        self.it = iter(self.source)

    def next(self):
        try:
            return next(self.it)
        except StopIteration:
            self.close()
            self._open()
            return next(self.it)

    def close(self) -> None:
        self.source.close()


def time_decode(clip: Path, plan: Plan, clock: Clock = time.perf_counter,
                size: int = IMAGE_SIZE) -> tuple[Timing, list]:
    """Decode stage: the wait for each next step while the consumer is idle, i.e. the capture
    thread's cost per step (file re-opens every clip length included). Also returns the first
    100 decoded steps, the inputs of the other stages."""
    src = _LoopedSource(clip, size)  # frames at the model's size (the family's)
    kept: list = []

    def body(laps: Laps) -> None:
        inp = src.next()
        laps("decode")
        if len(kept) < FLOOR_FRAMES:
            kept.append(inp)

    try:
        timing = run_timed(body, plan, clock)
    finally:
        src.close()
    return timing, kept


# -- the stages after decode, and the model step alone ------------------------------------------


def time_pipeline(model, inputs: list, plan: Plan, clock: Clock = time.perf_counter) -> Timing:
    """Preprocess + mel, model step, localization + box and render of one stream, step after
    step on decoded inputs (cycled), each stage lapped. The stages are the runtime's own:
    ``Localizer.push`` split into its ``prepare``, ``model_step`` and ``localize`` (window,
    gate and box, with ``soundloc stream``'s default options), then ``render_step`` as a sink
    draws each result."""
    from ..runtime.render import render_step
    from ..runtime.stream import Localizer, StreamOptions

    loc = Localizer(model, StreamOptions())
    k = [0]

    def body(laps: Laps) -> None:
        inp = inputs[k[0] % len(inputs)]
        k[0] += 1
        prepared = loc.prepare(inp)
        laps("preprocess+mel")
        finished = loc.model_step(prepared)
        laps("model step")
        results = loc.localize(finished)
        laps("localization+box")
        for r in results:
            render_step(r)
        laps("render")

    return run_timed(body, plan, clock)


def time_step(model, batch: int, plan: Plan, clock: Clock = time.perf_counter) -> Timing:
    """The model step alone for ``batch`` streams stacked on the batch axis (random inputs:
    the graph's cost does not depend on values)."""
    size = model.config.image_size
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
    mels = rng.standard_normal((batch, *family_of(model.config).audio_shape(model.config)), dtype=np.float32)
    valid = np.ones(batch, np.float32)
    state = [model.new_state(batch)]

    def body(laps: Laps) -> None:
        _, state[0] = model.step(frames, mels, valid, state[0])

    return run_timed(body, plan, clock)
