"""Score localization maps against VGG-SS / Flickr-SoundNet ground truth (docs/design.md §2).

Every source of maps ends in :func:`score_maps`: a ``{clip_id: (h, w) map}`` dict from a
``.npz`` file (:func:`load_maps_npz`, any method's maps), from a baseline
(:func:`center_maps`), or from a checkpoint run over videos. So all are scored by one code path.

The model path (``soundloc.model.inference.maps_from_checkpoint``, torch) gives maps at the
annotated frame with the 3 s centred window, and the shuffled-audio baseline.

Clips with annotation but no map are *missing*: left out of the summary and counted (videos
of YouTube datasets disappear; say how many). Maps without annotation are ignored and counted.
numpy only.
"""

from __future__ import annotations

import dataclasses
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
from numpy.lib.npyio import NpzFile

from . import fileio, metrics
from .config import EVAL_SIZE
from .data.annotations import Annotation, Annotations
from .errors import SoundlocError

if TYPE_CHECKING:
    from .visibility import Visibility

BASELINES = ("center", "shuffled")  # shuffled needs a checkpoint (soundloc.model.inference)


class EvalError(SoundlocError, ValueError):
    """Inputs that cannot be evaluated together (unreadable maps, no clip in common, ...)."""


@dataclass(frozen=True)
class ClipScore:
    """One clip's result; ``gt_pixels`` is the GT map's sum (Flickr: consensus weights)."""

    id: str
    ciou: float
    pointing: bool
    pred_pixels: int
    gt_pixels: float
    empty_gt: bool
    non_finite: bool


@dataclass(frozen=True)
class EvalResult:
    """Per-clip records, the summary (``ap50``, ``auc``, ``mean_ciou``, ``pointing``, ``n``), the
    protocol that produced them, and the counts of what could not be scored normally."""

    protocol: str
    dataset: str  # "vggss" or "flickr"
    records: tuple[ClipScore, ...]
    summary: dict[str, float]
    n_missing: int = 0  # annotated clips without a map (not in the summary)
    n_unannotated: int = 0  # maps without annotation (ignored)
    n_empty_gt: int = 0  # scored as cIoU 0 / pointing miss
    n_non_finite: int = 0  # maps with NaN/inf (see soundloc.metrics)
    n_corrupt_boxes: int = 0  # from the annotation file, clipped
    n_no_annotation: int = 0  # requested ids (--ids) without an annotation (not scored)
    missing_ids: tuple[str, ...] = ()
    source: str = ""  # what the maps were: a file, a baseline, a checkpoint
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cious(self) -> list[float]:
        return [r.ciou for r in self.records]

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "dataset": self.dataset,
            "source": self.source,
            "summary": self.summary,
            "counts": {
                "scored": len(self.records),
                "missing_maps": self.n_missing,
                "unannotated_maps": self.n_unannotated,
                "empty_gt": self.n_empty_gt,
                "non_finite_maps": self.n_non_finite,
                "corrupt_boxes": self.n_corrupt_boxes,
                "ids_without_annotation": self.n_no_annotation,
            },
            "missing_ids": list(self.missing_ids),
            "clips": [dataclasses.asdict(r) for r in self.records],
            **self.extra,
        }


def gt_map(ann: Annotation, dataset: str) -> np.ndarray:
    """The (224, 224) GT map of one annotation: union (VGG-SS) or consensus (Flickr)."""
    return metrics.consensus_gt_map(ann.boxes) if dataset == "flickr" else metrics.union_gt_map(ann.boxes)


def score_maps(maps: Mapping[str, np.ndarray], gt: Annotations, protocol: str = metrics.DEFAULT_PROTOCOL,
               source: str = "", threshold: str = "median") -> EvalResult:
    """Score every annotated clip that has a map; maps may be of any (h, w) size. ``threshold``:
    ``metrics.THRESHOLD_RULES`` (an adaptive one is recorded in the result's ``extra``).

    Raises :class:`EvalError` when no annotated clip has a map (wrong ids, wrong file).
    """
    metrics.check_protocol(protocol)
    metrics.check_threshold(threshold)
    records = []
    missing = []
    for ann in gt:
        if ann.id not in maps:
            missing.append(ann.id)
            continue
        try:
            s = metrics.score_map(maps[ann.id], gt_map(ann, gt.kind), protocol, threshold)
        except metrics.MetricError as e:
            raise EvalError(f"map of clip {ann.id!r}: {e}") from None
        records.append(ClipScore(ann.id, s.ciou, s.pointing, s.pred_pixels, s.gt_pixels, ann.empty, s.non_finite))
    if not records:
        raise EvalError(f"none of the {len(gt)} annotated clips has a map (ids differ? e.g. {next(iter(gt.ids), '')!r})")
    summary = metrics.summarize([r.ciou for r in records], [r.pointing for r in records])
    return EvalResult(
        protocol=protocol,
        dataset=gt.kind,
        records=tuple(records),
        summary=summary,
        n_missing=len(missing),
        n_unannotated=sum(1 for k in maps if k not in gt),
        n_empty_gt=sum(r.empty_gt for r in records),
        n_non_finite=sum(r.non_finite for r in records),
        n_corrupt_boxes=gt.n_corrupt_boxes,
        n_no_annotation=len(gt.missing),
        missing_ids=tuple(missing),
        source=source,
        extra={"threshold": threshold} if threshold != "median" else {},
    )


MAX_MAP_SIDE = 4096  # pixels a --maps map may have per side (maps are compared at EVAL_SIZE)
MAX_MAPS_BYTES = 2 << 30  # decompressed bytes all --maps maps may take together


def load_maps_npz(path: str | Path) -> dict[str, np.ndarray]:
    """``{clip_id: map}`` from an ``.npz`` holding one 2-D array per clip id, each at most
    ``MAX_MAP_SIDE`` a side and ``MAX_MAPS_BYTES`` in all, checked from the arrays' headers
    before anything is decompressed (a small archive can hold a huge zero map).

    Pickled (object) arrays are refused: an npz from elsewhere must not run code.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:  # our handle: np.load leaks its own when the zip is corrupt
            head = f.read(6)
            if not head.startswith(b"PK") and head != b"\x93NUMPY":  # np.load would guess pickle
                raise EvalError(f"{path}: not an .npz archive of maps (np.savez writes one)")
            f.seek(0)
            z = np.load(f, allow_pickle=False)
            if not isinstance(z, NpzFile):
                raise EvalError(f"{path}: expected an .npz archive of maps, got a single array")
            with z:
                _check_sizes(z, path)
                maps = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        if isinstance(e, EvalError):
            raise
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EvalError(f"{path}: cannot read maps ({why})") from None
    if not maps:
        raise EvalError(f"{path}: the archive holds no maps")
    return maps


def _check_sizes(z: NpzFile, path: Path) -> None:
    """Every member's shape and dtype from its .npy header; too large -> EvalError."""
    total = 0
    for info in z.zip.infolist():
        with z.zip.open(info) as member:
            version = np.lib.format.read_magic(member)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(member)
        name = info.filename.removesuffix(".npy")
        if any(side > MAX_MAP_SIDE for side in shape):
            raise EvalError(f"{path}: map {name!r} is {'x'.join(map(str, shape))}; maps may be at most "
                            f"{MAX_MAP_SIDE} a side")
        total += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if total > MAX_MAPS_BYTES:
            raise EvalError(f"{path}: the maps take more than {MAX_MAPS_BYTES >> 30} GiB decompressed")


def center_maps(ids: list[str] | tuple[str, ...], size: int = EVAL_SIZE) -> dict[str, np.ndarray]:
    """The centred-Gaussian baseline: the same prior for every clip, at the evaluation size."""
    prior = metrics.center_prior(size, size)
    return {i: prior for i in ids}


def baseline_maps(name: str, gt: Annotations) -> dict[str, np.ndarray]:
    """Maps of a named model-free baseline for every annotated clip."""
    if name == "center":
        return center_maps(gt.ids)
    if name == "shuffled":
        raise EvalError("the shuffled-audio baseline needs a checkpoint and --videos")
    raise EvalError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")


def write_json(result: EvalResult, path: str | Path) -> Path:
    """Write ``result.to_dict()`` atomically (temp file beside ``path``, then os.replace)."""
    return fileio.write_json(result.to_dict(), path)


CONFIDENCES = ("top25", "score", "heard_seen", "calibrated", "constant")  # `soundloc eval --confidence`


def clip_confidences(kind: str, maps: Mapping[str, np.ndarray], windows: Mapping[str, dict] | None = None,
                     calibration: Visibility | None = None) -> dict[str, float]:
    """Per clip, the confidence that a visible object sounds (``soundloc.visibility``): SLAVC's
    top-quarter mean of the map (``top25``), the window's mean S_av (``score``) or the vision
    head's probability of the heard class (``heard_seen``; both need a checkpoint's
    ``windows``), an export's calibrated confidence (``calibrated``: what its stream draws by;
    needs ``calibration`` and the checkpoint's ``windows``), or the same value for every clip
    (``constant``, the baseline)."""
    from .visibility import top_quarter_mean

    if kind == "calibrated":
        if calibration is None:
            raise EvalError("--confidence calibrated needs --calibration EXPORT (an export `soundloc calibrate` fitted)")
        if windows is None:
            raise EvalError("--confidence calibrated needs a checkpoint (the window's S_av)")
        if calibration.statistic == "heard_seen":
            return {k: calibration.normalise(float(w.get("heard_seen", 0.0))) for k, w in windows.items()}
        return {k: calibration.normalise(calibration.raw(maps[k], windows[k]["score"])) for k in windows if k in maps}

    if kind == "top25":
        return {k: top_quarter_mean(m) for k, m in maps.items()}
    if kind in ("score", "heard_seen"):
        if windows is None:
            raise EvalError(f"--confidence {kind} needs a checkpoint (the window's S_av and heads)")
        return {k: float(w.get(kind, 0.0)) for k, w in windows.items()}
    if kind == "constant":
        return dict.fromkeys(maps, 1.0)
    raise EvalError(f"unknown confidence {kind!r}; choose from {', '.join(CONFIDENCES)}")


def extended_metrics(result: EvalResult, gt: Annotations, confidences: Mapping[str, float],
                     ciou_threshold: float = 0.5) -> dict[str, Any]:
    """SLAVC's extended metrics (``metrics.extended_summary``) over the scored clips: a clip
    without a box in ``gt`` has no visible sounding object."""
    recs = [r for r in result.records if r.id in confidences]
    if not recs:
        raise EvalError("no scored clip has a confidence")
    return metrics.extended_summary([len(gt[r.id].boxes) for r in recs], [r.ciou for r in recs],
                                    [confidences[r.id] for r in recs], ciou_threshold)


def label_accuracy(gt: Annotations, windows: Mapping[str, dict]) -> dict[str, float]:
    """Per label head, the top-1 accuracy against the annotated class on clips with a visible
    sounding object (a box); ``n``: how many such clips had a prediction."""
    visible = [a for a in gt if a.boxes and a.id in windows and windows[a.id].get("classes")]
    out: dict[str, float] = {"n": len(visible)}
    for head in (windows[visible[0].id]["classes"] if visible else {}):
        out[head] = float(np.mean([windows[a.id]["classes"][head] == a.label for a in visible]))
    return out
