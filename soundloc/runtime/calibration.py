"""Calibrate an export's in-view confidence (``soundloc.visibility``) on clips with known truth.

Every clip of a synthetic dataset (``soundloc synth --profile negatives``: ``tracks.json`` says
which clips show their sounding object and which do not) streams through the export's own
step graph and the runtime's window, exactly as `soundloc stream` would run it; every audible
window (above the audio gate) gives the candidate statistics. Positives: windows of clips whose
source is in view, at steps where it sounds. Negatives: every audible window of a clip whose
source is off-screen or occluded, or whose sound is noise. The fit (``visibility.calibrate``)
is written into the export's ``soundloc.json`` under ``visibility`` (atomically), with every
candidate's figures under ``visibility_candidates``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..data.annotations import find_video, read_vggsound_csv
from ..errors import UsageError
from ..localize import StepWindow, level_db
from ..visibility import (
    STATISTICS,
    TARGET_FALSE_ALARM,
    calibrate,
    map_features,
    raw_statistic,
)
from .bundle import read_bundle, write_manifest
from .engine import StepModel
from .sources import StepSource
from .stream import Localizer, StreamOptions

SINGLE = tuple(n for n in STATISTICS if n != "combined")  # the statistics without fitted weights


def clip_windows(model: StepModel, video: Path, options: StreamOptions = StreamOptions()) -> list[dict[str, Any]]:
    """Every window of one file as the stream forms it: ``pts``, ``level_db``, the raw
    candidate statistics (``STATISTICS``) and the combined rule's ``features``."""
    loc = Localizer(model, options)
    window = StepWindow(loc.core.window.steps, options.window, loc.core.window.gate_steps)
    out = []

    def record(w) -> None:
        post = loc.core.labelling.posteriors(w.extra)
        out.append({"pts": w.item.pts, "level_db": level_db(w.power), "features": map_features(w.alpha, w.score),
                    **{name: raw_statistic(name, w.alpha, w.score, post) for name in SINGLE}})

    def take(finished) -> None:
        for f in finished:
            power = float(np.mean(np.square(f.item.audio))) if f.item.has_audio else 0.0
            for w in window.push(f.item, f.alpha, f.score, power, f.logits):
                record(w)

    with StepSource(str(video), realtime=False, size=model.config.image_size) as source:
        for inp in source:
            take(loc.model_step(loc.prepare(inp)))
    take(loc.model_step([(loc.waiting.popleft(), frame, audio) for frame, audio in loc.feeder.flush()]))
    take(loc.driver.flush(loc.feeder.blank()))
    for w in window.flush():
        record(w)
    return out


def _sounding(pts: float, intervals: list[list[float]]) -> bool:
    return any(a <= pts < b for a, b in intervals)


def calibration_windows(model: StepModel, data: Path, split: str | None = "test",
                        options: StreamOptions = StreamOptions(),
                        progress: Callable[[int, int], None] | None = None) -> tuple[dict, dict, dict]:
    """(positive, negative) raw values per statistic (``"features"``: the combined rule's
    inputs, ``"clip"``: each window's clip), and counts, over the dataset's clips of ``split``
    (None: all)."""
    tracks = json.loads((data / "tracks.json").read_text())
    intervals = json.loads((data / "intervals.json").read_text())
    rows = [r for r in read_vggsound_csv(data / "vggsound.csv") if split is None or r.split == split]
    keys = (*SINGLE, "features", "clip")
    pos: dict[str, list] = {n: [] for n in keys}
    neg: dict[str, list] = {n: [] for n in keys}
    counts = {"clips": 0, "negative_clips": 0, "gated_windows": 0}
    for k, row in enumerate(rows):
        cid = row.id
        path, track = find_video(data, cid), tracks.get(cid)
        if path is None or track is None:
            continue
        negative = track.get("negative")
        counts["clips"] += 1
        counts["negative_clips"] += bool(negative)
        for w in clip_windows(model, path, options):
            if options.gate_db is not None and w["level_db"] < options.gate_db:
                counts["gated_windows"] += 1
                continue
            if negative:
                target = neg
            elif _sounding(w["pts"], intervals.get(cid, [])):
                target = pos
            else:
                continue
            for n in keys:
                target[n].append(k if n == "clip" else w[n])
        if progress:
            progress(k + 1, len(rows))
    return pos, neg, counts


def calibrate_export(export_dir: str | Path, data: str | Path, *, split: str | None = "test",
                     target: float = TARGET_FALSE_ALARM, backend: str = "onnxruntime-cpu",
                     threads: int | None = 1, options: StreamOptions = StreamOptions(),
                     progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Fit the in-view confidence of the export at ``export_dir`` on ``data`` and store it in
    the export's manifest; returns what was stored."""
    if not 0 < target < 1:
        raise UsageError(f"the target false-alarm rate must be in (0, 1), not {target}")
    data = Path(data)
    if not (data / "tracks.json").is_file():
        raise UsageError(f"{data}: no tracks.json; calibration needs a `soundloc synth --profile negatives` dataset")
    bundle = read_bundle(export_dir)
    model = StepModel.from_export(bundle, backend=backend, threads=threads)
    try:
        pos, neg, counts = calibration_windows(model, data, split, options, progress)
    finally:
        model.close()
    if not pos[STATISTICS[0]] or not neg[STATISTICS[0]]:
        raise UsageError(f"{data}: calibration needs audible windows of clips with and without a visible source "
                         f"(found {len(pos[STATISTICS[0]])} and {len(neg[STATISTICS[0]])})")
    best, fits = calibrate(pos, neg, target, groups=(pos.pop("clip"), neg.pop("clip")))
    manifest = dict(bundle.manifest)
    manifest["visibility"] = best.to_dict()
    manifest["visibility_candidates"] = {n: v.to_dict() for n, v in fits.items()}
    manifest["visibility_data"] = {"data": data.name, "split": split, "window": options.window,
                                   "gate_db": options.gate_db, **counts}
    write_manifest(Path(export_dir), manifest)
    return {k: manifest[k] for k in ("visibility", "visibility_candidates", "visibility_data")}
