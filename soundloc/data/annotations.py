"""Readers for the annotation and list files of VGG-SS, Flickr-SoundNet and VGGSound.

Every reader turns a broken file (truncated, corrupt, wrong shape) into one
:class:`AnnotationError` whose message names the file and the line or entry at fault, so a
CLI can print it on one line. Boxes are stored normalised to the frame, ``(xmin, ymin, xmax,
ymax)`` in [0, 1]; the evaluation protocol (``soundloc.metrics``) rasterises them.

Bad coordinates: the real ``vggss.json`` holds 12 boxes with a coordinate of about -2.9e16.
Like the reference evaluation code we clip every coordinate to [0, 1]; a coordinate that was
outside by more than ``CORRUPT_MARGIN`` (or not finite), or an inverted box (xmin > xmax or
ymin > ymax), marks the box *corrupt* and is counted.
A box that is empty after clipping (xmax <= xmin or ymax <= ymin; all 12 corrupt VGG-SS boxes
are) is dropped: it would add no pixel to the ground-truth map anyway, so dropping it changes no
score, and downstream users never see an inverted box. An entry can thus end with no box
(``MKC9LvRivTM_000030``): an *empty GT*, which the metrics score as cIoU 0 / pointing miss.
"""

from __future__ import annotations

import csv
import json
import math
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Iterator, Sequence

from ..config import VIDEO_FOLDERS, VIDEO_SUFFIXES
from ..errors import SoundlocError

Box = tuple[float, float, float, float]  # normalised (xmin, ymin, xmax, ymax)

CORRUPT_MARGIN = 0.05  # a coordinate further than this outside [0, 1] is corrupt, not rounding
FLICKR_FRAME = 256  # Flickr-SoundNet boxes are pixels of a 256x256 frame
KINDS = ("vggss", "flickr")  # vggss: one annotator, union of boxes; flickr: 3-annotator consensus


class AnnotationError(SoundlocError, ValueError):
    """An annotation or list file that cannot be read; the message is one line."""


@dataclass(frozen=True)
class Annotation:
    """The ground truth of one clip or image.

    ``annotators[i]`` says which annotator drew ``boxes[i]`` (Flickr: 0, 1, 2; VGG-SS: all 0).
    ``n_corrupt`` counts this entry's boxes with corrupt coordinates (clipped), ``n_dropped``
    its boxes that were empty after clipping (not in ``boxes``).
    """

    id: str
    boxes: tuple[Box, ...]
    label: str = ""
    annotators: tuple[int, ...] = ()
    n_corrupt: int = 0
    n_dropped: int = 0

    @property
    def empty(self) -> bool:
        return not self.boxes


@dataclass(frozen=True)
class Annotations:
    """A whole benchmark's ground truth, keyed by clip id, in file order.

    ``kind`` selects the ground-truth map (``vggss``: union; ``flickr``: consensus);
    ``missing`` lists requested ids that had no annotation.
    """

    kind: str
    items: dict[str, Annotation]
    source: str = ""
    missing: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Annotation]:
        return iter(self.items.values())

    def __getitem__(self, clip_id: str) -> Annotation:
        return self.items[clip_id]

    def __contains__(self, clip_id: object) -> bool:
        return clip_id in self.items

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self.items)

    @property
    def classes(self) -> tuple[str, ...]:
        """Sorted distinct labels (VGG-SS: 221)."""
        return tuple(sorted({a.label for a in self.items.values() if a.label}))

    @property
    def n_empty(self) -> int:
        return sum(a.empty for a in self.items.values())

    @property
    def n_corrupt_boxes(self) -> int:
        """Boxes with corrupt coordinates (clipped, see the module doc)."""
        return sum(a.n_corrupt for a in self.items.values())

    @property
    def n_dropped_boxes(self) -> int:
        """Boxes empty after clipping, left out of ``boxes``."""
        return sum(a.n_dropped for a in self.items.values())

    @property
    def corrupt_ids(self) -> tuple[str, ...]:
        return tuple(a.id for a in self.items.values() if a.n_corrupt)

    def subset(self, ids: Sequence[str]) -> "Annotations":
        """Only ``ids`` (in that order); ids without annotation go to ``missing``."""
        keep = {i: self.items[i] for i in ids if i in self.items}
        missing = tuple(i for i in ids if i not in self.items)
        return Annotations(self.kind, keep, self.source, self.missing + missing)


# -- paths -------------------------------------------------------------------------------------
def safe_join(root: str | Path, name: str, follow_links: bool = False) -> Path:
    """``root / name``, refusing names from annotation files that would leave ``root``.

    Rejects empty names, NUL bytes, absolute paths (POSIX or Windows, drive letters), any
    ``..`` component, and -- unless ``follow_links`` (training sets whose videos are linked in
    from another disk) -- symlinks that resolve outside ``root``.
    """
    if not name or "\x00" in name:
        raise AnnotationError(f"unsafe file name {name!r} in an annotation: empty or NUL byte")
    for pure in (PurePosixPath(name), PureWindowsPath(name)):
        if pure.is_absolute() or pure.anchor or ".." in pure.parts:
            raise AnnotationError(f"unsafe file name {name!r} in an annotation: it escapes the dataset root")
    root = Path(root)
    path = root / name
    if not follow_links and not path.resolve().is_relative_to(root.resolve()):
        raise AnnotationError(f"unsafe file name {name!r} in an annotation: resolves outside {root}")
    return path


# -- the VGGSound folder layout ------------------------------------------------------------------
def clip_id(ytid: str, start_seconds: float) -> str:
    """VGGSound's clip naming: ``<ytid>_<start:06d>``."""
    return f"{ytid}_{int(start_seconds):06d}"


def find_video(root: str | Path, clip: str, follow_links: bool = False) -> Path | None:
    """The video of clip id ``clip``: ``<root>/videos/<id>.mp4``, ``<root>/video/<id>.mp4`` or
    ``<root>/<id>.mp4`` (the first found; other video suffixes too), never outside ``root``
    (``safe_join``; ``follow_links`` as there); None when there is none."""
    for sub in (*(f"{name}/" for name in VIDEO_FOLDERS), ""):
        for suffix in VIDEO_SUFFIXES:
            path = safe_join(root, f"{sub}{clip}{suffix}", follow_links)
            if path.is_file():
                return path
    return None


def video_folder(root: str | Path) -> Path:
    """Where a collection keeps its videos: ``<root>/videos``, ``<root>/video`` or ``root``."""
    root = Path(root)
    return next((root / name for name in VIDEO_FOLDERS if (root / name).is_dir()), root)


def list_videos(root: str | Path) -> list[tuple[str, Path]]:
    """Every video file in ``video_folder(root)``, sorted, as (clip id, path)."""
    return [(p.stem, p) for p in sorted(video_folder(root).iterdir()) if p.suffix.lower() in VIDEO_SUFFIXES]


# -- boxes -------------------------------------------------------------------------------------
def _clean_box(values: Sequence[float]) -> tuple[Box | None, bool]:
    """Clip a normalised box to [0, 1]: (box or None if empty after clipping, was it corrupt)."""
    if any(math.isnan(v) for v in values):
        return None, True  # NaN cannot be clipped to anything meaningful: drop the box
    corrupt = any(not -CORRUPT_MARGIN <= v <= 1.0 + CORRUPT_MARGIN for v in values)  # also +-inf
    corrupt = corrupt or values[0] > values[2] or values[1] > values[3]  # inverted: min after max
    x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in values)
    if x1 <= x0 or y1 <= y0:
        return None, corrupt
    return (x0, y0, x1, y1), corrupt


def _number(v: object, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise AnnotationError(f"{where}: box coordinate {v!r} is not a number")
    try:
        return float(v)
    except OverflowError:  # an integer beyond any float (10**400)
        raise AnnotationError(f"{where}: box coordinate {str(v)[:20]}... is out of range") from None


# -- VGG-SS ------------------------------------------------------------------------------------
def read_vggss(path: str | Path) -> Annotations:
    """Read a VGG-SS json: a list of ``{"file", "class", "bbox": [[xmin, ymin, xmax, ymax], ...]}``.

    Coordinates are normalised; corrupt ones are clipped and counted (see the module doc).
    """
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected a json list of entries, got {type(data).__name__}")
    items: dict[str, Annotation] = {}
    for i, entry in enumerate(data):
        where = f"{path}: entry {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or "bbox" not in entry:
            raise AnnotationError(f"{where}: expected an object with 'file' (string) and 'bbox'")
        boxes, corrupt, dropped = _vggss_boxes(entry["bbox"], f"{where} ({entry['file']})")
        if entry["file"] in items:
            raise AnnotationError(f"{where}: duplicate file id {entry['file']!r}")
        items[entry["file"]] = Annotation(entry["file"], boxes, str(entry.get("class", "")), (0,) * len(boxes),
                                          corrupt, dropped)
    return Annotations("vggss", items, str(path))


def _vggss_boxes(raw: object, where: str) -> tuple[tuple[Box, ...], int, int]:
    if not isinstance(raw, list):
        raise AnnotationError(f"{where}: 'bbox' must be a list of [xmin, ymin, xmax, ymax]")
    boxes: list[Box] = []
    n_corrupt = n_dropped = 0
    for b in raw:
        if not isinstance(b, list) or len(b) != 4:
            raise AnnotationError(f"{where}: box {b!r} is not [xmin, ymin, xmax, ymax]")
        box, corrupt = _clean_box([_number(v, where) for v in b])
        n_corrupt += corrupt
        if box is None:
            n_dropped += 1
        else:
            boxes.append(box)
    return tuple(boxes), n_corrupt, n_dropped


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """A file that is not UTF-8 text or cannot be read becomes one AnnotationError line."""
    try:
        yield
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read ({e.strerror})") from None


def _load_json(path: Path) -> object:
    try:
        with _reading(path), open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: line {e.lineno} column {e.colno}: corrupt or truncated json ({e.msg})") from None
    except RecursionError:
        raise AnnotationError(f"{path}: json nested too deeply to be annotations") from None


# -- Flickr-SoundNet ---------------------------------------------------------------------------
def read_flickr(annotations_dir: str | Path, ids: Sequence[str] | None = None,
                frame_size: int = FLICKR_FRAME) -> Annotations:
    """Read Flickr-SoundNet XMLs (``<id>.xml``): every ``<bbox>``, grouped by annotator.

    ``ids`` (e.g. from :func:`read_id_list` on ``flickr_test.csv``) selects the images; ids
    without an XML file are listed in ``missing``. Without ``ids`` every ``*.xml`` is read.
    Pixel boxes of a ``frame_size`` square frame are normalised by ``frame_size``.
    """
    root = Path(annotations_dir)
    if not root.is_dir():
        raise AnnotationError(f"{root}: not a directory of Flickr-SoundNet XML files")
    if ids is None:
        ids = sorted(p.stem for p in root.glob("*.xml"))
        if not ids:
            raise AnnotationError(f"{root}: no .xml annotation files")
    items: dict[str, Annotation] = {}
    missing: list[str] = []
    for clip in ids:
        path = safe_join(root, f"{clip}.xml")
        if path.is_file():
            items[clip] = _read_flickr_xml(path, clip, frame_size)
        else:
            missing.append(clip)
    return Annotations("flickr", items, str(root), tuple(missing))


def _read_flickr_xml(path: Path, clip: str, frame_size: int) -> Annotation:
    try:
        tree = ET.parse(path)
    except ET.ParseError as e:
        line, col = e.position
        raise AnnotationError(f"{path}: line {line} column {col}: corrupt or truncated xml") from None
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read ({e.strerror})") from None
    parents = {child: parent for parent in tree.iter() for child in parent}
    annotator_of: dict[int, int] = {}  # id(parent element) -> annotator index, in file order
    boxes: list[Box] = []
    annotators: list[int] = []
    n_corrupt = n_dropped = 0
    for el in tree.iter("bbox"):
        who = annotator_of.setdefault(id(parents.get(el)), len(annotator_of))
        box, corrupt = _clean_box([v / frame_size for v in _flickr_coords(el, path)])
        n_corrupt += corrupt
        if box is None:
            n_dropped += 1
            continue
        boxes.append(box)
        annotators.append(who)
    return Annotation(clip, tuple(boxes), "", tuple(annotators), n_corrupt, n_dropped)


def _flickr_coords(el: ET.Element, path: Path) -> list[float]:
    """(xmin, ymin, xmax, ymax) in pixels: by child tag, else the release's positional layout
    (one leading child, then the four numbers, which the reference code reads by index)."""
    named = {c.tag.lower(): c.text for c in el}
    if all(k in named for k in ("xmin", "ymin", "xmax", "ymax")):
        texts = [named[k] for k in ("xmin", "ymin", "xmax", "ymax")]
    else:
        children = list(el)
        if len(children) not in (4, 5):
            raise AnnotationError(f"{path}: <bbox> needs xmin, ymin, xmax, ymax children")
        texts = [c.text for c in children[-4:]]
    try:
        return [float((t or "").strip()) for t in texts]
    except ValueError:
        raise AnnotationError(f"{path}: <bbox> coordinate {texts} is not a number") from None


# -- CSV lists ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class VGGSoundRow:
    """One row of ``vggsound.csv``; ``id`` is the clip (and video file stem) name."""

    ytid: str
    start_seconds: int
    label: str
    split: str
    id: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", clip_id(self.ytid, self.start_seconds))


@dataclass(frozen=True)
class LabelledFile:
    """A file name (relative to a dataset root), its class label and optional split; ``line``
    is where the row stands in its file, for messages."""

    path: str
    label: str
    split: str | None = None
    line: int = field(default=0, compare=False)

    @property
    def id(self) -> str:
        return PurePosixPath(self.path.replace("\\", "/")).stem


@dataclass(frozen=True)
class ClassStat:
    """One row of VGGSound's ``stat.csv``."""

    label: str
    count: int
    category: str


def _csv_rows(path: Path, ncols: int | tuple[int, ...] | None = None) -> Iterator[tuple[int, list[str]]]:
    """(line number, row) of a CSV, skipping blank lines; wrong column counts raise (any count
    when ``ncols`` is None)."""
    allowed = (ncols,) if isinstance(ncols, int) else ncols
    with _reading(path), open(path, encoding="utf-8-sig", newline="") as f:  # -sig: a BOM is not data
        reader = csv.reader(f, strict=True)
        try:
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                if allowed is not None and len(row) not in allowed:
                    raise AnnotationError(f"{path}: line {reader.line_num}: expected {' or '.join(map(str, allowed))}"
                                          f" columns, got {len(row)} (corrupt or truncated?)")
                yield reader.line_num, row
        except csv.Error as e:
            raise AnnotationError(f"{path}: line {reader.line_num}: corrupt csv ({e})") from None


def read_vggsound_csv(path: str | Path) -> list[VGGSoundRow]:
    """The headerless VGGSound CSV: ``ytid,start_seconds,label,split`` (labels quoted if needed)."""
    path = Path(path)
    rows = []
    for line, (ytid, start, label, split) in _csv_rows(path, 4):
        try:
            seconds = int(float(start))
        except (ValueError, OverflowError):  # also nan and inf
            raise AnnotationError(f"{path}: line {line}: start_seconds {start!r} is not a number") from None
        if not ytid or seconds < 0:
            raise AnnotationError(f"{path}: line {line}: empty ytid or negative start")
        if "/" in ytid or "\\" in ytid:  # it names a file: <ytid>_<start>.mp4
            raise AnnotationError(f"{path}: line {line}: ytid {ytid!r} contains a path separator")
        rows.append(VGGSoundRow(ytid.strip(), seconds, label.strip(), split.strip()))
    return rows


def read_vggsound_test(path: str | Path) -> list[LabelledFile]:
    """VGGSound's ``test.csv``: ``<ytid>_<start:06d>.mp4,<label>`` rows, no header."""
    return [LabelledFile(name.strip(), label.strip()) for _, (name, label) in _csv_rows(Path(path), 2)]


def read_path_label_csv(path: str | Path) -> list[LabelledFile]:
    """A simple ``path,label[,split]`` CSV for any collection; an optional header row
    (``path,label[,split]``) is skipped."""
    rows = [LabelledFile(row[0].strip(), row[1].strip(), row[2].strip() if len(row) == 3 else None, line)
            for line, row in _csv_rows(Path(path), (2, 3))]
    if rows and (rows[0].path.lower(), rows[0].label.lower()) == ("path", "label"):
        rows = rows[1:]
    return rows


def read_class_stats(path: str | Path) -> list[ClassStat]:
    """VGGSound's ``stat.csv``: ``label,count,category`` rows (309 classes), in file order."""
    path = Path(path)
    out = []
    for line, (label, count, category) in _csv_rows(path, 3):
        try:
            out.append(ClassStat(label.strip(), int(count), category.strip()))
        except ValueError:
            raise AnnotationError(f"{path}: line {line}: count {count!r} is not an integer") from None
    return out


def read_class_names(path: str | Path) -> tuple[str, ...]:
    """Class names in index order: the first column of VGGSound's ``stat.csv`` (sorted
    alphabetically), the synthetic ``classes.csv``, or a file of one name per line. An empty
    list or a name given twice is refused."""
    path = Path(path)
    names = [row[0].strip() for _, row in _csv_rows(path) if row[0].strip()]
    if not names or len(set(names)) != len(names):
        raise AnnotationError(f"{path}: the class list is empty or names a class twice")
    return tuple(names)


def read_id_list(path: str | Path) -> list[str]:
    """First column of a list CSV (``flickr_test.csv``: ``id,number``; ``vggss_test.csv``: ``id``)."""
    return [row[0].strip() for _, row in _csv_rows(Path(path), (1, 2, 3, 4))]


def read_annotations(path: str | Path, ids: Sequence[str] | None = None) -> Annotations:
    """VGG-SS json (a file) or Flickr-SoundNet XMLs (a directory), told apart by what ``path`` is."""
    path = Path(path)
    if path.is_dir():
        return read_flickr(path, ids)
    if not path.exists():
        raise AnnotationError(f"{path}: no such annotation file or directory")
    ann = read_vggss(path)
    return ann if ids is None else ann.subset(ids)
