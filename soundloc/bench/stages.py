"""The stages of the live pipeline, each timed apart: decode of a real H.264 + AAC clip, then
preprocess + mel, model step, localization + box and render; and the model step alone."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import IMAGE_SIZE
from ..families import family_of
from ..fileio import Staged
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
    if path.is_file():
        return path
    staged = Staged(path, suffix=".mp4")
    try:
        _encode_pattern(staged.temp, spec)
        staged.commit()
    except BaseException:
        staged.discard()
        raise
    return path


def _encode_pattern(path: Path, spec: ClipSpec) -> None:
    import av

    n = int(spec.seconds * spec.fps)
    y, x = np.mgrid[0:spec.height, 0:spec.width]
    with av.open(str(path), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=spec.fps, options={"crf": "23", "preset": "veryfast"})
        vs.width, vs.height, vs.pix_fmt = spec.width, spec.height, "yuv420p"
        aus = out.add_stream("aac", rate=spec.sample_rate, layout="mono")
        for i in range(n):
            img = np.stack([(x + 4 * i) % 256, (y + 2 * i) % 256, (x + y + i) % 256], -1).astype(np.uint8)
            out.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(vs.encode())
        t = np.arange(int(spec.seconds * spec.sample_rate)) / spec.sample_rate
        audio = (0.2 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 0.5 * t)) / 2).astype(np.float32)
        for i in range(0, len(audio), 1024):
            af = av.AudioFrame.from_ndarray(audio[None, i:i + 1024], format="flt", layout="mono")
            af.sample_rate, af.pts = spec.sample_rate, i
            out.mux(aus.encode(af))
        out.mux(aus.encode())


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
    step on decoded inputs (cycled), each stage lapped: what ``Localizer`` + a sink do."""
    from ..localize import TrailingWindow, normalise, pseudo_box
    from ..runtime.render import overlay

    family = family_of(model.config)  # its step's inputs (log-mel or a 3 s spectrogram), its window
    feeder = family.feeder(model.config)
    window = TrailingWindow(model.config.window_steps if family.averages_maps else 1)
    state = [model.new_state(1)]
    valid = np.ones(1, np.float32)
    k = [0]

    def body(laps: Laps) -> None:
        inp = inputs[k[0] % len(inputs)]
        k[0] += 1
        frame, step_audio = feeder.push(inp)[0]
        laps("preprocess+mel")
        out, state[0] = model.step(frame, step_audio, valid, state[0])
        laps("model step")
        avg = window.push(out.alpha[0])
        heat = normalise(avg)
        box = None if heat is None else pseudo_box(avg, 224, 224, 0.5)
        laps("localization+box")
        overlay(inp.frame, heat, box)
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
