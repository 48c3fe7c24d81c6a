"""Model families: the one place that says which kind of model a checkpoint or export is
(``config.family``) and what its step needs.

A family says, in numpy, how a stream's captured steps (and, offline, a media file) become its
step graph's inputs, and what its blank step is; its PyTorch parts are in
``soundloc.model.families`` (the model, the step module) and ``soundloc.export.families`` (its
graphs and their verification), so this module never imports torch:

- ``classifier``, the paper's model: the frame at 112 px with the video models' normalisation
  and the step's 10 log-mel frames; time context lives in the step graph's state, and the
  runtime averages the per-step maps over its 3 s window.
- ``ezvsl``, EZ-VSL (Mo & Morgado 2022), imported from its authors' checkpoints: the frame at
  224 px with ImageNet normalisation and the log spectrogram of 3 s of audio, trailing (ending
  with the step) or centred on the frame (1.4 s later); the step graph has no state, and the
  map is the frame's own (the 3 s window is the audio net's input, not an average of maps).

A new family is one entry here, one in each of those two tables, and its model module.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from .preprocess import file_inputs
from .config import MELS_PER_STEP, NORM_EPS, SAMPLE_RATE, SAMPLES_PER_STEP, VIDEO_MEAN, VIDEO_STD, Config, ConfigError

# EZ-VSL's facts (its authors' test code): ImageNet normalisation at 224 px, a 3 s audio window,
# the object prior's blend weight.
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's image-model normalisation (EZ-VSL's input)
IMAGENET_STD = (0.229, 0.224, 0.225)
EZVSL_IMAGE_SIZE = 224
EZVSL_AUDIO_SECONDS = 3.0  # the audio net's window, at SAMPLE_RATE (VGGSound's wavs are 16 kHz mono)
EZVSL_PRIOR_ALPHA = 0.4  # weight of the audio-visual map against the object prior (EZ-VSL's test.py)


class Feeder(Protocol):
    """Per stream: captured steps in, the step graph's (frame, audio) inputs out, batch of 1.

    ``lookahead``: steps an input waits in the feeder before the step graph sees it."""

    lookahead: int

    def push(self, inp: Any) -> list[tuple[np.ndarray, np.ndarray]]: ...

    def flush(self) -> list[tuple[np.ndarray, np.ndarray]]: ...

    def blank(self) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class Family:
    """What one model family is made of; see the module docstring."""

    name: str
    title: str
    audio_input: str  # the step graph's audio input name
    averages_maps: bool  # the runtime averages per-step maps over its window (else one step's map is final)
    clip_graphs: bool  # the offline video/audio graphs take a whole clip (a time axis TensorRT must fix)
    quantizable: bool  # `soundloc export --precision int8` knows its graphs
    mean: tuple[float, float, float]  # frame normalisation
    std: tuple[float, float, float]
    # a media file -> the offline inputs at every step: (frames, audio) arrays with a batch axis of 1
    file_inputs: Callable[..., tuple[np.ndarray, np.ndarray]]
    lookahead: Callable[[Config], int]  # steps the step graph waits before a step is final

    def lookahead_steps(self, config: Config) -> int:
        """Steps a streaming model of this family waits before a step's map is final."""
        return self.lookahead(config)

    def audio_shape(self, config: Config) -> tuple[int, ...]:
        """One stream's step audio input, without the batch axis."""
        if self.audio_input == "mel":
            return (1, MELS_PER_STEP, config.n_mels)
        from .mel import spectrogram_shape

        return (1, *spectrogram_shape(EZVSL_AUDIO_SECONDS, config.sample_rate))

    def frame_shape(self, config: Config) -> tuple[int, ...]:
        return (3, 1, config.image_size, config.image_size)

    def blank_step(self, config: Config) -> tuple[np.ndarray, np.ndarray]:
        """One stream's padding step, batch of 1: a zero frame (1, 3, S, S) and zero audio of this
        family's input shape (sent with valid 0: it describes nothing, e.g. to end a sequence)."""
        s = config.image_size
        return np.zeros((1, 3, s, s), np.float32), np.zeros((1, *self.audio_shape(config)[1:]), np.float32)

    def feeder(self, config: Config, window: str = "trailing") -> Feeder:
        """A new stream's feeder (``window``: where EZ-VSL's audio window sits)."""
        if self.audio_input == "mel":
            return MelFeeder(config, self)
        return WindowFeeder(config, self, window)

    def normalise(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB -> (3, T, H, W) float32 with this family's mean/std."""
        from .preprocess import normalise_frames

        return normalise_frames(frames, self.mean, self.std)


def family_of(config: Config | dict) -> Family:
    """The family of a config (or a config dict from a checkpoint or manifest)."""
    name = config.get("family", "classifier") if isinstance(config, dict) else config.family
    if name not in FAMILIES:
        raise ConfigError(f"unknown model family {name!r} (this soundloc knows {', '.join(FAMILIES)})")
    return FAMILIES[name]


class MelFeeder:
    """The classifier's step inputs: the normalised frame and the step's 10 log-mel frames."""

    lookahead = 0

    def __init__(self, config: Config, family: Family) -> None:
        from .mel import StreamingLogMel

        self.config, self.family, self.mel = config, family, StreamingLogMel()

    def push(self, inp: Any) -> list[tuple[np.ndarray, np.ndarray]]:
        self.mel.push(inp.audio)
        mel = self.mel.pop_step()
        if mel is None:
            raise ValueError(f"step {inp.index}: {len(inp.audio)} audio samples, expected {SAMPLES_PER_STEP}")
        return [(self.family.normalise(inp.small[None])[:, 0][None], mel[None])]

    def flush(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return []

    def blank(self) -> tuple[np.ndarray, np.ndarray]:
        return self.family.blank_step(self.config)


class WindowFeeder:
    """EZ-VSL's step inputs: the normalised frame and the log spectrogram of the 3 s of audio
    ending with the step (``trailing``) or centred on the frame's time (``centered``: the frame
    waits until that audio has arrived). Audio before the stream or after its end is zeros."""

    def __init__(self, config: Config, family: Family, window: str) -> None:
        self.config, self.family = config, family
        self.length = int(round(EZVSL_AUDIO_SECONDS * SAMPLE_RATE))
        # first sample of step t's window, relative to 1600 * t (the frame's time)
        self.offset = SAMPLES_PER_STEP - self.length if window == "trailing" else -(self.length // 2)
        self.lookahead = max(0, -(-(self.offset + self.length - SAMPLES_PER_STEP) // SAMPLES_PER_STEP))
        self.frames: deque[tuple[int, np.ndarray]] = deque()
        self.audio = np.zeros(0, np.float32)
        self.start = 0  # stream sample index of self.audio[0]
        self.received = 0  # samples received so far

    def push(self, inp: Any) -> list[tuple[np.ndarray, np.ndarray]]:
        samples = np.asarray(inp.audio, np.float32).reshape(-1)
        if len(samples) != SAMPLES_PER_STEP:
            raise ValueError(f"step {inp.index}: {len(samples)} audio samples, expected {SAMPLES_PER_STEP}")
        self.audio = np.concatenate([self.audio, samples])
        self.received += len(samples)
        self.frames.append((self.received // SAMPLES_PER_STEP - 1, inp.small))
        ready = []
        while self.frames and self.first_sample(self.frames[0][0]) + self.length <= self.received:
            ready.append(self._pair(*self.frames.popleft()))
        keep = self.first_sample(self.frames[0][0]) if self.frames else self.received - self.length
        cut = max(0, min(keep, self.received) - self.start)
        self.audio, self.start = self.audio[cut:], self.start + cut
        return ready

    def flush(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The frames still waiting for audio, with zeros where the stream ended."""
        ready = [self._pair(*f) for f in self.frames]
        self.frames.clear()
        return ready

    def blank(self) -> tuple[np.ndarray, np.ndarray]:
        return self.family.blank_step(self.config)

    def first_sample(self, step: int) -> int:
        """Stream sample index where step ``step``'s audio window starts."""
        return step * SAMPLES_PER_STEP + self.offset

    def _pair(self, step: int, small: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from .mel import audio_window, log_spectrogram

        audio = audio_window(self.audio, self.first_sample(step) - self.start, self.length)
        return self.family.normalise(small[None])[:, 0][None], log_spectrogram(audio)[None]


def ezvsl_file_inputs(path: str | Path, config: Config, seconds: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A media file -> EZ-VSL's offline inputs for every step: frames (1, 3, T, 224, 224) and
    the spectrogram of the 3 s centred on each frame (1, T, 257, 200): what its authors' test
    code computes for one frame, at every frame."""
    from .mel import audio_window, log_spectrogram
    from .media import load_clip

    family = family_of(config)
    clip = load_clip(path, seconds=seconds, size=config.image_size)
    feeder = WindowFeeder(config, family, "centered")
    audio = np.asarray(clip.audio, np.float32)
    specs = [log_spectrogram(audio_window(audio, feeder.first_sample(t), feeder.length)) for t in range(len(clip.frames))]
    return family.normalise(clip.frames)[None], np.stack(specs)[None]


def classifier_lookahead(config: Config) -> int:
    """One step per 3-tap temporal convolution that pads the future (the stem and two per
    layer-1 block: 5 for MC3-18); none when causal."""
    return 0 if config.causal else 1 + 2 * config.layers[0]


def no_lookahead(config: Config) -> int:
    """A per-frame model: nothing waits inside the step graph."""
    return 0


def blend_prior(maps: np.ndarray, prior: np.ndarray | None, alpha: float | None) -> np.ndarray:
    """EZ-VSL's object-prior blend in numpy (``model.ezvsl.EZVSL.maps`` is the torch twin):
    maps and prior (..., h, w) each min-max normalised, then ``alpha * map + (1 - alpha) * prior``."""
    if prior is None or alpha is None:
        return maps

    def minmax(m: np.ndarray) -> np.ndarray:
        lo, hi = m.min(axis=(-2, -1), keepdims=True), m.max(axis=(-2, -1), keepdims=True)
        return (m - lo) / np.maximum(hi - lo, NORM_EPS)

    return alpha * minmax(maps) + (1 - alpha) * minmax(prior)


FAMILIES: dict[str, Family] = {
    "classifier": Family(
        "classifier", "the paper's audio-visual classifier (MC3-18 + audio CNN, exact streaming step)",
        audio_input="mel", averages_maps=True, clip_graphs=True, quantizable=True, mean=VIDEO_MEAN, std=VIDEO_STD,
        file_inputs=file_inputs, lookahead=classifier_lookahead),
    "ezvsl": Family(
        "ezvsl", "EZ-VSL (ResNet-18 image and audio nets, cosine map; optional object prior)",
        audio_input="spec", averages_maps=False, clip_graphs=False, quantizable=False, mean=IMAGENET_MEAN,
        std=IMAGENET_STD, file_inputs=ezvsl_file_inputs, lookahead=no_lookahead),
}
