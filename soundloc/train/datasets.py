"""Training datasets: VGGSound-format collections and simple ``path,label`` lists -> model inputs.

An item is what the classifier eats (docs/design.md §1): ``video`` (3, T, 112, 112) float32 normalised
with torchvision's video mean/std, ``mel`` (1, 10T, 80) float32 from ``soundloc.mel.log_mel``
(the one log-mel), ``label`` int and ``id`` str. Decoding is ``soundloc.media.load_clip``:
10 fps by timestamps from any source rate, the whole frame resized, audio resampled to
16 kHz mono, padded or cut to ``config.clip_seconds``.

A training run reads many downloaded videos and some are always broken. A broken file never
ends an epoch: ``__getitem__`` returns a ``SkippedClip`` marker with a one-line reason, ``collate``
drops markers and carries ``(id, reason)`` pairs in the batch (so they cross DataLoader worker
processes with the batch), and the training loop feeds each batch to a ``SkipReport`` that it
prints at the end of the epoch.

File names from annotation files never leave the dataset root: absolute paths and ``..``
components are refused when the CSV is read (issue 7). Symlinks inside the root are followed
on purpose: videos on another disk linked into the root are a common layout.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from ..config import FPS, MELS_PER_STEP, SAMPLE_RATE, VIDEO_FOLDERS, Config, is_whole_steps, seconds_to_steps
from ..data.annotations import (AnnotationError, find_video, read_path_label_csv, read_vggsound_csv, safe_join,
                                video_folder)
from ..media import Clip, MediaError, load_clip
from ..mel import log_mel
from ..preprocess import normalise_frames
from ..errors import SoundlocError


Row = TypeVar("Row")


class DatasetError(SoundlocError, ValueError):
    """An annotation file or dataset folder that cannot be used; the message is one line."""


@dataclass(frozen=True)
class ClipRecord:
    """One annotated clip: ``path`` to its video file and class index ``label``."""

    clip_id: str
    path: Path
    label: int


@dataclass(frozen=True)
class SkippedClip:
    """The marker ``__getitem__`` returns for a clip that could not be loaded."""

    clip_id: str
    reason: str


def decode_record(rec: ClipRecord, config: Config, seconds: float | None = None) -> Clip | SkippedClip:
    """The clip of ``rec`` on the model's grid (``seconds`` of it, or all), or the one-line
    reason it cannot be used: every training dataset skips a bad file through here."""
    try:
        return load_clip(rec.path, seconds=seconds, fps=FPS, size=config.image_size, sample_rate=SAMPLE_RATE,
                         require_audio=True)
    except MediaError as e:
        return SkippedClip(rec.clip_id, str(e))
    except (OSError, ValueError, RuntimeError) as e:  # av/numpy failures media.py did not foresee
        return SkippedClip(rec.clip_id, f"{rec.path}: cannot decode ({type(e).__name__}: {' '.join(str(e).split())})")


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation. ``flip``: mirror the frames left-right with probability 0.5
    (sound sources have no handedness); ``crop_seconds``: a random window of this length
    (a multiple of 0.1 s, at most the clip length) instead of the whole clip; ``zoom`` < 1:
    shrink the frames by a random factor in [zoom, 1] onto a canvas of their mean colour at a
    random place, so the model also sees objects smaller than the training data's (cameras
    see sources from further away than a dataset's framing)."""

    flip: bool = False
    crop_seconds: float | None = None
    zoom: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.zoom <= 1:
            raise DatasetError(f"zoom must be in (0, 1], not {self.zoom}")


def zoom_out(frames: np.ndarray, scale: float, top: float, left: float) -> np.ndarray:
    """(T, H, W, 3) uint8 frames shrunk by ``scale`` and placed on a canvas of their mean
    colour, the free space split ``top``/``left`` (fractions in [0, 1]) above and left."""
    t, h, w, _ = frames.shape
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    small = torch.nn.functional.interpolate(x, size=(sh, sw), mode="bilinear", antialias=True, align_corners=False)
    out = x.mean(dim=(0, 2, 3), keepdim=True).expand(t, 3, h, w).clone()
    y0, x0 = round(top * (h - sh)), round(left * (w - sw))
    out[:, :, y0:y0 + sh, x0:x0 + sw] = small
    return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def safe_relative(root: Path, name: str, where: str) -> Path:
    """``root / name`` for a file name read from an annotation file (``annotations.safe_join``,
    symlinks followed); an escaping name raises ``DatasetError`` naming ``where``."""
    try:
        return safe_join(root, name, follow_links=True)
    except AnnotationError as e:
        raise DatasetError(f"{where}: {e}") from None


def _read_csv(read: Callable[[Path], list[Row]], csv_file: Path) -> list[Row]:
    """``read(csv_file)`` (an ``annotations`` reader) with its one-line errors as DatasetError."""
    if not csv_file.is_file():
        raise DatasetError(f"{csv_file}: annotation CSV not found")
    try:
        return read(csv_file)
    except AnnotationError as e:
        raise DatasetError(str(e)) from None


def _class_index(labels: Sequence[str], class_names: Sequence[str] | None, config: Config,
                 where: Path) -> tuple[tuple[str, ...], dict[str, int]]:
    """Class names (given, from the config, or the sorted labels of the whole CSV, so every
    split of one CSV gets the same indices) and the name -> index map."""
    names = tuple(class_names or config.class_names or sorted(set(labels)))
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise DatasetError(f"{where}: {len(unknown)} labels not among the {len(names)} class names, e.g. {unknown[0]!r}")
    return names, index


class ClipDataset(torch.utils.data.Dataset):
    """Decodes ``records`` into model inputs (see the module docstring); the base of the
    VGGSound and path-list datasets."""

    def __init__(self, records: Sequence[ClipRecord], class_names: Sequence[str], config: Config,
                 augment: Augment | None = None) -> None:
        self.records = list(records)
        self.class_names = tuple(class_names)
        self.config = config
        self.augment = augment or Augment()
        self._crop_steps = self._check_crop(self.augment.crop_seconds)
        self._decoded: dict[int, tuple[np.ndarray, np.ndarray]] | None = None

    def keep_decoded(self) -> None:
        """Keep every clip's decoded frames and log-mel in memory after its first load, so
        later epochs skip decoding (for collections that fit in memory: about 1.5 MB per
        10 s clip at 112x112, in each DataLoader worker process)."""
        self._decoded = {}

    def _check_crop(self, seconds: float | None) -> int | None:
        if seconds is None:
            return None
        steps = seconds_to_steps(seconds)
        if not is_whole_steps(seconds) or not 1 <= steps <= self.config.clip_steps:
            raise DatasetError(f"crop_seconds must be a multiple of 0.1 s in (0, {self.config.clip_seconds}], not {seconds}")
        return steps

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[int]:
        """Class index of every clip (for balanced samplers and class counts)."""
        return [r.label for r in self.records]

    def _decode(self, i: int) -> tuple[np.ndarray, np.ndarray] | SkippedClip:
        if self._decoded is not None and i in self._decoded:
            return self._decoded[i]
        clip = decode_record(self.records[i], self.config, seconds=self.config.clip_seconds)
        if isinstance(clip, SkippedClip):
            return clip
        decoded = clip.frames, log_mel(clip.audio)
        if self._decoded is not None:
            self._decoded[i] = decoded
        return decoded

    def __getitem__(self, i: int) -> dict[str, Any] | SkippedClip:
        rec = self.records[i]
        decoded = self._decode(i)
        if isinstance(decoded, SkippedClip):
            return decoded
        frames, mel = decoded
        if self._crop_steps is not None:
            s = int(torch.randint(0, len(frames) - self._crop_steps + 1, ()).item())
            frames = frames[s: s + self._crop_steps]
            mel = mel[s * MELS_PER_STEP: (s + self._crop_steps) * MELS_PER_STEP]
        if self.augment.flip and torch.rand(()).item() < 0.5:
            frames = frames[:, :, ::-1]
        if self.augment.zoom < 1:
            scale, top, left = torch.empty(3).uniform_().tolist()
            frames = zoom_out(frames, self.augment.zoom + (1 - self.augment.zoom) * scale, top, left)
        return {"video": torch.from_numpy(normalise_frames(frames)), "mel": torch.from_numpy(np.ascontiguousarray(mel))[None],
                "label": rec.label, "id": rec.clip_id}


class VGGSoundDataset(ClipDataset):
    """A VGGSound-format collection: a headerless CSV ``ytid,start_seconds,label,split``
    (default ``<root>/vggsound.csv``) and videos ``<root>/videos/<ytid>_<start:06d>.mp4``
    (or directly in ``root``). ``split=None`` takes every row."""

    def __init__(self, root: str | os.PathLike, csv_path: str | os.PathLike | None = None, split: str | None = "train",
                 *, config: Config, class_names: Sequence[str] | None = None, augment: Augment | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"{root}: dataset folder not found")
        csv_file = Path(csv_path) if csv_path is not None else root / "vggsound.csv"
        rows = _read_csv(read_vggsound_csv, csv_file)
        if not rows:
            raise DatasetError(f"{csv_file}: no rows")
        names, index = _class_index([r.label for r in rows], class_names, config, csv_file)
        fallback = video_folder(root)  # where a missing clip is reported (as skipped, when loaded)
        try:
            records = [ClipRecord(r.id, find_video(root, r.id, follow_links=True) or fallback / f"{r.id}.mp4",
                                  index[r.label]) for r in rows if split is None or r.split == split]
        except AnnotationError as e:
            raise DatasetError(f"{csv_file}: {e}") from None
        if not records:
            raise DatasetError(f"{csv_file}: no rows in split {split!r}")
        _require_some_found(records, csv_file, [root / name for name in VIDEO_FOLDERS] + [root])
        super().__init__(records, names, config, augment)
        self.root = root


def _require_some_found(records: Sequence[ClipRecord], csv_file: Path, looked: Sequence[Path]) -> None:
    """Refuse a collection of which not one listed clip exists (a wrong folder, an unfinished
    download): training would otherwise run on nothing. Stops at the first clip found."""
    if not any(r.path.exists() for r in records):
        where = ", ".join(f"{p}/" for p in looked)
        raise DatasetError(f"{csv_file}: none of its {len(records)} clips found (looked in {where}; "
                           f"e.g. {records[0].path.name})")


class PathListDataset(ClipDataset):
    """Any collection as a CSV of ``path,label`` rows (an optional third column ``split``;
    an optional header row ``path,label[,split]``), paths relative to ``root`` (default: the
    CSV's folder). VGGSound's own ``test.csv`` (``<ytid>_<start>.mp4,label``) is such a file."""

    def __init__(self, csv_path: str | os.PathLike, root: str | os.PathLike | None = None, split: str | None = None,
                 *, config: Config, class_names: Sequence[str] | None = None, augment: Augment | None = None) -> None:
        csv_file = Path(csv_path)
        base = Path(root) if root is not None else csv_file.parent
        rows = _read_csv(read_path_label_csv, csv_file)
        parsed = []
        for r in rows:
            if split is not None and r.split is None:
                raise DatasetError(f"{csv_file}:{r.line}: expected path,label,split, got 2 columns")
            parsed.append((r.id, safe_relative(base, r.path, f"{csv_file}:{r.line}"), r.label, r.split))
        names, index = _class_index([p[2] for p in parsed], class_names, config, csv_file)
        records = [ClipRecord(cid, p, index[label]) for cid, p, label, s in parsed if split is None or s == split]
        if not records:
            raise DatasetError(f"{csv_file}: no rows" + (f" in split {split!r}" if split else ""))
        _require_some_found(records, csv_file, [base])
        super().__init__(records, names, config, augment)
        self.root = base


def collate(items: Sequence[dict[str, Any] | SkippedClip]) -> dict[str, Any]:
    """Stack loaded items into a batch and carry the skipped ones as ``(id, reason)`` pairs.

    Returns ``video`` (B, 3, T, H, W), ``mel`` (B, 1, 10T, 80), ``label`` (B,) int64, ``id``
    list[str], ``skipped`` list[(id, reason)]. B may be 0 when every item was skipped: then
    ``video`` and ``mel`` are empty (0,)-shaped tensors and the loop should move on.
    """
    good = [it for it in items if not isinstance(it, SkippedClip)]
    skipped = [(it.clip_id, it.reason) for it in items if isinstance(it, SkippedClip)]
    if not good:
        empty = torch.zeros(0)
        return {"video": empty, "mel": empty, "label": torch.zeros(0, dtype=torch.long), "id": [], "skipped": skipped}
    return {
        "video": torch.stack([it["video"] for it in good]),
        "mel": torch.stack([it["mel"] for it in good]),
        "label": torch.tensor([it["label"] for it in good], dtype=torch.long),
        "id": [it["id"] for it in good],
        "skipped": skipped,
    }


class SkipReport:
    """Clips skipped during an epoch, accumulated in the main process from each batch's
    ``skipped`` list (so it sees every DataLoader worker). Keeps the first ``keep`` reasons."""

    def __init__(self, keep: int = 20) -> None:
        self.keep = keep
        self.count = 0
        self.first: list[tuple[str, str]] = []

    def add(self, skipped: Iterable[tuple[str, str]]) -> None:
        """Record ``(id, reason)`` pairs, e.g. ``report.add(batch["skipped"])``."""
        for clip_id, reason in skipped:
            self.count += 1
            if len(self.first) < self.keep:
                self.first.append((clip_id, reason))

    def __bool__(self) -> bool:
        return self.count > 0

    def summary(self, max_lines: int = 5) -> str:
        """Multi-line text for the end of an epoch: the count, then the first reasons."""
        if not self.count:
            return "no clips skipped"
        lines = [f"{self.count} clip{'s' if self.count != 1 else ''} skipped:"]
        lines += [f"  {cid}: {reason}" for cid, reason in self.first[:max_lines]]
        if self.count > max_lines:
            lines.append(f"  ... and {self.count - min(max_lines, len(self.first))} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """For json logs: ``{"count": n, "first": [{"id", "reason"}, ...]}``."""
        return {"count": self.count, "first": [{"id": c, "reason": r} for c, r in self.first]}
