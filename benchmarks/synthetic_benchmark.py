"""The paper's pipeline measured on the synthetic benchmark's held-out clips (issue 3, issue 5).

For a trained checkpoint and a `soundloc synth` folder:
- localization at the middle frame (3 s centred window), LVS protocol: the paper's map vs a
  centred Gaussian prior vs shuffled audio (each clip's video with the next clip's audio);
- informative moments: how often the top-1 S_av moment lies inside an active-sound interval,
  against the mid frame;
- pseudo boxes at the top-1 moment: rate of IoU >= 0.5 with the sounding object's true box;
- gating of the live runtime (export -> onnxruntime -> trailing window): false-positive rate
  (a map shown during a silent gap) and false-negative rate (hidden while the source sounds).

    python benchmarks/synthetic_benchmark.py --ckpt runs/small/best.pt --data data/synth500 --json out.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


from soundloc import evaluate
from soundloc.config import EVAL_SIZE
from soundloc.data.annotations import find_video, read_vggss
from soundloc.fileio import write_json
from soundloc.model.inference import Analyzer, Skipped
from soundloc.localize import pseudo_box, top_k_moments, window_map


GATE_SECONDS = 0.5  # StreamOptions' default span of the audio-level gate


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def active(intervals: list[list[float]], t: float) -> bool:
    return any(s <= t < e for s, e in intervals)


def localization(an: Analyzer, feats: list, gt) -> dict:
    steps = an.config.window_steps
    maps = {f.clip_id: window_map(f.alpha(), f.steps // 2, steps) for f in feats}
    shuffled = {f.clip_id: window_map(f.alpha(feats[(k + 1) % len(feats)].za), f.steps // 2, steps)
                for k, f in enumerate(feats)}
    out = {}
    for name, m in (("paper_map", maps), ("center_prior", evaluate.center_maps(gt.ids)), ("shuffled_audio", shuffled)):
        out[name] = evaluate.score_maps(m, gt, "lvs", source=name).summary
    return out


def moments_and_boxes(feats: list, tracks: dict, intervals: dict, steps: int) -> dict:
    top1_in, mid_in, gap_top1, gap_mid, hits, boxes = 0, 0, 0, 0, 0, 0
    gap_clips = 0
    for f in feats:
        ivs, T = intervals[f.clip_id], f.steps
        t1, mid = top_k_moments(f.scores(), 1)[0], T // 2
        a1, am = active(ivs, t1 / 10), active(ivs, mid / 10)
        top1_in, mid_in = top1_in + a1, mid_in + am
        if len(ivs) != 1 or ivs[0] != [0.0, T / 10]:
            gap_clips += 1
            gap_top1, gap_mid = gap_top1 + a1, gap_mid + am
        box = pseudo_box(window_map(f.alpha(), t1, steps), EVAL_SIZE, EVAL_SIZE)
        track = tracks[f.clip_id]
        truth = track["objects"][track["sounding"]]["boxes"][min(t1, len(track["objects"][0]["boxes"]) - 1)]
        if box is not None:
            boxes += 1
            hits += iou(box, truth) >= 0.5
    n = len(feats)
    return {"clips": n, "clips_with_silent_gaps": gap_clips,
            "top1_moment_in_active_interval": top1_in / n, "mid_frame_in_active_interval": mid_in / n,
            "top1_in_active_gap_clips": gap_top1 / max(gap_clips, 1), "mid_in_active_gap_clips": gap_mid / max(gap_clips, 1),
            "pseudo_box_iou50_rate": hits / n, "pseudo_box_found_rate": boxes / n}


def gating(ckpt: Path, data: Path, ids: list[str], intervals: dict, gate_db: float) -> dict:
    """Stream each clip through an exported step graph with the live defaults; score the gate."""
    from soundloc.export.pipeline import export_checkpoint
    from soundloc.runtime.backend_spec import load_step_model
    from soundloc.runtime.sources import StepSource
    from soundloc.runtime.stream import StreamOptions, localize_stream

    with tempfile.TemporaryDirectory() as tmp:
        model = load_step_model(export_checkpoint(ckpt, Path(tmp) / "export").root, "onnxruntime-cpu")
        fp = fn = silent = sounding = settled = fp_settled = 0
        for clip_id in ids:
            ivs = intervals[clip_id]
            with StepSource(str(find_video(data, clip_id))) as src:
                for r in localize_stream(src, model, StreamOptions(gate_db=gate_db)):
                    if active(ivs, r.pts):
                        sounding += 1
                        fn += r.gated
                        continue
                    silent += 1
                    fp += not r.gated
                    # silent for at least the gate's own 0.5 s span: the gate has had time to react
                    if not active(ivs, r.pts - GATE_SECONDS + 1e-6) and r.pts >= GATE_SECONDS:
                        settled += 1
                        fp_settled += not r.gated
    return {"gate_db": gate_db, "gate_seconds": GATE_SECONDS, "silent_steps": silent, "sounding_steps": sounding,
            "false_positive_rate": fp / max(silent, 1), "false_negative_rate": fn / max(sounding, 1),
            "silent_steps_past_gate_span": settled,
            "false_positive_rate_past_gate_span": fp_settled / max(settled, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True, help="a `soundloc synth` folder")
    ap.add_argument("--gate-db", type=float, default=-40.0)
    ap.add_argument("--gating-clips", type=int, default=40)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    t0 = time.time()
    gt = read_vggss(args.data / "vggss.json")
    tracks = json.loads((args.data / "tracks.json").read_text())
    intervals = json.loads((args.data / "intervals.json").read_text())
    an = Analyzer(args.ckpt)
    skipped = Skipped()
    feats = list(an.each([(i, find_video(args.data, i)) for i in gt.ids], skipped))
    result = {"ckpt": str(args.ckpt), "data": str(args.data), "test_clips": len(feats), "skipped": skipped.items,
              "protocol": "lvs", "localization": localization(an, feats, gt),
              "moments_and_boxes": moments_and_boxes(feats, tracks, intervals, an.config.window_steps)}
    gap_ids = [i for i in gt.ids if intervals[i] != [[0.0, 10.0]]][: args.gating_clips]
    result["gating"] = gating(args.ckpt, args.data, gap_ids, intervals, args.gate_db)
    result["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(result, indent=2))
    if args.json:
        write_json(result, args.json)


if __name__ == "__main__":
    main()
