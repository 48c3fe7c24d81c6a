"""The published localizers' own preprocessing (`--preprocess authors`), in numpy + PIL + PyAV.

EZ-VSL, FNAC-AVL and SLAVC share one ``datasets.py`` loader (their test code, read for this):

- **frame**: ``PIL.Image.open(jpg).convert('RGB')`` resized to 224x224 with PIL's bicubic
  (which antialiases: its kernel widens with the shrink factor), from the full-size frame;
  ``ToTensor`` and ImageNet normalisation. soundloc's default path lets swscale scale the
  decoded YUV straight to 224 px (bilinear), faster and within a few grey levels.
- **audio**: the file decoded by PyAV as s16 mono at its own rate (for 16-bit PCM the mono mix
  is the channel mean), divided by 32767, clipped to [-1, 1]; the 3 s window starts at
  ``max(duration / 2 - 1.5, 0)`` where ``duration`` is the audio stream's own; a window that runs
  past the end is shorter and the whole window is *repeated* to 3 s (soundloc's default path
  pads with zeros, the silence a live stream would have).
- **maps at evaluation**: the 7x7 map upsampled to 224x224 (bilinear with ``align_corners``
  for EZ-VSL and FNAC's first test, bicubic for FNAC's second and for SLAVC), min-max
  normalised, blended with the object prior (each normalised), normalised again.

LVS (``datasets/dataloader.py`` of its repository) and SSL-Align (its ``datasets_lvs.py``, which
its test.py uses for its own model) read differently (``Loader``):

- **frame**: LVS ``Resize(224, BICUBIC)`` on the PIL image (shorter side to 224, PIL's
  antialiased bicubic) then ``CenterCrop(224)``; SSL-Align ``ToTensor()`` *first*, then
  torchvision's tensor ``Resize((224, 224), BICUBIC)`` (antialiased, on floats: no rounding to
  uint8; PIL's float-image bicubic is the same filter).
- **audio**: ``soundfile.read`` of the wav (int16 / 32768, not 32767); a file shorter than 10 s
  tiled to 10 s, the first 10 s kept, clipped to [-1, 1]. LVS feeds all 10 s (noverlap 274:
  257x671); SSL-Align its samples [3.5 s, 6.5 s) (noverlap 353: 257x299) and, for a stereo file,
  the first channel (LVS's loader fails on stereo; soundloc takes the channel mean there).

What this module does not do: resample. The authors' wavs are 16 kHz; a file at another rate
is resampled to 16 kHz by libswresample first (the models' spectrogram is 257x200 only there).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from .config import NORM_EPS, PREPROCESSING, SAMPLE_RATE

INT16_MAX = 32767  # their loader divides s16 samples by np.iinfo(int16).max
WINDOW_SECONDS = 3.0


def check_preprocess(name: str) -> str:
    if name not in PREPROCESSING:
        raise ValueError(f"--preprocess must be one of {', '.join(PREPROCESSING)}, not {name!r}")
    return name


# -- frames ------------------------------------------------------------------------------------
def load_image(path: str | Path) -> np.ndarray:
    """A still frame (jpg/png) as (H, W, 3) uint8 RGB, read as their ``load_image`` reads it."""
    from PIL import Image

    from .media import MediaError, one_line

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise MediaError(f"{path}: not a readable image ({one_line(e)})") from None


def resize_frame(rgb: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8 with PIL's antialiased bicubic, as
    ``transforms.Resize((size, size), Image.BICUBIC)`` does on a PIL image."""
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((size, size), Image.BICUBIC))


# -- audio -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AudioTrack:
    """A file's audio as their loader sees it: int16 mono samples from ``first`` (seconds, the
    first decoded chunk's time), the stream's own ``duration`` and its end ``end`` (start + duration)."""

    samples: np.ndarray
    rate: int
    first: float
    duration: float
    end: float


def read_track(path: str | os.PathLike, rate: int = SAMPLE_RATE, channel: int | None = None) -> AudioTrack:
    """Decode the first audio stream the way their ``load_audio_av`` does (s16 mono), or only
    its channel ``channel`` (SSL-Align's loader keeps a stereo file's first channel)."""
    import av

    from .media import MediaError, one_line

    try:
        container = av.open(os.fspath(path))
    except (av.FFmpegError, OSError) as e:
        raise MediaError(f"{path}: cannot open ({one_line(e)})") from None
    with container:
        if not container.streams.audio:
            raise MediaError(f"{path}: no audio stream")
        stream = container.streams.audio[0]
        tb = stream.time_base
        start = stream.start_time * tb if stream.start_time is not None else Fraction(0)
        duration = stream.duration * tb if stream.duration is not None else \
            Fraction(container.duration or 0, av.time_base)
        layout = "mono" if channel is None else stream.layout.name
        resampler = av.AudioResampler(format="s16p", layout=layout, rate=rate)
        pick = 0 if channel is None else channel
        chunks, first = [], None
        try:
            for frame in container.decode(audio=0):
                if first is None and frame.pts is not None:
                    first = frame.pts * frame.time_base
                frame.pts = None
                chunks += [f.to_ndarray()[pick] for f in resampler.resample(frame)]
            chunks += [f.to_ndarray()[pick] for f in resampler.resample(None)]
        except av.FFmpegError as e:
            raise MediaError(f"{path}: corrupt audio ({one_line(e)})") from None
    if not chunks:
        raise MediaError(f"{path}: no decodable audio")
    first = float(first if first is not None else start)
    return AudioTrack(np.concatenate(chunks).astype(np.int16), rate, first, float(duration), float(start + duration))


def centre_start(track: AudioTrack, seconds: float = WINDOW_SECONDS) -> float:
    """Where their window starts: the middle of the stream's own duration, minus half a window."""
    return max(track.duration / 2 - seconds / 2, 0.0)


def window(track: AudioTrack, start: float, seconds: float = WINDOW_SECONDS) -> np.ndarray:
    """Their ``load_spectrogram`` up to the spectrogram: ``seconds`` of audio from ``start``
    (float64, /32767, clipped, a short window repeated to length), zeros before the file."""
    duration = min(seconds, track.end - start)
    ss, n = int((start - track.first) * track.rate), int(duration * track.rate)
    audio = track.samples
    if ss < 0:
        audio, ss = np.concatenate([np.zeros(-ss, np.int16), audio]), 0
    audio = np.clip(audio[ss:ss + max(n, 0)] / INT16_MAX, -1.0, 1.0)
    want = int(track.rate * seconds)
    if 0 < len(audio) < want:
        audio = np.tile(audio, int(want / len(audio)) + 1)
    return np.pad(audio, (0, max(0, want - len(audio))))[:want]


SOUNDFILE_SCALE = 32768  # soundfile.read gives int16 PCM as samples / 32768


@dataclass(frozen=True)
class Loader:
    """LVS's and SSL-Align's test loaders (see the module docstring): ``frame`` "crop" (LVS) or
    "tensor" (SSL-Align); stereo to ``mono`` "mean" or "first"; ``length`` seconds from the
    file's start (tiled when shorter), of which ``span`` (seconds) is the model's window."""

    frame: str
    mono: str
    length: float = 10.0
    span: tuple[float, float] = (0.0, 10.0)

    def read_frame(self, rgb: np.ndarray, size: int) -> np.ndarray:
        """(H, W, 3) uint8 -> (size, size, 3): uint8 (crop) or float32 on the 0..255 scale (tensor)."""
        return crop_frame(rgb, size) if self.frame == "crop" else tensor_resize(rgb, size)

    def read_audio(self, path: str | os.PathLike) -> AudioTrack:
        return read_track(path, channel=0 if self.mono == "first" else None)

    def window(self, track: AudioTrack, shift: float = 0.0) -> np.ndarray:
        """The span's samples (float64), ``shift`` seconds later (another frame of a video;
        zeros outside the tiled ``length``)."""
        x = track.samples / SOUNDFILE_SCALE
        n = int(track.rate * self.length)
        if 0 < len(x) < n:
            x = np.tile(x, int(n / len(x)) + 1)
        x = np.clip(x[:n], -1.0, 1.0)
        start, stop = int(track.rate * self.span[0]), int(track.rate * self.span[1])
        first = start + int(round(shift * track.rate))
        out = np.zeros(stop - start)
        lo, hi = max(first, 0), min(first + len(out), len(x))
        if hi > lo:
            out[lo - first:hi - first] = x[lo:hi]
        return out


def crop_frame(rgb: np.ndarray, size: int) -> np.ndarray:
    """torchvision's ``Resize(size, BICUBIC)`` (the shorter side to ``size``, the longer
    ``int(size * long / short)``) then ``CenterCrop(size)``, on a PIL image."""
    from PIL import Image

    h, w = rgb.shape[:2]
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    nw, nh = (size, new_long) if w <= h else (new_long, size)
    im = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((nw, nh), Image.BICUBIC))
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return im[top:top + size, left:left + size]


def tensor_resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """``ToTensor()`` then torchvision's antialiased bicubic ``Resize((size, size))`` of the float
    tensor (PIL's float-image bicubic, per channel), back on the 0..255 scale (float32)."""
    from PIL import Image

    x = np.asarray(rgb, np.float32) / np.float32(255)
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(x[..., c]), mode="F").resize((size, size), Image.BICUBIC))
             for c in range(3)]
    return np.stack(chans, axis=-1) * np.float32(255)


# -- maps at evaluation --------------------------------------------------------------------------
def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """torch's cubic convolution weights (A = -0.75) of the 4 taps around each position."""
    def near(x):
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def _axis(n_in: int, n_out: int, mode: str, align_corners: bool) -> tuple[np.ndarray, np.ndarray]:
    """(indices (n_out, taps), weights (n_out, taps)) of one axis of ``F.interpolate``."""
    x = np.arange(n_out, dtype=np.float64)
    if align_corners:
        src = x * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    else:
        src = (x + 0.5) * (n_in / n_out) - 0.5
    if mode == "bilinear":
        src = np.maximum(src, 0.0) if not align_corners else src
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        t = src - i0
        idx = np.stack([i0, np.minimum(i0 + 1, n_in - 1)], axis=-1)
        return idx, np.stack([1 - t, t], axis=-1)
    if mode == "bicubic":
        i0 = np.floor(src).astype(int)
        idx = np.clip(i0[:, None] + np.arange(-1, 3)[None], 0, n_in - 1)
        return idx, _cubic_weights(src - i0)
    raise ValueError(f"unknown upsampling {mode!r}")


def upsample(m: np.ndarray, size: int | tuple[int, int], mode: str, align_corners: bool) -> np.ndarray:
    """A (h, w) map -> (size, size) (or ``size`` = (H, W)) float64, as ``F.interpolate(mode=...,
    align_corners=...)``."""
    m = np.asarray(m, np.float64)
    H, W = (size, size) if isinstance(size, int) else size
    yi, yw = _axis(m.shape[0], H, mode, align_corners)
    xi, xw = _axis(m.shape[1], W, mode, align_corners)
    rows = (m[yi] * yw[..., None]).sum(axis=1)
    return (rows[:, xi] * xw[None]).sum(axis=2)


def normalize_img(m: np.ndarray) -> np.ndarray:
    """Their ``utils.normalize_img``: min-max, a flat map left as it is."""
    lo, hi = m.min(), m.max()
    return (m - lo) / (hi - lo) if hi - lo > NORM_EPS else m


@dataclass(frozen=True)
class MapRule:
    """How a family's test code turns its 7x7 maps into the 224x224 map it scores."""

    mode: str  # F.interpolate mode of the audio-visual map
    align_corners: bool
    prior_mode: str = "bilinear"  # ... and of the object prior
    prior_align_corners: bool = True
    # SLAVC: fixed ranges instead of each map's min-max (the cosine's [-1, 1], i.e. its [-1/tau, 1/tau]
    # on logits; the prior's [0, 2.5]) and no normalisation after the blend
    cos_range: tuple[float, float] | None = None
    prior_range: tuple[float, float] | None = None


def _scale(m: np.ndarray, rng: tuple[float, float] | None) -> np.ndarray:
    return normalize_img(m) if rng is None else (m - rng[0]) / (rng[1] - rng[0])


def eval_map(cos: np.ndarray, prior: np.ndarray | None, alpha: float | None, rule: MapRule,
             size: int = 224) -> np.ndarray:
    """The map their test code scores: upsampled, normalised (min-max, or SLAVC's fixed range),
    blended with the prior (normalised the same way), min-max normalised again (not SLAVC)."""
    av = _scale(upsample(cos, size, rule.mode, rule.align_corners), rule.cos_range)
    if prior is None or alpha is None:
        return av
    obj = _scale(upsample(prior, size, rule.prior_mode, rule.prior_align_corners), rule.prior_range)
    blend = av * alpha + obj * (1 - alpha)
    return blend if rule.cos_range is not None else normalize_img(blend)

