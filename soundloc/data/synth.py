"""A synthetic audio-visual benchmark in the VGGSound layout, with exact ground truth.

Each clip shows two or three objects of different classes moving slowly over a textured,
noisy background; exactly one of them sounds and its class is the clip's label. A class is
both an appearance (shape + colour + texture) and a sound signature (fundamental frequency,
harmonic pattern, amplitude-modulation rate, optional noise band), so the label can be
learnt from either modality and only the audio says *which* object on screen is the source.

Objects are as large as VGG-SS boxes (median 25 % of the frame, quartiles 12-46 %): every
object's box covers 10-45 % of the frame, so a perfect map can reach cIoU >= 0.5 under the
median-threshold protocol (docs/design.md §2). Every object draws its size from the same range, so
"the biggest object sounds" is no shortcut. About half of the clips have silent gaps where the
source is quiet and only a faint background hiss remains.

Outputs under ``out_dir``:

- ``videos/<ytid>_<start:06d>.mp4``: H.264 (yuv420p) + AAC mono 16 kHz, real files.
- ``vggsound.csv``: headerless ``ytid,start_seconds,label,split`` rows (split ``train`` or
  ``test``; class names with commas are quoted, as in the real file).
- ``vggss.json``: VGG-SS format for the ``test`` clips, ``[{"file", "class", "bbox":
  [[xmin, ymin, xmax, ymax]]}]``, normalised, the sounding object's box at the middle frame
  (10 fps frame index ``T // 2``, t = 5.0 s for a 10 s clip).
- ``tracks.json``: every clip's boxes of every object at each 10 fps frame, and which sounds.
- ``intervals.json``: per clip, the ``[start_s, end_s]`` intervals where the source sounds.
- ``classes.csv``: ``label,count,split_counts`` rows in class-index order (like VGGSound's
  ``stat.csv``), ``synth.json``: the generation settings.

Everything is a function of ``seed`` and the clip index, so results do not depend on the
number of worker processes.

Profiles (``PROFILES``, ``soundloc synth --profile``) change what a real distribution shift
changes while keeping the class table: ``default`` is the benchmark above; ``shift`` has smaller
objects (4-30 % of the frame), two to four per clip, faster motion, a cluttered background of
static coloured blobs, source video at 24, 25 or 30 fps and 44.1 or 48 kHz stereo audio panned
toward one side. Train on one profile and evaluate on another to see whether the maps follow
the sound or what the model was tuned on.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..config import FPS, SAMPLE_RATE, is_whole_steps, seconds_to_steps, steps_to_seconds
from ..fileio import atomic_write_bytes, check_outputs
from ..errors import SoundlocError
from .annotations import clip_id

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
SOUND_WORDS = ("hum", "buzz", "whistle", "drone", "chirp", "beep", "rumble", "trill")
MAX_CLASSES = len(SHAPES) * len(COLOURS)
AREA_RANGE = (0.10, 0.45)  # fraction of the frame covered by an object's box
MAX_SPEED = 0.04  # frame widths per second: objects drift by at most 0.4 frame in 10 s
BACKGROUND_NOISE = 0.004  # RMS of the background hiss, also heard in silent gaps
SOURCE_LEVEL = 0.25  # peak-ish amplitude of the sounding object's signal


@dataclass(frozen=True)
class SynthProfile:
    """What kind of clips to render (see the module docstring). ``fps`` and ``sample_rates``:
    per-clip choices of the source rates (empty ``fps``: the ``fps`` argument)."""

    name: str
    area_range: tuple[float, float] = AREA_RANGE
    objects: tuple[int, int] = (2, 3)
    max_speed: float = MAX_SPEED
    clutter: int = 0  # static coloured blobs in the background
    fps: tuple[int, ...] = ()
    sample_rates: tuple[int, ...] = (SAMPLE_RATE,)
    stereo: bool = False


PROFILES = {
    "default": SynthProfile("default"),
    "shift": SynthProfile("shift", area_range=(0.04, 0.30), objects=(2, 4), max_speed=0.15, clutter=8,
                          fps=(24, 25, 30), sample_rates=(44_100, 48_000), stereo=True),
}


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


@dataclass(frozen=True)
class SynthSummary:
    """What ``make_synthetic_dataset`` wrote and how long it took."""

    out_dir: Path
    num_clips: int
    num_train: int
    num_test: int
    num_classes: int
    num_with_silence: int
    seconds_elapsed: float
    csv_path: Path
    boxes_path: Path
    tracks_path: Path
    intervals_path: Path
    classes_path: Path


@dataclass(frozen=True)
class _ClipJob:
    index: int
    seed: int
    ytid: str
    start: int
    label: int
    seconds: float
    size: int
    fps: int
    num_classes: int
    videos_dir: str
    profile: str = "default"


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


def _place_objects(rng: np.random.Generator, n: int, area_range: tuple[float, float] = AREA_RANGE
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Sizes (m, 2) and start centres (m, 2) in frame units of m <= n objects whose boxes
    overlap little; object 0 is the source.

    Every area is drawn once, log-uniform in ``area_range`` (aspect ratio 0.75-1.33), and only
    positions are re-drawn until no box is more than 25 % covered: re-drawing or shrinking
    sizes would bias them small and make "the biggest object sounds" a shortcut. A layout too
    crowded to place drops its last distractor instead (down to two objects).
    """
    area = np.exp(rng.uniform(np.log(area_range[0]), np.log(area_range[1]), n))
    aspect = np.exp(rng.uniform(np.log(0.75), np.log(1.33), n))
    wh = np.stack([np.sqrt(area * aspect), np.sqrt(area / aspect)], axis=1)
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
    return au >= av_ - 0.25  # hourglass on its side: a bow tie


def _texture(texture: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Brightness pattern in [0, 1], in object coordinates so it moves and scales with it."""
    if texture == "stripes":
        return (np.sin(np.pi * 4 * (u + v)) > 0).astype(np.float32)
    if texture == "checker":
        return ((np.floor(2 * (u + 1)) + np.floor(2 * (v + 1))) % 2).astype(np.float32)
    if texture == "dots":
        return (((np.mod(2.5 * (u + 1), 1) - 0.5) ** 2 + (np.mod(2.5 * (v + 1), 1) - 0.5) ** 2) > 0.09).astype(np.float32)
    return 0.75 + 0.25 * (1 - (u * u + v * v) / 2)  # solid, with a little shading


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth colour-noise field (size, size, 3) float32 in about [0.2, 0.7]."""
    coarse = rng.uniform(-1, 1, (6, 6, 3)).astype(np.float32)
    idx = np.linspace(0, 5, size)
    i0 = np.minimum(idx.astype(int), 4)
    f = (idx - i0)[:, None]
    rows = coarse[i0] * (1 - f[..., None]) + coarse[i0 + 1] * f[..., None]
    field = rows[:, i0] * (1 - f[None, :, :]) + rows[:, i0 + 1] * f[None, :, :]
    base = rng.uniform(0.35, 0.55, 3).astype(np.float32)
    return np.clip(base + 0.12 * field, 0, 1)


def _add_clutter(rng: np.random.Generator, background: np.ndarray, count: int) -> np.ndarray:
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


def _silent_gaps(rng: np.random.Generator, seconds: float) -> list[list[float]]:
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


def render_audio(cls: SynthClass, intervals: list[list[float]], seconds: float,
                 rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The clip's waveform (N,) float32: the source's signature inside ``intervals`` (with
    10 ms fades) over a faint white hiss everywhere."""
    n = round(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    f0 = cls.f0 * rng.uniform(0.98, 1.02)
    tone = np.zeros(n)
    for k, amp in enumerate(cls.harmonics):
        if amp and (k + 1) * f0 < sample_rate / 2 - 200:
            tone += amp * np.sin(2 * np.pi * (k + 1) * f0 * t + rng.uniform(0, 2 * np.pi))
    tone /= np.sqrt(np.mean(tone**2)) + 1e-12
    if cls.noise_band is not None:
        tone += 0.6 * _band_noise(rng, n, cls.noise_band, sample_rate)
    if cls.am_rate:
        tone *= 0.55 + 0.45 * np.sin(2 * np.pi * cls.am_rate * t + rng.uniform(0, 2 * np.pi))
    gate = np.zeros(n)
    for start, end in intervals:
        gate[int(start * sample_rate): int(end * sample_rate)] = 1.0
    fade = np.hanning(2 * int(0.01 * sample_rate) + 1)
    gate = np.convolve(gate, fade / fade.sum(), mode="same")
    level = SOURCE_LEVEL / 3 * 10 ** (rng.uniform(-4, 2) / 20)
    audio = level * tone * gate + BACKGROUND_NOISE * rng.standard_normal(n)
    return np.clip(audio, -1, 1).astype(np.float32)


# -- files ----------------------------------------------------------------------------------


def _make_clip(job: _ClipJob) -> dict:
    """Plan, render and write one clip; returns its ground truth (boxes rounded to 1e-4)."""
    rng = np.random.default_rng([job.seed, job.index, 1])
    prof = PROFILES[job.profile]
    extra = np.random.default_rng([job.seed, job.index, 2])  # profile choices; the default stream is untouched
    fps = int(extra.choice(prof.fps)) if prof.fps else job.fps
    rate = int(extra.choice(prof.sample_rates))
    classes = synth_classes(job.num_classes)
    n_obj = int(rng.integers(prof.objects[0], min(prof.objects[1], job.num_classes) + 1))
    others = rng.permutation([c for c in range(job.num_classes) if c != job.label])[: n_obj - 1]
    obj_classes = [job.label, *map(int, others)]
    wh, centre = _place_objects(rng, n_obj, prof.area_range)
    n_obj, obj_classes = len(wh), obj_classes[: len(wh)]
    angle = rng.uniform(0, 2 * np.pi, n_obj)
    velocity = rng.uniform(0.005, prof.max_speed, n_obj)[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)
    n_steps = seconds_to_steps(job.seconds)
    track = np.round(object_boxes(wh, centre, velocity, steps_to_seconds(np.arange(n_steps))), 4)
    render_times = np.arange(round(job.seconds * fps)) / fps
    boxes = object_boxes(wh, centre, velocity, render_times)
    tints = rng.uniform(0.85, 1.1, (n_obj, 3)).astype(np.float32)
    background = _add_clutter(extra, _background(rng, job.size), prof.clutter)
    frames = render_frames(boxes, [classes[c] for c in obj_classes], tints, background, rng.permutation(n_obj), rng)
    intervals = _silent_gaps(rng, job.seconds)
    audio = render_audio(classes[job.label], intervals, job.seconds, rng, rate)
    if prof.stereo:  # panned toward one side, each channel with its own hiss
        gains = np.array([[0.4], [1.0]])[:: 1 if extra.random() < 0.5 else -1]
        audio = np.clip(gains * audio + BACKGROUND_NOISE * extra.standard_normal((2, len(audio))), -1, 1)
        audio = audio.astype(np.float32)
    from ..media import write_mp4  # PyAV: imported here to keep ``import soundloc.data`` light

    cid = clip_id(job.ytid, job.start)
    write_mp4(Path(job.videos_dir) / f"{cid}.mp4", frames, fps, audio, rate)
    return {
        "id": cid, "index": job.index, "label": job.label, "intervals": intervals,
        "source_fps": fps, "source_sample_rate": rate,
        "objects": [{"class": classes[c].name, "boxes": track[k].tolist()} for k, c in enumerate(obj_classes)],
    }


def _write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _plan_jobs(out_dir: Path, num_clips: int, seed: int, seconds: float, num_classes: int,
               val_fraction: float, size: int, fps: int, profile: str = "default"
               ) -> tuple[list[_ClipJob], list[str]]:
    """Labels (balanced over classes), ids, start times and splits of all clips."""
    rng = np.random.default_rng([seed, 0])
    labels = rng.permutation(np.arange(num_clips) % num_classes)
    num_test = round(val_fraction * num_clips)
    if val_fraction > 0 and num_clips >= 2:
        num_test = min(max(num_test, 1), num_clips - 1)
    test = set(rng.permutation(num_clips)[:num_test].tolist())
    starts = rng.integers(0, 300, num_clips)
    jobs = [_ClipJob(i, seed, f"syn{seed % 1000:03d}{i:05d}", int(starts[i]), int(labels[i]), seconds,
                     size, fps, num_classes, str(out_dir / "videos"), profile) for i in range(num_clips)]
    return jobs, ["test" if i in test else "train" for i in range(num_clips)]


def _check_args(num_clips: int, seconds: float, num_classes: int, val_fraction: float, size: int,
                fps: int, profile: str = "default") -> None:
    if profile not in PROFILES:
        raise SynthError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    if num_clips < 1:
        raise SynthError(f"num_clips must be at least 1, not {num_clips}")
    if not 1.0 <= seconds <= 600.0:
        raise SynthError(f"seconds must be between 1 and 600, not {seconds}")
    if not is_whole_steps(seconds):
        raise SynthError(f"seconds must be a multiple of 0.1 (one 10 fps frame), not {seconds}")
    if not 0.0 <= val_fraction < 1.0:
        raise SynthError(f"val_fraction must be in [0, 1), not {val_fraction}")
    if size < 32 or size % 2:
        raise SynthError(f"size must be an even number of pixels >= 32, not {size}")
    if fps < 1 or fps % FPS:
        raise SynthError(f"fps must be a multiple of {FPS}, not {fps}")
    synth_classes(num_classes)


def _check_target(out: Path, force: bool) -> None:
    """Refuse to mix synthetic clips and annotations into a folder that already holds files."""
    check_outputs([], dirs=[out])
    if not force and out.is_dir() and any(out.iterdir()):
        raise SynthError(f"{out} is not empty (it may hold a real dataset whose vggsound.csv and videos/ "
                         "this would overwrite); choose a new folder, or pass --force to write into it")


def make_synthetic_dataset(out_dir: str | os.PathLike, num_clips: int = 400, seed: int = 0,
                           seconds: float = 10.0, num_classes: int = 10, val_fraction: float = 0.2,
                           workers: int | None = None, size: int = 160, fps: int = FPS,
                           progress: Callable[[int, int], None] | None = None,
                           force: bool = False, profile: str = "default") -> SynthSummary:
    """Render ``num_clips`` clips into ``out_dir`` (layout in the module docstring).

    ``size``: frame width = height in pixels; ``fps``: video rate (a multiple of 10, so the
    10 fps tracks are exact frames; a profile with its own rates overrides it); ``profile``: a
    name in ``PROFILES``; ``workers``: processes (default: all cores);
    ``progress(done, total)`` is called after each clip. A non-empty ``out_dir`` (a real
    dataset's ``vggsound.csv`` and ``videos/``) is refused unless ``force``, which replaces
    files of the same names and leaves the others; the annotation files are written last, so a crash leaves no half dataset that
    looks complete. With ``workers > 1`` the pool uses the ``spawn`` start method (safe when
    the caller has torch loaded), so a calling script needs the usual
    ``if __name__ == "__main__":`` guard.
    """
    _check_args(num_clips, seconds, num_classes, val_fraction, size, fps, profile)
    started = time.perf_counter()
    out = Path(out_dir)
    _check_target(out, force)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    jobs, splits = _plan_jobs(out, num_clips, seed, seconds, num_classes, val_fraction, size, fps, profile)
    workers = max(1, min(workers or os.cpu_count() or 1, num_clips))
    results: list[dict] = []
    if workers == 1:
        for job in jobs:
            results.append(_make_clip(job))
            if progress:
                progress(len(results), num_clips)
    else:
        # spawn, not fork: the caller may hold torch or other threaded libraries.
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for result in pool.imap_unordered(_make_clip, jobs):
                results.append(result)
                if progress:
                    progress(len(results), num_clips)
    results.sort(key=lambda r: r["index"])
    return _write_annotations(out, jobs, splits, results, seed, seconds, size, fps, num_classes,
                              time.perf_counter() - started)


def _write_annotations(out: Path, jobs: list[_ClipJob], splits: list[str], results: list[dict],
                       seed: int, seconds: float, size: int, fps: int, num_classes: int,
                       elapsed: float) -> SynthSummary:
    classes = synth_classes(num_classes)
    mid = seconds_to_steps(seconds) // 2
    rows, boxes, tracks, intervals = io.StringIO(), [], {}, {}
    writer = csv.writer(rows, lineterminator="\n")
    for job, split, r in zip(jobs, splits, results):
        name = classes[job.label].name
        writer.writerow([job.ytid, job.start, name, split])
        if split == "test":
            boxes.append({"file": r["id"], "class": name, "bbox": [r["objects"][0]["boxes"][mid]]})
        tracks[r["id"]] = {"fps": FPS, "label": name, "sounding": 0, "objects": r["objects"],
                           "source_fps": r["source_fps"], "source_sample_rate": r["source_sample_rate"]}
        intervals[r["id"]] = r["intervals"]
    counts = np.bincount([j.label for j in jobs], minlength=num_classes)
    stat = io.StringIO()
    csv.writer(stat, lineterminator="\n").writerows([c.name, int(n)] for c, n in zip(classes, counts))
    paths = {k: out / f for k, f in [("csv", "vggsound.csv"), ("boxes", "vggss.json"), ("tracks", "tracks.json"),
                                     ("intervals", "intervals.json"), ("classes", "classes.csv")]}
    settings = {"seed": seed, "num_clips": len(jobs), "seconds": seconds, "size": size, "fps": fps,
                "profile": asdict(PROFILES[jobs[0].profile]) if jobs else None,
                "sample_rate": SAMPLE_RATE, "middle_frame": mid, "classes": [asdict(c) for c in classes]}
    _write_text(out / "synth.json", json.dumps(settings, indent=1))
    _write_text(paths["tracks"], json.dumps(tracks))
    _write_text(paths["intervals"], json.dumps(intervals))
    _write_text(paths["boxes"], json.dumps(boxes))
    _write_text(paths["classes"], stat.getvalue())
    _write_text(paths["csv"], rows.getvalue())
    return SynthSummary(
        out_dir=out, num_clips=len(jobs), num_train=splits.count("train"), num_test=splits.count("test"),
        num_classes=num_classes, num_with_silence=sum(len(v) > 1 or v[0] != [0.0, seconds] for v in intervals.values()),
        seconds_elapsed=elapsed, csv_path=paths["csv"], boxes_path=paths["boxes"], tracks_path=paths["tracks"],
        intervals_path=paths["intervals"], classes_path=paths["classes"],
    )
