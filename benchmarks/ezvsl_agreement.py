"""Offline vs streaming maps of an imported EZ-VSL model, and the cost of each network (issue 16).

    python benchmarks/ezvsl_agreement.py --ckpt ezvsl.pt --export ezvsl_export/ --videos data/ --json out.json

Cost: GMAC of one call of the export's ``video`` (image) and ``audio`` graphs at batch 1 (counted
on the graph, ``soundloc.bench.onnx_macs``) and their time on onnxruntime CPU (``run_timed``):
the two halves of one step.

Per clip, every step: the offline map (what `soundloc eval` computes: PyTorch on the frame with
the 3 s of audio centred on it) against the runtime's maps from the export streamed through
``StepSource`` + ``Localizer`` (onnxruntime CPU), with the ``centered`` window (the same audio
window: should agree to float rounding) and the ``trailing`` one (the last 3 s: what a live view
shows now, 1.4 s earlier). Figures: max abs difference of the min-max normalised maps, the
fraction of steps whose peak cell is the same, the median and min binarised-map cIoU
(``soundloc.export.verify.map_figures``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from soundloc.bench import Plan, onnx_macs, run_timed
from soundloc.export.verify import map_figures
from soundloc.families import family_of
from soundloc.fileio import write_json
from soundloc.model.inference import Analyzer, list_videos
from soundloc.localize import normalise
from soundloc.runtime.bundle import read_bundle
from soundloc.runtime.engine import StepModel, open_backend
from soundloc.runtime.sources import StepSource
from soundloc.runtime.stream import StreamOptions, localize_stream


def streamed(model: StepModel, clip: Path, window: str) -> np.ndarray:
    with StepSource(str(clip), size=model.config.image_size) as source:
        results = list(localize_stream(source, model, StreamOptions(window=window, gate_db=None)))
    return np.stack([r.heatmap for r in results])


def clip_figures(an: Analyzer, model: StepModel, clip_id: str, clip: Path) -> dict:
    offline = np.stack([normalise(m) for m in an.features(clip, clip_id).alpha()])
    out = {"steps": len(offline)}
    for window in ("centered", "trailing"):
        live = streamed(model, clip, window)
        out[window] = {"max_abs_diff": float(np.abs(live - offline).max()), **map_figures(live, offline)}
    return out


def network_cost(export: Path, plan: Plan) -> dict:
    """Per network: GMAC and ms (onnxruntime CPU, batch 1) of one step's call."""
    bundle = read_bundle(export)
    cfg, fam = bundle.config, family_of(bundle.config)
    rng = np.random.default_rng(0)
    inputs = {"video": {"frame": rng.standard_normal((1, 3, cfg.image_size, cfg.image_size), dtype=np.float32)},
              "audio": {fam.audio_input: rng.standard_normal((1, *fam.audio_shape(cfg)), dtype=np.float32)}}
    out = {}
    for graph, feed in inputs.items():
        net = open_backend(bundle, graph, "onnxruntime-cpu")
        stats = run_timed(lambda laps: net.run(feed), plan).stats()
        net.close()
        out[graph] = {"gmac": round(onnx_macs(bundle.path(graph)) / 1e9, 3), "ms_p50": round(stats.median, 2),
                      "ms_mean": round(stats.mean, 2), "n": stats.n}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path, required=True, help="imported model (soundloc import ezvsl)")
    ap.add_argument("--export", type=Path, required=True, help="its export directory")
    ap.add_argument("--videos", type=Path, required=True, help="folder of clips (or with videos/)")
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds each network is timed at least")
    args = ap.parse_args()
    cost = network_cost(args.export, Plan(1.0, args.duration, 10))
    print(json.dumps(cost, indent=2))
    an = Analyzer(args.ckpt, device="cpu")
    model = StepModel.from_export(args.export, backend="onnxruntime-cpu")
    per = {cid: clip_figures(an, model, cid, path) for cid, path in list_videos(args.videos)[:args.clips]}
    summary = {w: {"max_abs_diff": max(c[w]["max_abs_diff"] for c in per.values()),
                   "peak_agreement": float(np.mean([c[w]["peak_agreement"] for c in per.values()])),
                   "ciou_median": float(np.median([c[w]["ciou_median"] for c in per.values()])),
                   "ciou_min": min(c[w]["ciou_min"] for c in per.values())} for w in ("centered", "trailing")}
    report = {"ckpt": str(args.ckpt), "export": str(args.export), "cost": cost, "clips": per, "summary": summary}
    print(json.dumps(summary, indent=2))
    if args.json:
        write_json(report, args.json)


if __name__ == "__main__":
    main()
