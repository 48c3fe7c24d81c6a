"""Model, audio and streaming settings: one frozen dataclass stored in every checkpoint and export.

Every time <-> step <-> mel-frame <-> sample conversion goes through the constants and
properties here, so the video rate, the mel hop and the audio rate can never disagree.
"""

from __future__ import annotations

import dataclasses
import difflib
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from .errors import SoundlocError

SAMPLE_RATE = 16_000  # Hz, mono
HOP_LENGTH = 160  # samples between mel frames: 10 ms
N_FFT = 400  # 25 ms analysis window
N_MELS = 80
FPS = 10  # video frames (= model steps) per second
MELS_PER_STEP = SAMPLE_RATE // HOP_LENGTH // FPS  # 10 mel frames per video frame
SAMPLES_PER_STEP = MELS_PER_STEP * HOP_LENGTH  # 1600 samples per video frame
IMAGE_SIZE = 112
EVAL_SIZE = 224  # maps are upsampled to EVAL_SIZE x EVAL_SIZE to be binarised and boxed (VGG-SS's frame)
VIDEO_FOLDERS = ("videos", "video")  # where VGGSound downloads keep the clips (then the root itself)
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov")  # what counts as a video file in a folder
END_GRACE_S = 2.0  # a live video that ended waits this long for the audio of its last frames
VIDEO_MEAN = (0.43216, 0.394666, 0.37645)  # torchvision's video-model normalisation
VIDEO_STD = (0.22803, 0.22145, 0.216989)

# paper Table 2: ours, shared FC, single multi-modal; plus "tied-fc" (not in the paper): one
# D -> C classifier applied to z^V, z^A and their mean, which puts both modalities' channels in
# one class-evidence space, so that alpha = V . z^A compares like with like.
HEADS = ("individual-fc", "shared-fc", "av-only", "tied-fc")
# How alpha_t is formed from V_t and z^A_t: the paper's dot product; the cosine (V L2-normalised
# over channels at each location, z^A_t normalised), which removes the visual saliency carried by
# |V| so that only the direction, shared with the audio, decides where the map is high; or
# "salient", the cosine times |V|^SALIENCE_POWER: the direction still decides which object sounds,
# and a softened |V| puts the peak on that object rather than on the background beside it (a
# cosine map is as high next to a small object as on it). The dot product is the power 1.
MAP_KINDS = ("dot", "cosine", "salient")
# Whose peak the contrastive term scores: the cosine map (issue 10's term), or the map the model
# deploys (its map_kind: the peak the live box and pointing read, issue 24).
CONTRASTIVE_MAPS = ("cosine", "deployed")
SALIENCE_POWER = 0.25  # chosen on the training profile's validation clips (benchmarks/RESULTS.md, issue 10)
NORM_EPS = 1e-12  # floor of a norm before dividing (torch.nn.functional.normalize's default)

# The audio-dependence check (soundloc.dependence): maps whose own-audio and other-audio versions
# correlate above 1 - this (median over clips) do not follow the audio.
MIN_AUDIO_DEPENDENCE = 0.1
MIN_DEPENDENCE_CLIPS = 2  # one clip has no other clip whose sound to play over it: nothing to judge

# Training recipes: Config fields and TrainOptions that `soundloc train --recipe NAME` starts from
# (explicit --set and options still win). "paper" is §4.2 exactly: individual FCs, summed CE,
# dot-product maps, plateau LR on validation accuracy. "default" is what the ablation in
# benchmarks/RESULTS.md (issue 10) found makes the maps follow the sound.
RECIPES: dict[str, tuple[dict, dict]] = {
    "paper": ({"head": "individual-fc", "map_kind": "dot", "contrastive_weight": 0.0}, {"schedule": "plateau"}),
    # the class-aware contrastive term (contrastive_weight=1) did not beat the map alone over two seeds;
    # trained at 7x7 and read at 14x14 beat 7x7 and trained-at-14x14 on validation clips (issue 24);
    # the same term on the deployed map's peak (contrastive_map="deployed", weights 1 and 0.3) lost on them
    # while its peak could sit on the zero-padded border ring; with that ring left out (mil_border=1)
    # weight 0.3 won on them and on the held-out profile at 8 epochs, and lost at 30 (its peak moves
    # beside the object; issue 24, round 8): an option; so is --zoom 0.75 (frames shrunk by a random
    # factor in [0.75, 1]): it won on validation and shifted clips and met held-out pointing 0.75 at 16 epochs
    # on three seeds of four, on one of two at 30, and of two demo models trained with it one missed
    # the int8 row (its peak agreeing on 80 % of steps) and one passed (97 %; issue 24, rounds 5-8)
    "default": ({"head": "tied-fc", "map_kind": "salient", "contrastive_weight": 0.0, "fine_map": True,
                 "coarse_training": True}, {"schedule": "cosine"}),
}
FORMAT_VERSION = 1  # of checkpoints and export directories

# How per-step maps are averaged over the 3 s window: centred (the paper's Eq. 4, for files) or
# trailing (the last steps up to now, what a live view can show).
WINDOW_MODES = ("trailing", "centered")
PREPROCESSING = ("soundloc", "authors")  # offline input paths (soundloc.authors is the second)
SILENCE_DB = -120.0  # audio level reported for digital silence (dBFS)

# Model families (soundloc.families says what each one's step needs, with each family's own
# constants): the paper's classifier, and EZ-VSL (Mo & Morgado 2022), imported from its authors'
# checkpoints (`soundloc import ezvsl`). The names are here because a Config checks its family.

# Signals that end a run cleanly (outputs finalised, finished work kept): Ctrl-C, a kill, a
# closed terminal. SIGHUP does not exist on Windows.
STOP_SIGNAL_NAMES = ("SIGINT", "SIGTERM", "SIGHUP")


def stop_signals() -> list[signal.Signals]:
    """The stop signals this OS has."""
    return [getattr(signal, n) for n in STOP_SIGNAL_NAMES if hasattr(signal, n)]


class ConfigError(SoundlocError, ValueError):
    """A config that cannot be built or does not match what it is loaded into."""


@dataclass(frozen=True)
class Config:
    """Everything needed to rebuild the model and feed it the right inputs.

    ``width`` scales every channel count of both backbones (1.0 = the paper's MC3-18, 512-d
    embeddings); ``layers`` gives the number of residual blocks per stage for both backbones.
    ``map_kind``: ``dot`` (the paper's alpha = V . z^A) or ``cosine`` (both normalised over
    channels); the export computes the same map. ``contrastive_weight`` > 0 adds
    ``soundloc.model.classifier.contrastive_loss`` to the classification losses (training only),
    scoring the peak of the cosine map or, with ``contrastive_map="deployed"``, of the
    ``map_kind`` map the model deploys. The defaults are the paper's, so checkpoints written before these fields load unchanged.
    ``causal`` pads the temporal convolutions on the past only: no lookahead when streaming,
    but a different model that must be trained as such. ``fine_map`` drops the spatial stride
    of the last visual stage (as LVS does): V, and so the map, has twice the resolution (H/8,
    14x14 at 112 px) for the same weights' shapes, at 1.3-1.5x the video network's cost.
    ``coarse_training`` (with ``fine_map``) trains with the stride and drops it in eval mode
    only: the weights learn on 7x7 maps and every inference path (export, streaming, eval)
    reads 14x14 maps from them, which chose better than training at 14x14 on the validation
    clips (benchmarks/RESULTS.md, issue 24).
    """

    num_classes: int = 309
    width: float = 1.0
    layers: tuple[int, int, int, int] = (2, 2, 2, 2)
    head: str = "individual-fc"
    map_kind: str = "dot"
    contrastive_weight: float = 0.0  # weight of the class-aware multiple-instance contrastive term
    contrastive_temperature: float = 0.07
    contrastive_map: str = "cosine"  # in CONTRASTIVE_MAPS: the map whose peak the contrastive term scores
    causal: bool = False
    fine_map: bool = False  # the last visual stage without its stride: V and the map at H/8 (14x14 at 112 px)
    coarse_training: bool = False  # with fine_map: train with that stride (7x7), drop it in eval mode only
    clip_seconds: float = 10.0
    window_seconds: float = 3.0
    fps: int = FPS
    image_size: int = IMAGE_SIZE
    sample_rate: int = SAMPLE_RATE
    n_mels: int = N_MELS
    hop_length: int = HOP_LENGTH
    n_fft: int = N_FFT
    class_names: tuple[str, ...] = field(default=(), compare=False)
    family: str = "classifier"  # a name in families.FAMILIES (checked there); checkpoints written before it are the classifier
    prior_alpha: float | None = None  # ezvsl: blend alpha * map + (1 - alpha) * object prior; None: no prior
    # offline inputs (eval, moments, annotate): soundloc's default path, or "authors" (soundloc.authors:
    # a published family's own frame resize, audio loading and map upsampling); streams always use the default
    preprocess: str = "soundloc"
    variant: str = ""  # a published family's map variant (soundloc.families.Family.variants), "" = its first
    box_weight: float = 1.0  # ezvsl training: weight of the box term (model.ezvsl.box_loss) for clips with a box
    # cells of the map's border ring left out of the contrastive term's max over locations
    # (model.ezvsl.mil_contrastive_loss; the classifier's contrastive_loss when contrastive_weight
    # > 0); training only, the deployed map is never cropped
    mil_border: int = 0

    def __post_init__(self) -> None:
        if self.prior_alpha is not None and (self.family == "classifier" or not 0 <= self.prior_alpha <= 1):
            raise ConfigError(f"prior_alpha applies to a published family (ezvsl, fnac, slavc, sslalign), in [0, 1] "
                              f"(got {self.prior_alpha})")
        if self.preprocess not in PREPROCESSING or (self.preprocess != "soundloc" and self.family == "classifier"):
            raise ConfigError(f"preprocess must be one of {', '.join(PREPROCESSING)} (authors: for a published "
                              f"family, not the classifier), not {self.preprocess!r}")
        if self.mil_border < 0:
            raise ConfigError(f"mil_border must be >= 0, not {self.mil_border}")
        if self.box_weight < 0:
            raise ConfigError(f"box_weight must be >= 0, not {self.box_weight}")
        if self.head not in HEADS:
            raise ConfigError(f"head must be one of {', '.join(HEADS)}, not {self.head!r}")
        if self.map_kind not in MAP_KINDS:
            raise ConfigError(f"map_kind must be one of {', '.join(MAP_KINDS)}, not {self.map_kind!r}")
        if self.contrastive_weight < 0 or self.contrastive_temperature <= 0:
            raise ConfigError(f"need contrastive_weight >= 0 and contrastive_temperature > 0 "
                              f"(got {self.contrastive_weight}, {self.contrastive_temperature})")
        if self.contrastive_map not in CONTRASTIVE_MAPS:
            raise ConfigError(f"contrastive_map must be one of {', '.join(CONTRASTIVE_MAPS)}, "
                              f"not {self.contrastive_map!r}")
        if self.coarse_training and not self.fine_map:
            raise ConfigError("coarse_training applies to fine_map models (set fine_map=true too)")
        if self.width <= 0 or len(self.layers) != 4 or min(self.layers) < 1:
            raise ConfigError(f"bad backbone shape: width={self.width}, layers={self.layers}")
        if (self.fps, self.sample_rate, self.hop_length, self.n_mels) != (FPS, SAMPLE_RATE, HOP_LENGTH, N_MELS):
            raise ConfigError("fps, sample_rate, hop_length and n_mels are fixed by the method (10, 16000, 160, 80)")
        if self.image_size % 16:
            raise ConfigError(f"image_size must be a multiple of 16, not {self.image_size}")
        side = self.training_map_side
        if self.family == "classifier" and self.contrastive_weight > 0 and side <= 2 * self.mil_border:
            raise ConfigError(f"mil_border={self.mil_border} leaves nothing of the {side}x{side} training map "
                              f"at image_size {self.image_size}; lower it or set mil_border=0")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ConfigError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        object.__setattr__(self, "layers", tuple(int(n) for n in self.layers))
        object.__setattr__(self, "class_names", tuple(self.class_names))

    # -- derived sizes --------------------------------------------------------------------
    def channels(self, base: int) -> int:
        """Channel count of a stage whose full-width size is ``base``."""
        return max(8, int(round(base * self.width)))

    @property
    def embed_dim(self) -> int:
        return self.channels(512)

    @property
    def clip_steps(self) -> int:
        return int(round(self.clip_seconds * self.fps))

    @property
    def window_steps(self) -> int:
        return int(round(self.window_seconds * self.fps))

    @property
    def training_map_side(self) -> int:
        """The classifier's map side in training: stride 16, or 8 with ``fine_map`` unless
        ``coarse_training`` keeps layer4's stride there (7 or 14 at 112 px)."""
        return self.image_size // (16 if self.coarse_training or not self.fine_map else 8)


    # -- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        d["class_names"] = list(self.class_names)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}: written by a newer soundloc?")
        d = dict(d)
        if "layers" in d:
            d["layers"] = tuple(d["layers"])
        if "class_names" in d:
            d["class_names"] = tuple(d["class_names"])
        return cls(**d)

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    @classmethod
    def parse_overrides(cls, items: Sequence[str]) -> dict[str, Any]:
        """``["width=0.5", "layers=1,1,1,1", "causal=true"]`` (``soundloc train --set``) -> typed
        field overrides for ``replace`` or ``preset``; a bad item raises a one-line ConfigError."""
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "class_names"}
        out: dict[str, Any] = {}
        for item in items:
            key, sep, value = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or key not in fields:
                close = difflib.get_close_matches(key, fields, n=1)
                hint = f" (did you mean {close[0]}?)" if close else f"; known: {', '.join(fields)}"
                raise ConfigError(f"bad override {item!r}: expected KEY=VALUE with a config field{hint}")
            default = getattr(cls(), key)
            try:
                if isinstance(default, bool):
                    if value.lower() not in ("true", "false", "1", "0"):
                        raise ValueError(value)
                    out[key] = value.lower() in ("true", "1")
                elif isinstance(default, tuple):
                    out[key] = tuple(int(v) for v in value.split(","))
                else:
                    out[key] = type(default)(value)
            except ValueError:
                raise ConfigError(f"bad override {item!r}: {value!r} is not a {type(default).__name__}") from None
        return out


PRESETS: dict[str, Config] = {
    "paper": Config(),
    # A CPU-trainable model (the shipped demo model): 1/8 of the channels, one block per stage.
    "small": Config(width=0.125, layers=(1, 1, 1, 1)),
    # For tests: tiny and fast; still every mechanism of the full model.
    "tiny": Config(width=0.0625, layers=(1, 1, 1, 1), clip_seconds=2.0),
}


DEFAULT_PRESET = "small"  # what `soundloc train` (and `soundloc info`) use without --preset
DEFAULT_RECIPE = "default"  # what a fresh `soundloc train` (and `soundloc info`) use without --recipe


def preset(name: str, **overrides: Any) -> Config:
    """A named config (``paper``, ``small``, ``tiny``) with fields overridden."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides)


def seconds_to_steps(seconds: float) -> int:
    """The nearest whole number of model steps (video frames) in ``seconds``."""
    return int(round(seconds * FPS))


def is_whole_steps(seconds: float) -> bool:
    """Whether ``seconds`` is a whole number of model steps (a multiple of 0.1 s)."""
    return abs(seconds * FPS - seconds_to_steps(seconds)) <= 1e-6


def steps_to_seconds(steps: int | float) -> float:
    return steps / FPS


# INT8 exports (soundloc/export/quantize.py): calibration (the agreement --verify asks of them is
# the int8 row of soundloc/deploy/tolerance.py).
CALIB_MAX_CLIPS = 16  # calibration clips used at most (the first by name): ranges settle well before

# `soundloc serve` (soundloc/runtime/serve.py): many streams, one batched step call per tick.
SERVE_BATCH_WAIT_S = 0.05  # a tick waits at most this long (half a step) for streams without a step ready
SERVE_TILE = (320, 240)  # preview grid: each stream's tile (width, height)
SERVE_PREVIEW_PERIOD_S = 0.1  # preview grid: the mosaic is recomposed at most this often
SERVE_MOSAIC_MAX = (1920, 1440)  # preview grid: the mosaic at most; tiles shrink to fit many streams
