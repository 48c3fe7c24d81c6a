"""The stages of the live pipeline, each timed apart: decode of a real H.264 + AAC clip, then
preprocess + mel, model step, localization + box and render; and the model step alone."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import IMAGE_SIZE
from ..families import family_of
from ..encode import write_mp4
from .stats import Clock, Laps, Plan, Timing, run_timed

STAGES = ("decode", "preprocess+mel", "model step", "localization+box", "render")
FLOOR_FRAMES = 100  # a 10 s clip: long enough that the offline graph's edges cost nothing


# -- inputs: a real H.264 + AAC clip ---------------------------------------------------------------


@dataclass(frozen=True)
class ClipSpec:
    """The generated benchmark clip: by default a webcam-like 640x480 at 30 fps, 48 kHz AAC
    (constant quality). ``bitrate`` (bit/s) encodes it the way an IP camera sends it instead:
    that average rate, no B-frames, a keyframe every 2 s, with sensor-like noise on the pattern
    so the encoder has detail to spend the bits on (``CAMERA_CLIPS``: 720p and 1080p at 5 Mbit/s)."""

    width: int = 640
    height: int = 480
    fps: int = 30
    seconds: float = 10.0
    sample_rate: int = 48_000
    bitrate: int | None = None

    @property
    def name(self) -> str:
        rate = f"-{self.bitrate / 1e6:g}M" if self.bitrate else ""
        return f"{self.width}x{self.height}p{self.fps}{rate}"


CAMERA_BITRATE = 5_000_000  # an IP camera's main stream: 4-6 Mbit/s H.264, no B-frames
CLIP_PRESETS = {"480p": ClipSpec(), "480p-camera": ClipSpec(bitrate=2_000_000),
                "720p": ClipSpec(1280, 720, bitrate=CAMERA_BITRATE),
                "1080p": ClipSpec(1920, 1080, bitrate=CAMERA_BITRATE)}


def make_clip(path: Path, spec: ClipSpec = ClipSpec()) -> Path:
    """Write a moving-pattern H.264 + AAC clip (once: reused when it exists)."""
    if path.is_file():
        return path
    if spec.bitrate is None:
        write_mp4(path, *_pattern(spec), spec.sample_rate, crf=23)
    else:
        _write_camera_clip(path, spec)
    return path


def _pattern(spec: ClipSpec) -> tuple[np.ndarray, int, np.ndarray]:
    """Frames (T, H, W, 3) of a drifting colour pattern, the rate, a beating 440 Hz tone."""
    frames = np.stack([_pattern_frame(spec, i) for i in range(int(spec.seconds * spec.fps))])
    return frames, spec.fps, _tone(spec)


def _pattern_frame(spec: ClipSpec, i: int) -> np.ndarray:
    y, x = np.ogrid[0:spec.height, 0:spec.width]
    return np.stack(np.broadcast_arrays((x + 4 * i) % 256, (y + 2 * i) % 256, (x + y + i) % 256), -1).astype(np.uint8)


def _tone(spec: ClipSpec) -> np.ndarray:
    t = np.arange(int(spec.seconds * spec.sample_rate)) / spec.sample_rate
    return (0.2 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 0.5 * t)) / 2).astype(np.float32)


def _write_camera_clip(path: Path, spec: ClipSpec) -> None:
    """Frame by frame (a 1080p clip does not fit in memory whole), atomically."""
    from fractions import Fraction

    import av

    from ..fileio import Staged
    from ..encode import add_aac, add_h264, encode_pcm, encode_rgb, flush_encoders

    rng = np.random.default_rng(0)
    noise = rng.integers(-12, 13, (8, spec.height, spec.width, 1), dtype=np.int16)  # reused: cheap to make
    rate = spec.bitrate
    params = f"bframes=0:keyint={2 * spec.fps}:min-keyint={2 * spec.fps}:scenecut=0:vbv-maxrate={rate // 1000}:" \
             f"vbv-bufsize={rate // 1000}:threads=2"
    with Staged(path, prefix=".tmp-", suffix=".mp4") as staged, av.open(str(staged.temp), "w", format="mp4") as out:
        video = add_h264(out, spec.fps, spec.width, spec.height, {"preset": "veryfast", "x264-params": params})
        video.codec_context.bit_rate = rate
        sound = add_aac(out, spec.sample_rate)
        for i in range(int(spec.seconds * spec.fps)):
            image = np.clip(_pattern_frame(spec, i).astype(np.int16) + noise[i % len(noise)], 0, 255).astype(np.uint8)
            encode_rgb(out, video, image, i, Fraction(1, spec.fps))
        flush_encoders(out, video)
        audio, chunk = _tone(spec), spec.sample_rate // 10
        for i in range(0, len(audio), chunk):
            encode_pcm(out, sound, audio[i: i + chunk], i, spec.sample_rate)
        flush_encoders(out, sound)


class _LoopedSource:
    """Steps of a file through ``StepSource`` (the runtime's decode stage), reopened at its end."""

    def __init__(self, clip: Path, size: int = IMAGE_SIZE) -> None:
        self.clip, self.size = clip, size
        self._open()

    def _open(self) -> None:
        from ..runtime.sources import StepSource

        self.source = StepSource(str(self.clip), realtime=False, live=False, size=self.size)
        self.decoder = self.source.decoder
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
                size: int = IMAGE_SIZE, info: dict | None = None) -> tuple[Timing, list]:
    """Decode stage: the wait for each next step while the consumer is idle, i.e. the capture
    thread's cost per step (file re-opens every clip length included). Also returns the first
    100 decoded steps, the inputs of the other stages; ``info["decoder"]`` gets the line
    saying which video decoder ran."""
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
    if info is not None:
        info["decoder"] = src.decoder
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
