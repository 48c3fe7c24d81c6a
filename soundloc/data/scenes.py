"""What a synthetic clip is made of: the class table (how each class looks and sounds), where
its objects are and how they move, and the pixels and samples that render them.

``soundloc.data.synth`` plans clips from these pieces and writes them as a dataset; this module
knows nothing of files."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..config import SAMPLE_RATE, seconds_to_steps, steps_to_seconds
from ..errors import SoundlocError

SHAPES = ("disc", "square", "triangle", "diamond", "ring", "cross", "octagon", "hourglass")
COLOURS = {
    "red": (0.90, 0.15, 0.12),
    "green": (0.15, 0.75, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
    "magenta": (0.85, 0.15, 0.80),
    "cyan": (0.10, 0.85, 0.90),
    "orange": (1.00, 0.55, 0.05),
    "white": (0.97, 0.97, 0.97),
}
TEXTURES = ("solid", "stripes", "checker", "dots")
# Only the held-out profile draws these (soundloc.data.synth.PROFILES["heldout"]): silent decoys
# of shapes no class has, textures no class wears, and source sounds of other temporal families.
HELDOUT_SHAPES = ("star", "crescent", "arrow")
HELDOUT_TEXTURES = ("rings", "grid", "gradient")
SOUND_FAMILIES = ("steady", "bursts", "chirp", "clicks")  # "steady": the class signature as it is
SOUND_WORDS = ("hum", "buzz", "whistle", "drone", "chirp", "beep", "rumble", "trill")
MAX_CLASSES = len(SHAPES) * len(COLOURS)
AREA_RANGE = (0.10, 0.45)  # fraction of the frame covered by an object's box
MAX_SPEED = 0.04  # frame widths per second: objects drift by at most 0.4 frame in 10 s
BACKGROUND_NOISE = 0.004  # RMS of the background hiss, also heard in silent gaps
SOURCE_LEVEL = 0.25  # peak-ish amplitude of the sounding object's signal


class SynthError(SoundlocError, ValueError):
    """Settings for which no synthetic dataset can be made."""



@dataclass(frozen=True)
class SynthClass:
    """One class: how it looks and how it sounds."""

    name: str
    shape: str
    colour: tuple[float, float, float]
    texture: str
    f0: float  # Hz, fundamental of the tone complex
    harmonics: tuple[float, ...]  # amplitude of harmonic k+1
    am_rate: float  # Hz, 0 = steady
    noise_band: tuple[float, float] | None  # Hz, band-limited noise added to the tone
def synth_classes(num_classes: int) -> tuple[SynthClass, ...]:
    """The class table: a function of ``num_classes`` only, so datasets made with different
    seeds share their classes (train on one, test on another)."""
    if not 2 <= num_classes <= MAX_CLASSES:
        raise SynthError(f"num_classes must be between 2 and {MAX_CLASSES}, not {num_classes}")
    colour_names = list(COLOURS)
    f0s = 200.0 * (3200.0 / 200.0) ** (np.arange(num_classes) / max(1, num_classes - 1))
    patterns = ((1.0,), (1.0, 0.5, 0.25), (1.0, 0.0, 0.6, 0.0, 0.3))
    classes = []
    for c in range(num_classes):
        shape = SHAPES[c % len(SHAPES)]
        colour = colour_names[(c + c // len(SHAPES)) % len(colour_names)]
        word = SOUND_WORDS[(c * 3) % len(SOUND_WORDS)]
        # Every third name has a comma, like "playing violin, fiddle": exercises CSV quoting.
        name = f"{colour} {shape}, {word}" if c % 3 == 0 else f"{colour} {shape} {word}"
        f0 = float(f0s[c])
        band = (min(2.5 * f0, 6000.0), min(3.5 * f0, 7500.0)) if (c // 2) % 2 else None
        classes.append(SynthClass(
            name=name, shape=shape, colour=COLOURS[colour], texture=TEXTURES[(c // 3) % len(TEXTURES)],
            f0=f0, harmonics=patterns[(c // 4) % len(patterns)], am_rate=(0.0, 3.0, 7.0, 13.0)[c % 4],
            noise_band=band,
        ))
    return tuple(classes)


# -- geometry -------------------------------------------------------------------------------


def place_objects(rng: np.random.Generator, n: int, area_range: tuple[float, float] = AREA_RANGE,
                  height_range: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sizes (m, 2) and start centres (m, 2) in frame units of m <= n objects whose boxes
    overlap little; object 0 is the source. ``height_range``: draw each box's height (fraction
    of the frame's) log-uniform in it instead of its area.

    Every area is drawn once, log-uniform in ``area_range`` (aspect ratio 0.75-1.33), and only
    positions are re-drawn until no box is more than 25 % covered: re-drawing or shrinking
    sizes would bias them small and make "the biggest object sounds" a shortcut. A layout too
    crowded to place drops its last distractor instead (down to two objects).
    """
    lo, hi = height_range or area_range
    size = np.exp(rng.uniform(np.log(lo), np.log(hi), n))
    aspect = np.exp(rng.uniform(np.log(0.75), np.log(1.33), n))
    if height_range is None:
        wh = np.stack([np.sqrt(size * aspect), np.sqrt(size / aspect)], axis=1)
    else:
        wh = np.stack([size * aspect, size], axis=1)
    while True:
        for _ in range(100):
            centre = rng.uniform(wh / 2, 1 - wh / 2)
            if _max_covered(centre, wh) <= 0.25:
                return wh, centre
        if len(wh) <= 2:
            return wh, centre
        wh = wh[:-1]


def _max_covered(centre: np.ndarray, wh: np.ndarray) -> float:
    """Largest fraction of any box covered by another box."""
    lo, hi = centre - wh / 2, centre + wh / 2
    inter = np.clip(np.minimum(hi[:, None], hi[None]) - np.maximum(lo[:, None], lo[None]), 0, None)
    frac = inter.prod(-1) / wh.prod(-1)[:, None]
    np.fill_diagonal(frac, 0.0)
    return float(frac.max()) if len(wh) > 1 else 0.0


def _reflect(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Fold positions into [lo, hi] as if bouncing off the walls (a triangle wave)."""
    span = np.maximum(hi - lo, 1e-9)
    y = np.mod(x - lo, 2 * span)
    return lo + np.where(y > span, 2 * span - y, y)


def object_boxes(wh: np.ndarray, centre: np.ndarray, velocity: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Boxes of every object at ``times`` (s): (n_obj, n_t, 4) normalised xmin, ymin, xmax, ymax."""
    half = wh[:, None, :] / 2
    pos = centre[:, None, :] + velocity[:, None, :] * times[None, :, None]
    pos = _reflect(pos, half, 1 - half)
    return np.concatenate([pos - half, pos + half], axis=-1)


# -- appearance -----------------------------------------------------------------------------


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test on object coordinates u, v in [-1, 1] (v down); every shape touches all
    four sides of its box, so the box is tight."""
    au, av_ = np.abs(u), np.abs(v)
    if shape == "disc":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.ones(np.broadcast(u, v).shape, bool)
    if shape == "triangle":
        return au <= (v + 1) / 2
    if shape == "diamond":
        return au + av_ <= 1.0
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.45**2)
    if shape == "cross":
        return (au <= 0.35) | (av_ <= 0.35)
    if shape == "octagon":
        return au + av_ <= 1.4
    if shape == "star":  # five points: the radius swings between 0.45 and 1 with the angle
        ang = np.arctan2(u, -v)
        return np.hypot(u, v) <= 0.45 + 0.55 * np.abs(np.cos(2.5 * ang)) ** 3
    if shape == "crescent":
        return (u * u + v * v <= 1.0) & ((u - 0.45) ** 2 + v * v > 0.55)
    if shape == "arrow":  # pointing right: a shaft and a head
        return ((av_ <= 0.3) & (u <= 0.1)) | ((u > 0.1) & (av_ <= (1 - u) / 0.9))
    return au >= av_ - 0.25  # hourglass on its side: a bow tie


def _texture(texture: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Brightness pattern in [0, 1], in object coordinates so it moves and scales with it."""
    if texture == "stripes":
        return (np.sin(np.pi * 4 * (u + v)) > 0).astype(np.float32)
    if texture == "checker":
        return ((np.floor(2 * (u + 1)) + np.floor(2 * (v + 1))) % 2).astype(np.float32)
    if texture == "rings":
        return (np.sin(np.pi * 5 * np.hypot(u, v)) > 0).astype(np.float32)
    if texture == "grid":
        return ((np.abs(np.mod(3 * (u + 1), 1) - 0.5) < 0.38) & (np.abs(np.mod(3 * (v + 1), 1) - 0.5) < 0.38)
                ).astype(np.float32)
    if texture == "gradient":
        return np.clip((u - v + 2) / 4, 0, 1).astype(np.float32)
    if texture == "dots":
        return (((np.mod(2.5 * (u + 1), 1) - 0.5) ** 2 + (np.mod(2.5 * (v + 1), 1) - 0.5) ** 2) > 0.09).astype(np.float32)
    return 0.75 + 0.25 * (1 - (u * u + v * v) / 2)  # solid, with a little shading


def background_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth colour-noise field (size, size, 3) float32 in about [0.2, 0.7]."""
    coarse = rng.uniform(-1, 1, (6, 6, 3)).astype(np.float32)
    idx = np.linspace(0, 5, size)
    i0 = np.minimum(idx.astype(int), 4)
    f = (idx - i0)[:, None]
    rows = coarse[i0] * (1 - f[..., None]) + coarse[i0 + 1] * f[..., None]
    field = rows[:, i0] * (1 - f[None, :, :]) + rows[:, i0 + 1] * f[None, :, :]
    base = rng.uniform(0.35, 0.55, 3).astype(np.float32)
    return np.clip(base + 0.12 * field, 0, 1)


def add_clutter(rng: np.random.Generator, background: np.ndarray, count: int) -> np.ndarray:
    """Static soft blobs of random colours (salient, silent, of no class) on a background."""
    size = background.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = background.copy()
    for _ in range(count):
        cx, cy = rng.uniform(0, 1, 2)
        r = rng.uniform(0.04, 0.12)
        weight = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))[..., None]
        out = out * (1 - weight) + rng.uniform(0, 1, 3).astype(np.float32) * weight
    return out.astype(np.float32)


def render_frames(boxes: np.ndarray, classes: Sequence[SynthClass], tints: np.ndarray,
                  background: np.ndarray, order: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Frames (n_t, H, W, 3) uint8 for boxes (n_obj, n_t, 4); ``order`` is the drawing order
    (last on top), ``tints`` (n_obj, 3) per-clip colour jitter."""
    size = background.shape[0]
    n_t = boxes.shape[1]
    frames = np.repeat(background[None], n_t, axis=0)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size  # pixel centres
    for k in order:
        cls = classes[k]
        colour = np.clip(np.asarray(cls.colour, np.float32) * tints[k], 0, 1)
        for t in range(n_t):
            x0, y0, x1, y1 = boxes[k, t]
            cols = np.flatnonzero((grid >= x0) & (grid < x1))
            rows = np.flatnonzero((grid >= y0) & (grid < y1))
            if len(cols) == 0 or len(rows) == 0:
                continue
            u = (grid[cols][None, :] - (x0 + x1) / 2) / ((x1 - x0) / 2)
            v = (grid[rows][:, None] - (y0 + y1) / 2) / ((y1 - y0) / 2)
            mask = _shape_mask(cls.shape, u, v)
            pix = colour * (0.45 + 0.55 * _texture(cls.texture, u, v))[..., None]
            patch = frames[t, rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
            patch[mask] = pix[mask]
    frames += 0.025 * rng.standard_normal(frames.shape, dtype=np.float32)  # sensor noise
    return (np.clip(frames, 0, 1) * 255 + 0.5).astype(np.uint8)


# -- sound ----------------------------------------------------------------------------------


def silent_gaps(rng: np.random.Generator, seconds: float) -> list[list[float]]:
    """Active intervals [[start_s, end_s], ...] on the 0.1 s frame grid: all of the clip, or
    (half of the clips) the clip minus one or two gaps of 10-30 % of its length."""
    steps = seconds_to_steps(seconds)
    active = np.ones(steps, bool)
    if rng.random() < 0.5:
        for _ in range(int(rng.integers(1, 3))):
            length = int(rng.integers(max(1, steps // 10), max(2, int(steps * 0.3)) + 1))
            start = int(rng.integers(0, max(1, steps - length + 1)))
            active[start: start + length] = False
    if not active.any():
        active[: steps // 2] = True
    edges = np.flatnonzero(np.diff(np.concatenate([[0], active.astype(int), [0]])))
    return [[round(steps_to_seconds(s), 3), round(steps_to_seconds(e), 3)] for s, e in zip(edges[::2], edges[1::2])]


def _band_noise(rng: np.random.Generator, n: int, band: tuple[float, float], rate: int) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / rate)
    spec[(freqs < band[0]) | (freqs > band[1])] = 0
    out = np.fft.irfft(spec, n)
    return out / (np.sqrt(np.mean(out**2)) + 1e-12)


def _family_envelope(family: str, t: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(pitch factor, amplitude envelope) per sample of a sound family: ``bursts`` gates the
    signature on and off (0.1-0.4 s on, 0.05-0.2 s off), ``chirp`` sweeps its pitch by +-0.15
    octave at 0.5-1.5 Hz, ``clicks`` turns it into a train of 15 ms decaying pulses at 6-14 Hz."""
    pitch, env = np.ones_like(t), np.ones_like(t)
    if family == "bursts":
        edges = np.cumsum(np.stack([rng.uniform(0.1, 0.4, 64), rng.uniform(0.05, 0.2, 64)], 1).ravel())
        env = (np.searchsorted(edges, t - rng.uniform(0, 0.3), side="right") % 2 == 0).astype(float)
    elif family == "chirp":
        pitch = 2.0 ** (0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * t + rng.uniform(0, 2 * np.pi)))
    elif family == "clicks":
        env = np.exp(-np.mod(t + rng.uniform(0, 1), 1 / rng.uniform(6, 14)) / 0.015)
        env /= np.sqrt(np.mean(env**2)) + 1e-12
    elif family != "steady":
        raise SynthError(f"unknown sound family {family!r}; choose from {', '.join(SOUND_FAMILIES)}")
    return pitch, env


def render_audio(cls: SynthClass, intervals: list[list[float]], seconds: float,
                 rng: np.random.Generator, sample_rate: int = SAMPLE_RATE, family: str = "steady") -> np.ndarray:
    """The clip's waveform (N,) float32: the source's signature inside ``intervals`` (with
    10 ms fades) over a faint white hiss everywhere; ``family`` (``SOUND_FAMILIES``) shapes the
    signature in time (the held-out profile's other kinds of sound)."""
    n = round(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    f0 = cls.f0 * rng.uniform(0.98, 1.02)
    pitch, env = _family_envelope(family, t, rng) if family != "steady" else (None, None)
    cycles = t if pitch is None else np.cumsum(pitch) / sample_rate  # f0 * cycles: the phase in turns
    top = 1.0 if pitch is None else float(pitch.max())
    tone = np.zeros(n)
    for k, amp in enumerate(cls.harmonics):
        if amp and (k + 1) * f0 * top < sample_rate / 2 - 200:
            tone += amp * np.sin(2 * np.pi * (k + 1) * f0 * cycles + rng.uniform(0, 2 * np.pi))
    tone /= np.sqrt(np.mean(tone**2)) + 1e-12
    if cls.noise_band is not None:
        tone += 0.6 * _band_noise(rng, n, cls.noise_band, sample_rate)
    if cls.am_rate:
        tone *= 0.55 + 0.45 * np.sin(2 * np.pi * cls.am_rate * t + rng.uniform(0, 2 * np.pi))
    if env is not None:
        tone *= env
    gate = np.zeros(n)
    for start, end in intervals:
        gate[int(start * sample_rate): int(end * sample_rate)] = 1.0
    fade = np.hanning(2 * int(0.01 * sample_rate) + 1)
    gate = np.convolve(gate, fade / fade.sum(), mode="same")
    level = SOURCE_LEVEL / 3 * 10 ** (rng.uniform(-4, 2) / 20)
    audio = level * tone * gate + BACKGROUND_NOISE * rng.standard_normal(n)
    return np.clip(audio, -1, 1).astype(np.float32)


def offscreen_bursts(rng: np.random.Generator, n: int, sample_rate: int, count: int) -> np.ndarray:
    """``count`` white-noise bursts of 0.2-0.6 s at random times, about 12 dB under a typical
    source: sound from nothing in view (the held-out profile's interference)."""
    out = np.zeros(n)
    for _ in range(count):
        length = int(rng.uniform(0.2, 0.6) * sample_rate)
        start = int(rng.integers(0, max(1, n - length)))
        burst = rng.standard_normal(min(length, n - start)) * np.hanning(min(length, n - start))
        out[start: start + len(burst)] += SOURCE_LEVEL / 12 * burst
    return out
