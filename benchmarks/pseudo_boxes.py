"""How good are `soundloc annotate`'s pseudo boxes? (issue 26)

For each clip of a `soundloc annotate` json made on `soundloc synth` clips, the IoU of its box
with the sounding object's true box (``tracks.json``) at the same frame, for

- ``top1``: annotate's box, at the teacher's top-1 informative moment (what annotate writes);
- ``mid``: the same procedure at the clip's middle frame (the teacher's centred 3 s map there);
- ``center``: the box of the centre prior (a centred Gaussian, thresholded the same way), against
  the true box at the middle frame;

each also on the clips whose middle frame is silent (``intervals.json``: the source pauses
there), where the middle frame's map has no sound to follow; and writes the true boxes at annotate's frames as a VGG-SS json (``--true-out``): the upper bound
a student trained with `--boxes` can reach.

    python benchmarks/pseudo_boxes.py --ckpt runs/teacher/last.pt --data data/train \
        --pseudo pseudo.json --true-out true.json --json results/pseudo_boxes.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from soundloc.config import EVAL_SIZE
from soundloc.data.annotations import find_video
from soundloc.fileio import write_json
from soundloc.localize import pseudo_box, window_map
from soundloc.metrics import center_prior
from soundloc.model.inference import Analyzer, Skipped
from synthetic_benchmark import active


def box_iou(a, b) -> float:
    """IoU of two normalised (x0, y0, x1, y1) boxes; 0 when either is missing."""
    if not a or not b:
        return 0.0
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def describe(ious: list[float]) -> dict:
    x = np.asarray(ious, np.float64)
    return {"clips": int(len(x)), "mean": float(x.mean()), "median": float(np.median(x)),
            "q25": float(np.quantile(x, 0.25)), "q75": float(np.quantile(x, 0.75)),
            "iou_at_least_0.5": float((x >= 0.5).mean()), "iou_at_least_0.3": float((x >= 0.3).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path, required=True, help="the teacher that annotate ran")
    ap.add_argument("--data", type=Path, required=True, help="the `soundloc synth` folder (tracks.json, videos/)")
    ap.add_argument("--pseudo", type=Path, required=True, help="annotate's json")
    ap.add_argument("--threshold", type=float, default=0.5, help="annotate's --threshold")
    ap.add_argument("--true-out", type=Path, help="write the true boxes at annotate's frames here (VGG-SS json)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    tracks = json.loads((args.data / "tracks.json").read_text())
    intervals = json.loads((args.data / "intervals.json").read_text())
    entries = json.loads(args.pseudo.read_text())
    an = Analyzer(args.ckpt)
    centre = pseudo_box(center_prior(EVAL_SIZE, EVAL_SIZE), EVAL_SIZE, EVAL_SIZE, args.threshold)
    ious: dict[str, list[float]] = {"top1": [], "mid": [], "center": [], "top1 (mid silent)": [],
                                    "mid (mid silent)": [], "center (mid silent)": []}
    true_entries, skipped = [], Skipped()
    for e in entries:
        track = tracks[e["file"]]
        source = track["objects"][int(track["sounding"])]["boxes"]
        feats = next(iter(an.each([(e["file"], find_video(args.data, e["file"]))], skipped)), None)
        if feats is None:
            continue
        t, mid = int(e["frame"]), feats.steps // 2
        ious["top1"].append(box_iou(e["bbox"][0] if e["bbox"] else None, source[t]))
        m = window_map(feats.alpha(), mid, an.config.window_steps)
        ious["mid"].append(box_iou(pseudo_box(m, EVAL_SIZE, EVAL_SIZE, args.threshold), source[mid]))
        ious["center"].append(box_iou(centre, source[mid]))
        if not active(intervals[e["file"]], mid / 10):
            for k in ("top1", "mid", "center"):
                ious[f"{k} (mid silent)"].append(ious[k][-1])
        true_entries.append({"file": e["file"], "class": track["label"], "frame": t, "bbox": [source[t]]})
    result = {"ckpt": str(args.ckpt), "pseudo": str(args.pseudo), "threshold": args.threshold,
              "centre_box": list(centre) if centre else None, "skipped": skipped.items,
              **{k: describe(v) for k, v in ious.items() if v}}
    for k in ious:
        if ious[k]:
            d = result[k]
            print(f"{k:19s} IoU with the sounding object's true box: mean {d['mean']:.3f}  median {d['median']:.3f}  "
                  f">=0.5 {d['iou_at_least_0.5']:.2f}  >=0.3 {d['iou_at_least_0.3']:.2f}  ({d['clips']} clips)")
    if args.true_out:
        write_json(true_entries, args.true_out)
    if args.json:
        write_json(result, args.json)


if __name__ == "__main__":
    main()
