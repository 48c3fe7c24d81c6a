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
- ``tracks.json``: every clip's boxes of every object at each 10 fps frame (with its class and the
  texture it wears), and which sounds.
- ``intervals.json``: per clip, the ``[start_s, end_s]`` intervals where the source sounds.
- ``classes.csv``: ``label,count,split_counts`` rows in class-index order (like VGGSound's
  ``stat.csv``), ``synth.json``: the generation settings.

Everything is a function of ``seed`` and the clip index, so results do not depend on the
number of worker processes.

Profiles (``PROFILES``, ``soundloc synth --profile``) change what a real distribution shift
changes while keeping the class table: ``default`` is the benchmark above; ``shift`` has smaller
objects (4-30 % of the frame), two to four per clip, faster motion, a cluttered background of
static coloured blobs, source video at 24, 25 or 30 fps and 44.1 or 48 kHz stereo audio panned
toward one side; ``heldout`` (for final figures only, never for choosing settings) differs in
what ``shift`` keeps: box heights of 15-35 % of the frame, two or three objects, every object
in a texture no class wears (rings, grid, gradient), a third object drawn as a silent decoy of
a shape no class has (star, crescent, arrow) in another class's colour, the source's signature
sounding in bursts, chirps or clicks instead of steadily, up to two noise bursts from nothing in
view, 25 fps video and 44.1 kHz stereo. ``tracks.json`` names each clip's sound family
(``sound``). Train on one profile and evaluate on another to see whether the maps follow the
sound or what the model was tuned on. ``varied`` is training data whose look is not tied to
the class: every object wears any of the four training textures (solid, stripes, checker, dots)
whatever its class, at 4-45 % of the frame; shape, colour and sound still name the class.
``negatives`` is the default scene, but half of its
test clips have no visible sounding object (``NEGATIVE_KINDS``, in turn): the source out of
frame, occluded, pure noise, or silence. A negative has ``"bbox": []`` and a ``"negative"`` kind
in ``vggss.json`` and ``"visible": false`` with the same ``"negative"`` in ``tracks.json``
(``"sounding": null`` when no object sounds); its ``vggsound.csv`` label is the class heard
(off-screen, occluded) or the on-screen object 0's (noise, silence). Training clips always
show their source.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..config import FPS, SAMPLE_RATE, is_whole_steps, seconds_to_steps, steps_to_seconds
from ..fileio import atomic_write_bytes, check_outputs
from .annotations import clip_id
from .scenes import (  # noqa: F401  (SynthClass, SynthError, MAX_CLASSES: part of this module's API)
    AREA_RANGE, BACKGROUND_NOISE, HELDOUT_SHAPES, HELDOUT_TEXTURES, MAX_CLASSES, MAX_SPEED, SOURCE_LEVEL, TEXTURES,
    SynthClass,
    SynthError, add_clutter, background_field, offscreen_bursts, place_objects, silent_gaps, object_boxes,
    render_audio, render_frames, synth_classes,
)

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
    height_range: tuple[float, float] | None = None  # draw box heights (frame fractions), not areas
    textures: tuple[str, ...] = ()  # every object wears one of these instead of its class's texture
    decoy_shapes: tuple[str, ...] = ()  # a third object becomes a silent decoy of one of these shapes
    sounds: tuple[str, ...] = ("steady",)  # the source's sound family (scenes.SOUND_FAMILIES), per clip
    offscreen: int = 0  # up to this many noise bursts per clip from nothing in view
    negatives: tuple[str, ...] = ()  # NEGATIVE_KINDS given to ``negative_share`` of the test clips
    negative_share: float = 0.0


# Test clips whose sound has no visible source (the ``negatives`` profile; SLAVC's "extended"
# test sets): the sounding object out of frame (not drawn), occluded (drawn, then hidden behind
# an opaque panel over its whole path), pure noise (broadband, no object sounds) and silence
# (only the background hiss, below the runtime's audio gate).
NEGATIVE_KINDS = ("offscreen", "occluded", "noise", "silence")
OCCLUDER_GREY = 0.45  # the panel's level, with the sensor noise of every frame on top

PROFILES = {
    "default": SynthProfile("default"),
    "shift": SynthProfile("shift", area_range=(0.04, 0.30), objects=(2, 4), max_speed=0.15, clutter=8,
                          fps=(24, 25, 30), sample_rates=(44_100, 48_000), stereo=True),
    # For final figures only, never for choosing settings: what neither training nor `shift` shows.
    "heldout": SynthProfile("heldout", height_range=(0.15, 0.35), objects=(2, 3), max_speed=0.06, fps=(25,),
                            sample_rates=(44_100,), stereo=True, textures=HELDOUT_TEXTURES,
                            decoy_shapes=HELDOUT_SHAPES, sounds=("bursts", "chirp", "clicks"), offscreen=2),
    "negatives": SynthProfile("negatives", negatives=NEGATIVE_KINDS, negative_share=0.5),
    # Training data whose look varies apart from the class: any object wears any of the training
    # textures, at 4-45 % of the frame. Nothing of `heldout`'s own (textures, decoys, sounds).
    "varied": SynthProfile("varied", area_range=(0.04, 0.45), textures=TEXTURES),
}


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
    negative: str = ""  # a NEGATIVE_KINDS entry, or "" for a clip whose sounding object is in view


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
    wh, centre = place_objects(rng, n_obj, prof.area_range, prof.height_range)
    n_obj, obj_classes = len(wh), obj_classes[: len(wh)]
    looks = _looks(prof, [classes[c] for c in obj_classes], np.random.default_rng([job.seed, job.index, 3]))
    angle = rng.uniform(0, 2 * np.pi, n_obj)
    velocity = rng.uniform(0.005, prof.max_speed, n_obj)[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)
    n_steps = seconds_to_steps(job.seconds)
    track = np.round(object_boxes(wh, centre, velocity, steps_to_seconds(np.arange(n_steps))), 4)
    render_times = np.arange(round(job.seconds * fps)) / fps
    boxes = object_boxes(wh, centre, velocity, render_times)
    tints = rng.uniform(0.85, 1.1, (n_obj, 3)).astype(np.float32)
    background = add_clutter(extra, background_field(rng, job.size), prof.clutter)
    order = rng.permutation(n_obj)
    if job.negative == "offscreen":  # the source is not drawn: out of frame
        order = order[order != 0]
    frames = render_frames(boxes, looks, tints, background, order, rng)
    if job.negative == "occluded":
        frames = _occlude(frames, boxes[0], np.random.default_rng([job.seed, job.index, 3]))
    intervals = silent_gaps(rng, job.seconds)
    heard = np.random.default_rng([job.seed, job.index, 4])  # held-out sound choices
    family = str(heard.choice(prof.sounds))
    audio = render_audio(classes[job.label], intervals, job.seconds, rng, rate, family)
    if prof.offscreen:
        count = int(heard.integers(0, prof.offscreen + 1))
        audio = np.clip(audio + offscreen_bursts(heard, len(audio), rate, count), -1, 1).astype(np.float32)
    if job.negative in ("noise", "silence"):
        audio, intervals = _no_source_audio(job, intervals, rate)
    if prof.stereo:  # panned toward one side, each channel with its own hiss
        gains = np.array([[0.4], [1.0]])[:: 1 if extra.random() < 0.5 else -1]
        audio = np.clip(gains * audio + BACKGROUND_NOISE * extra.standard_normal((2, len(audio))), -1, 1)
        audio = audio.astype(np.float32)
    from ..encode import write_mp4  # PyAV: imported here to keep ``import soundloc.data`` light

    cid = clip_id(job.ytid, job.start)
    write_mp4(Path(job.videos_dir) / f"{cid}.mp4", frames, fps, audio, rate)
    return {
        "id": cid, "index": job.index, "label": job.label, "intervals": intervals,
        "source_fps": fps, "source_sample_rate": rate, "sound": family, "negative": job.negative,
        "objects": [{"class": look.name, "texture": look.texture, "boxes": track[k].tolist()} for k, look in enumerate(looks)],
    }


def _looks(prof: SynthProfile, looks: list[SynthClass], rng: np.random.Generator) -> list[SynthClass]:
    """How each object is drawn: its class, with a profile's texture, and (three objects and
    a profile with decoys) the last one a silent decoy of a shape no class has, in its colour."""
    looks = [replace(c, texture=str(rng.choice(prof.textures))) if prof.textures else c for c in looks]
    if prof.decoy_shapes and len(looks) >= 3:
        shape = str(rng.choice(prof.decoy_shapes))
        looks[-1] = replace(looks[-1], shape=shape, name=f"decoy {shape}")
    return looks


def _occlude(frames: np.ndarray, track: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An opaque grey panel over the union of the source's boxes (``track`` (n_t, 4)): it
    sounds behind it the whole clip. The panel carries the same sensor noise as the frame."""
    size = frames.shape[1]
    x0, y0 = (int(np.floor(track[:, k].min() * size)) for k in (0, 1))
    x1, y1 = (int(np.ceil(track[:, k].max() * size)) for k in (2, 3))
    panel = OCCLUDER_GREY + 0.025 * rng.standard_normal((frames.shape[0], y1 - y0, x1 - x0, 3))
    out = frames.copy()
    out[:, y0:y1, x0:x1] = (np.clip(panel, 0, 1) * 255 + 0.5).astype(np.uint8)
    return out


def _no_source_audio(job: _ClipJob, intervals: list[list[float]], rate: int) -> tuple[np.ndarray, list]:
    """A noise clip's broadband noise (no object sounds; over the same intervals) or a silent
    clip's background hiss alone; the intervals where a source sounds: none."""
    rng = np.random.default_rng([job.seed, job.index, 4])
    n = round(job.seconds * rate)
    audio = BACKGROUND_NOISE * rng.standard_normal(n)
    if job.negative == "noise":
        gate = np.zeros(n)
        for start, end in intervals:
            gate[int(start * rate): int(end * rate)] = 1.0
        level = SOURCE_LEVEL / 3 * 10 ** (rng.uniform(-4, 2) / 20)
        audio += level * gate * rng.standard_normal(n)
    return np.clip(audio, -1, 1).astype(np.float32), []


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
    negatives = _negatives(PROFILES[profile], sorted(test), seed)
    jobs = [_ClipJob(i, seed, f"syn{seed % 1000:03d}{i:05d}", int(starts[i]), int(labels[i]), seconds,
                     size, fps, num_classes, str(out_dir / "videos"), profile, negatives.get(i, ""))
            for i in range(num_clips)]
    return jobs, ["test" if i in test else "train" for i in range(num_clips)]


def _negatives(profile: SynthProfile, test: list[int], seed: int) -> dict[int, str]:
    """Which test clips are negatives, of which kind: ``negative_share`` of them, the kinds in
    turn (balanced). Training clips always show their source."""
    if not profile.negatives:
        return {}
    chosen = np.random.default_rng([seed, 3]).permutation(test)[: round(profile.negative_share * len(test))]
    return {int(i): profile.negatives[k % len(profile.negatives)] for k, i in enumerate(sorted(chosen))}


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
        negative = r.get("negative", "")
        if split == "test":  # a negative has no visible sounding object: no box (SLAVC's extended sets)
            boxes.append({"file": r["id"], "class": name, "bbox": [] if negative else [r["objects"][0]["boxes"][mid]],
                          **({"negative": negative} if negative else {})})
        tracks[r["id"]] = {"fps": FPS, "label": name, "sounding": None if negative in ("noise", "silence") else 0,
                           "objects": r["objects"], "source_fps": r["source_fps"],
                           "source_sample_rate": r["source_sample_rate"], "sound": r["sound"],
                           "visible": not negative, "negative": negative or None}
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
        num_classes=num_classes, num_with_silence=sum(len(v) != 1 or v[0] != [0.0, seconds] for v in intervals.values()),
        seconds_elapsed=elapsed, csv_path=paths["csv"], boxes_path=paths["boxes"], tracks_path=paths["tracks"],
        intervals_path=paths["intervals"], classes_path=paths["classes"],
    )
