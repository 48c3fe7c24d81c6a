"""What a stream shows when the sound's source is not in view, and which class it names (issue 25).

For a calibrated export (`soundloc calibrate`) and `soundloc synth --profile negatives` test
clips, every clip streams through the runtime exactly as `soundloc stream` runs it (trailing
3 s window, the default audio gate). Per step:

- clips whose source is off-screen, occluded or pure noise: the share of steps that got a box
  (target <= 10 %), with the in-view confidence and without it (the export's calibration
  dropped: today's behaviour); silent clips the same (the audio gate's job);
- clips whose source is in view, at steps where it sounds: the share with a box, with and
  without the confidence, and their ratio: the visible sources that keep their box
  (target >= 85 %);
- label top-1 (the drawn head: audio-visual; and the audio head) against the clip's class on
  those visible, sounding, audible steps.

``--labels-data DIR`` adds the label top-1 on another folder (e.g. the shift profile, every clip
visible; target >= 0.90).

    python benchmarks/visibility.py --export runs/export_cal --data data/negtest \
        --labels-data data/shift --json benchmarks/results/visibility.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections import defaultdict
from pathlib import Path

from soundloc.data.annotations import find_video, read_vggsound_csv
from soundloc.fileio import write_json
from soundloc.runtime.engine import StepModel
from soundloc.runtime.sources import StepSource
from soundloc.runtime.stream import StreamOptions, localize_stream


def stream_clip(model: StepModel, path: Path, options: StreamOptions) -> list:
    with StepSource(str(path), realtime=False, size=model.config.image_size) as src:
        return list(localize_stream(src, model, options))


def sounding(pts: float, intervals: list) -> bool:
    return any(a <= pts < b for a, b in intervals)


def folder_figures(model: StepModel, data: Path, split: str | None = "test") -> dict:
    """Per clip kind: steps, boxed steps with the confidence, boxed without it; label hits."""
    tracks = json.loads((data / "tracks.json").read_text())
    intervals = json.loads((data / "intervals.json").read_text())
    visibility = model.visibility
    counts: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    clips = 0
    for row in read_vggsound_csv(data / "vggsound.csv"):
        if split is not None and row.split != split:
            continue
        path, track = find_video(data, row.id), tracks[row.id]
        kind = track.get("negative") or "visible"
        results = {}
        for name, vis in (("with", visibility), ("without", None)):
            model.visibility = vis
            results[name] = stream_clip(model, path, StreamOptions())
        model.visibility = visibility
        clips += 1
        c = counts[kind]
        c["clips"] += 1
        for a, b in zip(results["with"], results["without"]):
            if kind == "visible" and not sounding(a.pts, intervals.get(row.id, [])):
                continue
            c["steps"] += 1
            c["boxed"] += a.box is not None
            c["boxed_without_confidence"] += b.box is not None
            if kind == "visible" and not a.gated and a.classes:
                c["label_steps"] += 1
                for head, top in a.classes.items():
                    c[f"label_hits_{head}"] += top[0][0] == row.label
    return {"clips": clips, "kinds": {k: dict(v) for k, v in counts.items()}}


def summarise(fig: dict) -> dict:
    k = fig["kinds"]
    neg = [k[n] for n in ("offscreen", "occluded", "noise") if n in k]
    out: dict = {}
    if neg:
        steps = sum(c["steps"] for c in neg)
        out["negatives_boxed"] = sum(c["boxed"] for c in neg) / steps
        out["negatives_boxed_without_confidence"] = sum(c["boxed_without_confidence"] for c in neg) / steps
        out["per_kind_boxed"] = {n: k[n]["boxed"] / k[n]["steps"] for n in k if k[n]["steps"]}
    if "visible" in k and k["visible"]["steps"]:
        v = k["visible"]
        out["visible_boxed"] = v["boxed"] / v["steps"]
        out["visible_boxed_without_confidence"] = v["boxed_without_confidence"] / v["steps"]
        out["visible_keep"] = v["boxed"] / max(v["boxed_without_confidence"], 1)
        if v.get("label_steps"):
            out["label_top1"] = {key[len("label_hits_"):]: v[key] / v["label_steps"]
                                 for key in v if key.startswith("label_hits_")}
            out["label_steps"] = int(v["label_steps"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", type=Path, required=True, help="a calibrated export directory")
    ap.add_argument("--data", type=Path, required=True, help="negatives-profile folder (its test split)")
    ap.add_argument("--labels-data", type=Path, help="another folder for the label top-1 (its test split)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    t0 = time.perf_counter()
    model = StepModel.from_export(args.export, backend="onnxruntime-cpu", threads=args.threads)
    if model.visibility is None:
        raise SystemExit(f"{args.export}: not calibrated (run `soundloc calibrate` first)")
    out = {"export": str(args.export), "visibility": dataclasses.asdict(model.visibility)}
    fig = folder_figures(model, args.data)
    out["negatives_profile"] = {**fig, "summary": summarise(fig)}
    print(json.dumps(out["negatives_profile"]["summary"], indent=1))
    if args.labels_data:
        fig = folder_figures(model, args.labels_data)
        out["labels_profile"] = {"data": str(args.labels_data), **fig, "summary": summarise(fig)}
        print(json.dumps(out["labels_profile"]["summary"], indent=1))
    out["seconds"] = round(time.perf_counter() - t0, 1)
    model.close()
    if args.json:
        write_json(out, args.json)


if __name__ == "__main__":
    main()
