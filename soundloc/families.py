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
- ``fnac`` (FNAC-AVL) and ``slavc`` (SLAVC, two heads averaged): EZ-VSL's inputs and step; they
  differ in their networks (``model.ezvsl``) and in how their authors' test code upsamples and
  scales the map it scores (``variants``, used with ``config.preprocess == "authors"``).
- ``lvs`` (LVS, Chen et al. 2021) and ``sslalign`` (Senocak et al. 2023, LVS's network): ResNet-18s
  whose layer4 keeps stride 1, a 14x14 cosine map without projection heads (``model.lvs``); the
  same per-frame step with their own audio windows (``audio_seconds``, ``spec_noverlap``: LVS
  10 s, SSL-Align 3 s at noverlap 353) and test loaders (``loader``, ``soundloc.authors``).

A new family is one entry here, one in each of those two tables, and its model module.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from .authors import Loader, MapRule, upsample
from .preprocess import file_inputs
from .mel import SPEC_NOVERLAP
from .config import MELS_PER_STEP, NORM_EPS, SAMPLE_RATE, SAMPLES_PER_STEP, VIDEO_MEAN, VIDEO_STD, Config, ConfigError

# EZ-VSL's facts (its authors' test code): ImageNet normalisation at 224 px, a 3 s audio window,
# the object prior's blend weight.
PriorRanges = tuple[tuple[float, float], tuple[float, float]]
# SLAVC's test.py scales its logits by [-1/tau, 1/tau] (the cosine's [-1, 1]) and the prior by [0, 2.5]
SLAVC_RANGES: PriorRanges = ((-1.0, 1.0), (0.0, 2.5))
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's image-model normalisation (EZ-VSL's input)
IMAGENET_STD = (0.229, 0.224, 0.225)
EZVSL_IMAGE_SIZE = 224
EZVSL_AUDIO_SECONDS = 3.0  # the audio net's window, at SAMPLE_RATE (VGGSound's wavs are 16 kHz mono)
EZVSL_PRIOR_ALPHA = 0.4  # weight of the audio-visual map against the object prior (EZ-VSL's test.py)
LVS_AUDIO_SECONDS = 10.0  # LVS's loader: the clip's first 10 s (257x671 at noverlap 274)
SSLALIGN_SPAN = (3.5, 6.5)  # SSL-Align's loader: these seconds of the first 10 s
SSLALIGN_NOVERLAP = 353  # ... as a spectrogram with noverlap 353 (hop 159): 257x299
EZVSL_TAU = 0.03  # the contrastive loss's temperature (EZ-VSL's train.py default)
# `soundloc train --family ezvsl --preset NAME`: the ResNet-18s' width (Config.width). paper: the
# published networks (what `soundloc import ezvsl` loads); small: an eighth of the channels (as the classifier's small),
# trainable on a CPU; tiny: for tests.
EZVSL_PRESETS = {"paper": 1.0, "small": 0.125, "tiny": 0.0625}


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
    # map variants its authors report (config.variant; the first is the default) -> how their test
    # code upsamples and normalises the map it scores (`--preprocess authors`); none for soundloc's own
    variants: dict[str, MapRule] = field(default_factory=dict)
    # the object-prior blend: None = each map min-max normalised (EZ-VSL); else fixed (cosine, prior) ranges
    prior_ranges: PriorRanges | None = None
    audio_seconds: float = EZVSL_AUDIO_SECONDS  # the audio net's window (spectrogram families)
    spec_noverlap: int = SPEC_NOVERLAP  # its scipy spectrogram's overlap (hop 512 - noverlap)
    loader: Loader | None = None  # its authors' test loader; None: EZ-VSL's (soundloc.authors)

    def variant(self, config: Config) -> str:
        """The config's map variant, checked (its first when the config names none)."""
        if not self.variants:
            return ""
        name = config.variant or next(iter(self.variants))
        if name not in self.variants:
            raise ConfigError(f"{self.name} has map variants {', '.join(self.variants)}, not {name!r}")
        return name

    def map_rule(self, config: Config) -> MapRule | None:
        """How its authors' test code makes the 224x224 map it scores (None: soundloc's own)."""
        return self.variants.get(self.variant(config)) if config.preprocess == "authors" else None

    def summary(self, config: Config) -> str:
        """One line: family, map variant, preprocessing (what `soundloc info` prints)."""
        variant = self.variant(config)
        prior = f", object prior alpha {config.prior_alpha:g}" if config.prior_alpha is not None else ""
        theirs = "PIL bicubic frame" if self.loader is None else "their frame resize"
        pre = (f"authors' ({theirs}, their audio loader and map upsampling; streams use soundloc's)"
               if config.preprocess == "authors" else "soundloc's default")
        return f"{self.name}" + (f", variant {variant}" if variant else "") + f"{prior}; preprocessing {pre}"

    def lookahead_steps(self, config: Config) -> int:
        """Steps a streaming model of this family waits before a step's map is final."""
        return self.lookahead(config)

    def audio_shape(self, config: Config) -> tuple[int, ...]:
        """One stream's step audio input, without the batch axis."""
        if self.audio_input == "mel":
            return (1, MELS_PER_STEP, config.n_mels)
        from .mel import spectrogram_shape

        return (1, *spectrogram_shape(self.audio_seconds, config.sample_rate, self.spec_noverlap))

    def spectrogram(self, audio: np.ndarray) -> np.ndarray:
        """This family's log spectrogram of one audio window (``mel.log_spectrogram``)."""
        from .mel import log_spectrogram

        return log_spectrogram(audio, SAMPLE_RATE, self.spec_noverlap)

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
        self.length = int(round(family.audio_seconds * SAMPLE_RATE))
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
        from .mel import audio_window

        audio = audio_window(self.audio, self.first_sample(step) - self.start, self.length)
        return self.family.normalise(small[None])[:, 0][None], self.family.spectrogram(audio)[None]


def ezvsl_file_inputs(path: Any, config: Config, seconds: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A media file (or a ``stills.StillClip``) -> EZ-VSL's offline inputs for every step:
    frames (1, 3, T, 224, 224) and the spectrogram of the 3 s centred on each frame
    (1, T, 257, 200): what its authors' test code computes for one frame, at every frame.
    ``config.preprocess == "authors"``: their frame resize and audio loader (``soundloc.authors``)."""
    from .mel import audio_window
    from .media import load_clip
    from .stills import StillClip

    family = family_of(config)
    if isinstance(path, StillClip):
        return _still_inputs(path, config)
    if config.preprocess == "authors":
        return _authors_video_inputs(path, config, seconds)
    clip = load_clip(path, seconds=seconds, size=config.image_size)
    feeder = WindowFeeder(config, family, "centered")
    audio = np.asarray(clip.audio, np.float32)
    specs = [family.spectrogram(audio_window(audio, feeder.first_sample(t), feeder.length)) for t in range(len(clip.frames))]
    return family.normalise(clip.frames)[None], np.stack(specs)[None]


def _still_inputs(clip: Any, config: Config) -> tuple[np.ndarray, np.ndarray]:
    """One frame and its wav (the authors' layout): the window centred on the audio's middle."""
    from . import authors
    from .mel import audio_window
    from .stills import still_audio, still_frame

    family = family_of(config)
    size, length = config.image_size, int(round(family.audio_seconds * SAMPLE_RATE))
    if config.preprocess == "authors" and family.loader is not None:
        frame = family.loader.read_frame(authors.load_image(clip.frame), size)
        audio = family.loader.window(family.loader.read_audio(clip.audio))
    elif config.preprocess == "authors":
        frame = authors.resize_frame(authors.load_image(clip.frame), size)
        track = authors.read_track(clip.audio)
        audio = authors.window(track, authors.centre_start(track, EZVSL_AUDIO_SECONDS), EZVSL_AUDIO_SECONDS)
    else:
        frame, samples = still_frame(clip.frame, size), still_audio(clip.audio)
        audio = audio_window(samples, len(samples) // 2 - length // 2, length)
    return family.normalise(frame[None])[None], family.spectrogram(audio)[None, None]


def _authors_video_inputs(path: Any, config: Config, seconds: float | None) -> tuple[np.ndarray, np.ndarray]:
    """A video the authors' way: each full-size frame resized by PIL; the middle frame's audio
    window centred on the audio stream's own duration / 2 (their loader on the clip's wav), the
    others 0.1 s apart from it, each read by their loader."""
    from . import authors
    from .media import load_clip

    family = family_of(config)
    clip = load_clip(path, seconds=seconds, size=None)
    T = len(clip.frames)
    if family.loader is not None:  # LVS, SSL-Align: the middle frame gets their window, the others 0.1 s apart
        track = family.loader.read_audio(path)
        frames = np.stack([family.loader.read_frame(f, config.image_size) for f in clip.frames])
        specs = [family.spectrogram(family.loader.window(track, (t - T // 2) / config.fps)) for t in range(T)]
        return family.normalise(frames)[None], np.stack(specs)[None]
    frames = np.stack([authors.resize_frame(f, config.image_size) for f in clip.frames])
    track = authors.read_track(path)
    middle = authors.centre_start(track, EZVSL_AUDIO_SECONDS)
    specs = [family.spectrogram(authors.window(track, middle + (t - T // 2) / config.fps, EZVSL_AUDIO_SECONDS))
             for t in range(T)]
    return family.normalise(frames)[None], np.stack(specs)[None]
def ezvsl_config(preset: str = "paper", **overrides: Any) -> Config:
    """The config of an ezvsl model: 224 px frames, cosine maps, one frame per map, EZ-VSL's tau,
    the preset's width (``EZVSL_PRESETS``), then ``overrides``."""
    if preset not in EZVSL_PRESETS:
        raise ConfigError(f"unknown ezvsl preset {preset!r}; choose from {', '.join(EZVSL_PRESETS)}")
    base = {"family": "ezvsl", "image_size": EZVSL_IMAGE_SIZE, "num_classes": 0, "window_seconds": 0.1,
            "map_kind": "cosine", "contrastive_temperature": EZVSL_TAU, "width": EZVSL_PRESETS[preset]}
    return Config(**{**base, **overrides})


def classifier_lookahead(config: Config) -> int:
    """One step per 3-tap temporal convolution that pads the future (the stem and two per
    layer-1 block: 5 for MC3-18); none when causal."""
    return 0 if config.causal else 1 + 2 * config.layers[0]


def no_lookahead(config: Config) -> int:
    """A per-frame model: nothing waits inside the step graph."""
    return 0


def prior_on_grid(prior: np.ndarray, grid: tuple[int, ...]) -> np.ndarray:
    """The object prior (..., h, w) on the map's grid (``model.ezvsl.prior_on_grid`` is the torch
    twin): as it is when they match; else each resized bilinearly, pixel centres aligned."""
    if tuple(prior.shape[-2:]) == tuple(grid):
        return prior
    flat = prior.reshape(-1, *prior.shape[-2:])
    out = np.stack([upsample(p, (grid[0], grid[1]), "bilinear", align_corners=False) for p in flat])
    return out.reshape(*prior.shape[:-2], *grid).astype(prior.dtype)


def blend_prior(maps: np.ndarray, prior: np.ndarray | None, alpha: float | None,
                ranges: PriorRanges | None = None) -> np.ndarray:
    """The object-prior blend in numpy (``model.ezvsl.EZVSL.maps`` is the torch twin): maps and
    prior (..., h, w) each min-max normalised (EZ-VSL, FNAC), or scaled by fixed ``ranges`` (SLAVC),
    then ``alpha * map + (1 - alpha) * prior``."""
    if prior is None or alpha is None:
        return maps
    prior = prior_on_grid(prior, maps.shape[-2:])
    if ranges is not None:
        (c0, c1), (p0, p1) = ranges
        return alpha * (maps - c0) / (c1 - c0) + (1 - alpha) * (prior - p0) / (p1 - p0)

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
        std=IMAGENET_STD, file_inputs=ezvsl_file_inputs, lookahead=no_lookahead,
        variants={"cosine": MapRule("bilinear", align_corners=True)}),
    # FNAC-AVL (Sun et al., CVPR 2023): EZ-VSL's networks and key names (its dropouts hold no
    # weights); its test.py scores the map twice: bilinear (validate) and bicubic (validate2) upsampling
    "fnac": Family(
        "fnac", "FNAC-AVL (EZ-VSL's networks trained with false-negative-aware losses; cosine map)",
        audio_input="spec", averages_maps=False, clip_graphs=False, quantizable=False, mean=IMAGENET_MEAN,
        std=IMAGENET_STD, file_inputs=ezvsl_file_inputs, lookahead=no_lookahead,
        variants={"bilinear": MapRule("bilinear", align_corners=True),
                  "bicubic": MapRule("bicubic", align_corners=False)}),
    # SLAVC (Mo & Morgado, NeurIPS 2022): two projection heads per side, the map their mean; its
    # test.py upsamples bicubic (align_corners) and scales by fixed ranges; online or momentum encoders
    "slavc": Family(
        "slavc", "SLAVC (EZ-VSL's trunks, two projection heads averaged; confidence from the map)",
        audio_input="spec", averages_maps=False, clip_graphs=False, quantizable=False, mean=IMAGENET_MEAN,
        std=IMAGENET_STD, file_inputs=ezvsl_file_inputs, lookahead=no_lookahead,
        variants={v: MapRule("bicubic", True, "bicubic", True, cos_range=SLAVC_RANGES[0], prior_range=SLAVC_RANGES[1])
                  for v in ("online", "momentum")}, prior_ranges=SLAVC_RANGES),
    # LVS (Chen et al., CVPR 2021): its test.py resizes the 14x14 map with cv2's INTER_LINEAR
    # (pixel centres) and thresholds at the median (`--protocol lvs`); its loader feeds 10 s
    "lvs": Family(
        "lvs", "LVS (ResNet-18s, layer4 stride 1: 14x14 cosine map; 10 s of audio)",
        audio_input="spec", averages_maps=False, clip_graphs=False, quantizable=False, mean=IMAGENET_MEAN,
        std=IMAGENET_STD, file_inputs=ezvsl_file_inputs, lookahead=no_lookahead,
        variants={"cosine": MapRule("bilinear", align_corners=False)}, audio_seconds=LVS_AUDIO_SECONDS,
        loader=Loader("crop", "mean", 10.0, (0.0, LVS_AUDIO_SECONDS))),
    # SSL-Align (Senocak et al., ICCV 2023): LVS's network; its test.py (validate_lvs) resizes
    # VGG-SS maps with cv2 (pixel centres) and the other test sets' with align_corners=True, the
    # 7x7 object prior of its "OGL" blend the same way (alpha 0.4, each normalised, then again)
    "sslalign": Family(
        "sslalign", "SSL-Align (LVS's network: 14x14 cosine map; 3 s of audio at noverlap 353)",
        audio_input="spec", averages_maps=False, clip_graphs=False, quantizable=False, mean=IMAGENET_MEAN,
        std=IMAGENET_STD, file_inputs=ezvsl_file_inputs, lookahead=no_lookahead,
        variants={"vggss": MapRule("bilinear", False, "bilinear", False), "flickr": MapRule("bilinear", True, "bilinear", True)},
        spec_noverlap=SSLALIGN_NOVERLAP, loader=Loader("tensor", "first", 10.0, SSLALIGN_SPAN)),
}
