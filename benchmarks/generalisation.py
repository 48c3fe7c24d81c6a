"""Do the maps follow the sound on data the model was not trained on? (issue 10)

For each checkpoint (trained on one `soundloc synth` profile) and a folder made with another
profile (``soundloc synth --profile shift``), at each test clip's middle frame with the 3 s
centred window, for dot-product and cosine maps (the checkpoint's own kind is what it exports):

- LVS-protocol cIoU AP50, AUC, mean cIoU and pointing game against the sounding object's box;
- sounding-beats-silent: the rate, over (clip, silent object) pairs, at which the map's mean
  over the sounding object's box exceeds its mean over the silent object's box;
- each beside the same model with another clip's audio (of another class: ``shuffled``) and
  beside a centred Gaussian prior (``center``);
- the audio-dependence check (``soundloc.dependence``), and how often the top-1 informative
  moment (S_av) lies inside an interval where the source sounds.

    python benchmarks/generalisation.py --data runs/shift100 --run paper=runs/paper/last.pt \
        --run default=runs/default/last.pt --json benchmarks/results/generalisation.json
    python benchmarks/generalisation.py --combine a.json b.json --json all.json

``benchmarks/generalisation_runs.sh`` makes the data, trains every row and calls this.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from soundloc import evaluate, metrics
from soundloc.config import EVAL_SIZE, MAP_KINDS
from soundloc.data.annotations import find_video, read_annotations, read_vggss
from soundloc.dependence import other_clips
from soundloc.fileio import write_json
from soundloc.model.inference import Analyzer, Skipped, clip_dependence
from soundloc.localize import top_k_moments, upsample, window_map
from synthetic_benchmark import active


def sounding_beats_silent(maps: dict[str, np.ndarray], tracks: dict, frame: dict[str, int]) -> float:
    """Share of (clip, silent object) pairs where the map's mean over the sounding box is higher."""
    wins, pairs = 0, 0
    for clip_id, m in maps.items():
        p = upsample(m, EVAL_SIZE, EVAL_SIZE, dtype=np.float64)
        track = tracks[clip_id]
        boxes = [o["boxes"][frame[clip_id]] for o in track["objects"]]
        means = [p[metrics.union_gt_map([b]) > 0].mean() for b in boxes]
        sounding = track["sounding"]
        for k, mean in enumerate(means):
            if k != sounding:
                pairs += 1
                wins += means[sounding] > mean
    return wins / max(pairs, 1)


def score(maps: dict[str, np.ndarray], gt, tracks: dict, frame: dict[str, int]) -> dict:
    summary = evaluate.score_maps(maps, gt, "lvs").summary
    return {**summary, "sounding_beats_silent": sounding_beats_silent(maps, tracks, frame)}


def evaluate_run(ckpt: Path, data: Path, gt, tracks: dict, intervals: dict) -> dict:
    an = Analyzer(ckpt)
    skipped = Skipped()
    feats = list(an.each([(i, find_video(data, i)) for i in gt.ids], skipped))
    steps = an.config.window_steps
    frame = {f.clip_id: f.steps // 2 for f in feats}
    labels = {f.clip_id: tracks[f.clip_id]["label"] for f in feats}
    other = other_clips([labels[f.clip_id] for f in feats], len(feats))
    out = {"ckpt": str(ckpt), "config": {k: getattr(an.config, k) for k in ("head", "map_kind", "contrastive_weight")},
           "clips": len(feats), "skipped": skipped.items, "maps": {}}
    for kind in MAP_KINDS:
        for f in feats:
            f.map_kind = kind
        own = {f.clip_id: window_map(f.alpha(), frame[f.clip_id], steps) for f in feats}
        shuffled = {f.clip_id: window_map(f.alpha(feats[j].za), frame[f.clip_id], steps) for f, j in zip(feats, other)}
        out["maps"][kind] = {"deployed": kind == an.config.map_kind, "map": score(own, gt, tracks, frame),
                             "shuffled": score(shuffled, gt, tracks, frame),
                             "audio_dependence": clip_dependence(feats, steps, labels).to_dict()}
    top1 = [top_k_moments(f.scores(), 1)[0] for f in feats]
    out["top1_moment_in_active_interval"] = float(np.mean([active(intervals[f.clip_id], t / 10) for f, t in zip(feats, top1)]))
    return out


def markdown(result: dict) -> str:
    """The result as a Markdown table (one row per run and map kind; * = the kind it exports)."""
    c = result["center"]
    lines = ["| run | head | map | pointing (map / shuffled / centre) | sounding > silent (map / shuffled / centre) "
             "| AUC (map / shuffled / centre) | mean cIoU | AP50 | map change | top-1 moment active |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in result["runs"].items():
        for kind, m in r["maps"].items():
            a, b = m["map"], m["shuffled"]
            lines.append(f"| {name} | {r['config']['head']} | {kind}{' *' if m['deployed'] else ''} "
                         f"| {a['pointing']:.2f} / {b['pointing']:.2f} / {c['pointing']:.2f} "
                         f"| {a['sounding_beats_silent']:.2f} / {b['sounding_beats_silent']:.2f} / {c['sounding_beats_silent']:.2f} "
                         f"| {a['auc']:.3f} / {b['auc']:.3f} / {c['auc']:.3f} | {a['mean_ciou']:.3f} | {a['ap50']:.2f} "
                         f"| {m['audio_dependence']['map_change']:.3f} | {r['top1_moment_in_active_interval']:.2f} |")
    return "\n".join(lines)


def combine(paths: list[Path], out: Path | None) -> None:
    """One table from several runs' JSONs (scored on the same data, e.g. in parallel)."""
    parts = [json.loads(p.read_text()) for p in paths if p != out]
    result = {**parts[0], "runs": {name: r for part in parts for name, r in part["runs"].items()},
              "seconds": sum(p["seconds"] for p in parts)}
    if len({p["data"] for p in parts}) != 1:
        raise SystemExit(f"results scored on different data: {sorted({p['data'] for p in parts})}")
    print(markdown(result))
    if out:
        write_json(result, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="a `soundloc synth` folder (e.g. --profile shift)")
    ap.add_argument("--combine", type=Path, nargs="+", help="merge these result JSONs (same --data) into one table")
    ap.add_argument("--run", action="append", default=[], help="NAME=CHECKPOINT (repeatable)")
    ap.add_argument("--clips", type=int, default=0, help="only the first N test clips (0: all)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.combine:
        return combine(args.combine, args.json)
    if args.data is None:
        ap.error("--data is required (or --combine)")
    t0 = time.time()
    gt = read_vggss(args.data / "vggss.json")
    if args.clips:
        gt = read_annotations(args.data / "vggss.json", gt.ids[: args.clips])
    tracks = json.loads((args.data / "tracks.json").read_text())
    intervals = json.loads((args.data / "intervals.json").read_text())
    frame = {i: len(tracks[i]["objects"][0]["boxes"]) // 2 for i in gt.ids}
    result = {"data": str(args.data), "protocol": "lvs", "center": score(evaluate.center_maps(gt.ids), gt, tracks, frame),
              "runs": {}}
    for spec in args.run:
        name, _, ckpt = spec.partition("=")
        result["runs"][name] = evaluate_run(Path(ckpt), args.data, gt, tracks, intervals)
        r = result["runs"][name]
        for kind, m in r["maps"].items():
            print(f"{name:>12} {kind:>6}{'*' if m['deployed'] else ' '}  pointing {m['map']['pointing']:.2f} / "
                  f"{m['shuffled']['pointing']:.2f}  sounding>silent {m['map']['sounding_beats_silent']:.2f} / "
                  f"{m['shuffled']['sounding_beats_silent']:.2f}  AUC {m['map']['auc']:.3f}  "
                  f"change {m['audio_dependence']['map_change']:.3f}", flush=True)
    c = result["center"]
    print(f"{'center':>12}          pointing {c['pointing']:.2f}  sounding>silent {c['sounding_beats_silent']:.2f}  AUC {c['auc']:.3f}")
    result["seconds"] = round(time.time() - t0, 1)
    print(markdown(result))
    if args.json:
        write_json(result, args.json)


if __name__ == "__main__":
    main()
