"""Which in-view statistic (issue 25): temporal pooling and combined rules, compared offline.

Every window of the calibration and the test clips streams through the export exactly as
`soundloc calibrate` sees it (``runtime.calibration.clip_windows``). Then, per candidate:
the threshold that keeps ``--false-alarm`` of the calibration negatives (audible windows of
off-screen, occluded and noise clips), the calibration recall (visible sources, sounding,
audible), for fitted rules the recall on held-out calibration clips (5-fold over clips: what
a choice may use), and on the test clips what a stream would show: the share of visible,
sounding, audible steps that keep their box and the share of all off-screen/occluded/noise
steps boxed. Candidates:

- a single statistic pooled causally over the last k windows (mean or max): a live stream has
  that history, and the pooled value is the same streamed or offline;
- logistic rules (``visibility.fit_combined``) on sets of ``visibility.FEATURES`` (``map``:
  the six map statistics) with S_av, the audio level or heard_seen.

    python benchmarks/visibility_statistics.py --export runs/export_cal --cal data/negcal \\
        --test data/negtest --json benchmarks/results/visibility_statistics.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from soundloc.data.annotations import find_video, read_vggsound_csv
from soundloc.fileio import write_json
from soundloc.runtime.calibration import clip_windows
from soundloc.runtime.engine import StepModel
from soundloc.visibility import (
    FEATURES,
    Visibility,
    cross_validated_logits,
    fit_combined,
    threshold_for,
)

NEGATIVE_KINDS = ("offscreen", "occluded", "noise")
GATE_DB = -40.0  # StreamOptions' default audio gate
SETS = {"map": list(FEATURES[:6]), "map+score": list(FEATURES), "map+score+level": [*FEATURES, "level_db"],
        "map+score+heard_seen": [*FEATURES, "heard_seen"], "top25+score": ["top25", "score"]}


def windows(model: StepModel, data: Path) -> dict[str, np.ndarray]:
    """Every window of the folder's test clips: features, singles, level, clip, kind, sounding."""
    tracks = json.loads((data / "tracks.json").read_text())
    intervals = json.loads((data / "intervals.json").read_text())
    rows: list[dict] = []
    for k, row in enumerate(r for r in read_vggsound_csv(data / "vggsound.csv") if r.split == "test"):
        kind = tracks[row.id].get("negative") or "visible"
        for w in clip_windows(model, find_video(data, row.id)):
            f = dict(zip(FEATURES, w["features"]))
            rows.append({**f, "heard_seen": w["heard_seen"], "level_db": w["level_db"], "clip": k, "kind": kind,
                         "sounding": any(a <= w["pts"] < b for a, b in intervals.get(row.id, []))})
    out = {key: np.array([r[key] for r in rows]) for key in rows[0]}
    audible = out["level_db"] >= GATE_DB
    out["pos"] = (out["kind"] == "visible") & out["sounding"] & audible
    out["negk"] = np.isin(out["kind"], NEGATIVE_KINDS)
    out["neg"] = out["negk"] & audible
    return out


def pooled(w: dict, x: np.ndarray, k: int, how: str) -> np.ndarray:
    """x pooled over each clip's last k windows (causal)."""
    out = np.empty_like(x, dtype=np.float64)
    for c in np.unique(w["clip"]):
        idx = np.flatnonzero(w["clip"] == c)
        for j, i in enumerate(idx):
            seg = x[idx[max(0, j - k + 1): j + 1]]
            out[i] = seg.mean() if how == "mean" else seg.max()
    return out


def figures(cal: dict, test: dict, xc: np.ndarray, xt: np.ndarray, target: float, cv: np.ndarray | None = None) -> dict:
    thr = threshold_for(xc[cal["neg"]], target)
    boxed = (test["level_db"] >= GATE_DB) & (xt >= thr)
    out = {"cal_recall": float(np.mean(xc[cal["pos"]] >= thr)),
           "test_visible_keep": float(boxed[test["pos"]].mean()), "test_negatives_boxed": float(boxed[test["negk"]].mean())}
    if cv is not None:
        out["cv_recall"] = float(np.mean(cv[cal["pos"]] >= threshold_for(cv[cal["neg"]], target)))
    return out


def rule(cal: dict, test: dict, names: list[str], target: float) -> dict:
    def x(w: dict) -> np.ndarray:
        return np.stack([w[n] for n in names], 1).astype(np.float64)

    fitted = cal["pos"] | cal["neg"]
    y = cal["pos"][fitted].astype(float)
    r = fit_combined(x(cal)[fitted], y)
    v = Visibility("combined", 0.0, 1.0, 0.0, centre=tuple(r["centre"]), scale=tuple(r["scale"]),
                   weights=tuple(r["weights"]), bias=r["bias"])
    cv = np.full(len(cal["clip"]), np.nan)
    cv[fitted] = cross_validated_logits(x(cal)[fitted], y, cal["clip"][fitted])
    return figures(cal, test, v.logit(x(cal)), v.logit(x(test)), target, cv)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", type=Path, required=True)
    ap.add_argument("--cal", type=Path, required=True, help="negatives-profile calibration folder")
    ap.add_argument("--test", type=Path, required=True, help="negatives-profile test folder (never used to choose)")
    ap.add_argument("--false-alarm", type=float, default=0.1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    model = StepModel.from_export(args.export, backend="onnxruntime-cpu", threads=1)
    cal, test = windows(model, args.cal), windows(model, args.test)
    model.close()
    out: dict = {"pooling": {}, "rules": {}}
    for name in ("top25", "max", "std"):
        for k in (1, 3, 5, 10, 20):
            for how in ("mean", "max") if k > 1 else ("mean",):
                key = f"{name} k={k} {how}"
                out["pooling"][key] = figures(cal, test, pooled(cal, cal[name], k, how),
                                              pooled(test, test[name], k, how), args.false_alarm)
    for key, names in SETS.items():
        out["rules"][key] = rule(cal, test, names, args.false_alarm)
    for group in ("pooling", "rules"):
        for key, f in out[group].items():
            print(f"{key:24s} " + "  ".join(f"{k} {v:.3f}" for k, v in f.items()))
    if args.json:
        write_json(out, args.json)


if __name__ == "__main__":
    main()
