"""What a per-frame student (the ezvsl family) trains on: one frame of each clip and the 3 s of
audio centred on it, at the clip's middle frame or at the teacher's top-1 informative moment
(``soundloc moments``' json), with the clip's box (``soundloc annotate``'s pseudo boxes or a
VGG-SS json) as a target map where there is one.

Frames are counted on the whole decoded clip, as ``soundloc moments`` and ``soundloc eval``
count them (the middle frame is the one eval scores). A clip missing from the moments file falls
back to its middle frame and is counted (``FrameChoice``); the counts go into the run's
provenance and summary. A moment past the clip's end skips the clip with that reason.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config
from ..data.annotations import AnnotationError, read_vggss
from ..families import WindowFeeder, family_of
from ..fileio import sha256_file
from ..mel import audio_window, log_spectrogram
from .datasets import ClipRecord, DatasetError, SkippedClip, decode_record

FRAME_MODES = ("mid", "moments")


def read_moments(path: str | Path) -> dict[str, int]:
    """``soundloc moments``' json ``{clip_id: [{"frame", "time_s", "score"}, best first]}`` ->
    each clip's top-1 frame index; a file of another shape raises one line."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: not a readable moments json ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected {{clip_id: [moments]}} as `soundloc moments` writes, got {type(data).__name__}")
    out = {}
    for clip_id, moments in data.items():
        top = moments[0] if isinstance(moments, list) and moments else None
        frame = top.get("frame") if isinstance(top, dict) else None
        if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
            raise DatasetError(f"{path}: clip {clip_id!r}: expected a list of moments whose first has a frame index >= 0")
        out[clip_id] = frame
    return out


def read_boxes(path: str | Path) -> dict[str, tuple]:
    """A VGG-SS json (``soundloc annotate``'s pseudo boxes are one) -> the boxes of each clip
    that has at least one (an entry with an empty ``bbox`` is a clip without a box)."""
    try:
        ann = read_vggss(path)
    except AnnotationError as e:
        raise DatasetError(str(e)) from None
    return {a.id: a.boxes for a in ann if a.boxes}


def box_target(boxes: Sequence[tuple[float, float, float, float]], size: int, cells: int) -> np.ndarray:
    """(cells, cells) float32: the share of the boxes' union (rasterised as the evaluation does,
    on a ``size`` x ``size`` frame) falling in each map cell; sums to 1. Zeros without a box."""
    if not boxes:
        return np.zeros((cells, cells), np.float32)
    mask = np.zeros((size, size), np.float32)
    for x0, y0, x1, y1 in boxes:
        mask[int(size * y0):int(size * y1), int(size * x0):int(size * x1)] = 1.0
    pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(mask)[None, None], cells)[0, 0].numpy()
    total = pooled.sum()
    return (pooled / total).astype(np.float32) if total > 0 else pooled.astype(np.float32)


def map_cells(image_size: int) -> int:
    """The side of a ResNet-18 map: five stride-2 stages, each ceil(x / 2)."""
    side = image_size
    for _ in range(5):
        side = -(-side // 2)
    return side


@dataclass
class FrameChoice:
    """Which frame each clip trains on, and how many came from each source."""

    mode: str = "mid"
    moments: dict[str, int] = field(default_factory=dict)
    from_moments: int = 0
    mid_fallback: int = 0  # clips missing from the moments file: their middle frame

    def frame(self, clip_id: str, steps: int) -> int:
        if self.mode == "moments" and clip_id in self.moments:
            return self.moments[clip_id]
        return steps // 2

    def count(self, clip_ids: Sequence[str]) -> None:
        if self.mode == "moments":
            self.from_moments = sum(c in self.moments for c in clip_ids)
            self.mid_fallback = len(clip_ids) - self.from_moments


class FrameDataset(torch.utils.data.Dataset):
    """Items ``frame`` (3, S, S) normalised, ``spec`` (1, 257, 200), ``box`` (h, w) target (zeros
    without a box), ``label`` (the collection's class index: unused by the loss, kept so batches
    count clips as the classifier's do) and ``id``; a clip that cannot be decoded is a
    ``SkippedClip`` with its reason. ``flip`` mirrors the frame and its box together."""

    def __init__(self, records: Sequence[ClipRecord], class_names: Sequence[str], config: Config,
                 choice: FrameChoice, boxes: dict[str, tuple] | None = None, flip: bool = False) -> None:
        self.records, self.class_names, self.config = list(records), tuple(class_names), config
        self.choice, self.boxes, self.flip = choice, boxes or {}, flip
        self.family = family_of(config)
        self.window = WindowFeeder(config, self.family, "centered")
        self.cells = map_cells(config.image_size)
        self._decoded: dict[int, tuple[np.ndarray, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    @property
    def clips_with_box(self) -> int:
        return sum(r.clip_id in self.boxes for r in self.records)

    def keep_decoded(self) -> None:
        """Keep each clip's chosen frame (uint8) and spectrogram in memory after the first load
        (about 0.35 MB per clip at 224 px)."""
        self._decoded = {}

    def _decode(self, i: int) -> tuple[np.ndarray, np.ndarray] | SkippedClip:
        if self._decoded is not None and i in self._decoded:
            return self._decoded[i]
        rec = self.records[i]
        clip = decode_record(rec, self.config)
        if isinstance(clip, SkippedClip):
            return clip
        t = self.choice.frame(rec.clip_id, len(clip.frames))
        if t >= len(clip.frames):
            return SkippedClip(rec.clip_id, f"moment frame {t} is past the clip's last frame ({len(clip.frames) - 1}): "
                                            f"a moments file of other clips?")
        audio = audio_window(np.asarray(clip.audio, np.float32), self.window.first_sample(t), self.window.length)
        # a copy, not a view: a cached view would keep the whole decoded clip alive (10 s clips at
        # 224 px: 15 MB each, several GB over a dataset)
        decoded = clip.frames[t].copy(), log_spectrogram(audio)
        if self._decoded is not None:
            self._decoded[i] = decoded
        return decoded

    def __getitem__(self, i: int) -> dict[str, Any] | SkippedClip:
        rec = self.records[i]
        decoded = self._decode(i)
        if isinstance(decoded, SkippedClip):
            return decoded
        frame, spec = decoded
        target = box_target(self.boxes.get(rec.clip_id, ()), self.config.image_size, self.cells)
        if self.flip and torch.rand(()).item() < 0.5:
            frame, target = frame[:, ::-1], target[:, ::-1]
        image = self.family.normalise(np.ascontiguousarray(frame)[None])[:, 0]
        return {"frame": torch.from_numpy(np.ascontiguousarray(image)), "spec": torch.from_numpy(spec)[None],
                "box": torch.from_numpy(np.ascontiguousarray(target)), "label": rec.label, "id": rec.clip_id}


def collate_frames(items: Sequence[dict[str, Any] | SkippedClip]) -> dict[str, Any]:
    """``FrameDataset`` items -> a batch (``frame``, ``spec``, ``box`` stacked, ``label``, ``id``),
    the skipped ones carried as ``(id, reason)`` pairs; an empty batch has no ``frame``."""
    good = [it for it in items if not isinstance(it, SkippedClip)]
    skipped = [(it.clip_id, it.reason) for it in items if isinstance(it, SkippedClip)]
    batch: dict[str, Any] = {"label": torch.tensor([it["label"] for it in good], dtype=torch.long),
                             "id": [it["id"] for it in good], "skipped": skipped}
    if good:
        batch.update({k: torch.stack([it[k] for it in good]) for k in ("frame", "spec", "box")})
    return batch


def file_record(path: str | Path | None) -> dict[str, str] | None:
    """A file named in provenance: its name and sha256 (None when not given)."""
    return None if path is None else {"file": Path(path).name, "sha256": sha256_file(path)}
