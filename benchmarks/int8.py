"""INT8 vs fp32 exports (issue 12): speed, map agreement, per-layer sensitivity, and accuracy.

    python benchmarks/int8.py --fp32 EXP32 --int8 EXP8 --clip real.mp4 --bench --sensitivity \
        --demo-data data/synth --json out.json

- ``--clip``: the streaming maps of both exports over every step of a real clip: peak cell
  identical (fraction of steps), binarised-map cIoU (median, min), max relative error;
- ``--interleaved N``: fp32 and int8 steps timed alternately, N each (robust to a shared CPU);
- ``--bench``: one ``soundloc bench`` run with both exports (onnxruntime CPU, same threads):
  step p50 at batch 1 and batched, the int8/fp32 ratio, streams per device;
- ``--sensitivity``: each Conv of the fp32 step graph quantized *alone* (the calibration's ranges,
  the CPU flavour) and its error on the maps: which layers int8 hurts;
- ``--demo-data``: the bundled demo model (step graph) quantized on the train clips of a
  ``soundloc synth`` folder, then pointing game and AP50 on its test clips, fp32 vs int8
  (maps: streamed step outputs, 3 s centred window at the middle frame, LVS protocol).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from soundloc.export.quantize import load_calibration, quantize_export, quantize_graph, _feeds
from soundloc.export.verify import map_figures, stream_inputs, stream_onnx
from soundloc.fileio import write_json
from soundloc.preprocess import file_inputs
from soundloc.runtime.bundle import read_bundle
from soundloc.runtime.engine import StepModel

DEMO = Path(__file__).resolve().parents[1] / "soundloc" / "assets" / "demo"


def agreement(fp32, int8, clip: Path) -> dict:
    video, mel = file_inputs(clip, fp32.config)
    s32, s8 = stream_onnx(fp32, video, mel), stream_onnx(int8, video, mel)
    scale = float(np.abs(s32["alpha"]).max())
    return {"clip": clip.name, "steps": int(video.shape[2]), **map_figures(s8["alpha"][0], s32["alpha"][0]),
            "alpha_max_rel_error": float(np.abs(s8["alpha"] - s32["alpha"]).max() / scale)}


def run_bench(fp32, int8, streams: int, threads: int, duration: float) -> dict:
    from soundloc import bench

    report = bench.run_bench([fp32.root, int8.root], backends=["onnxruntime-cpu"], streams=streams,
                             plan=bench.Plan(2.0, duration, 50), threads=threads, references=False,
                             progress=lambda s: print(s, flush=True))
    d = bench.report_dict(report)
    rows = {b["precision"]: {"p50_ms": b["step"]["median_ms"], "p90_ms": b["step"]["p90_ms"],
                             "streams_batch1": b["throughput"]["realtime_streams"],
                             "batched": None if not b["streams"] else {
                                 "batch": b["streams"]["batch"], "p50_ms": b["streams"]["call"]["median_ms"],
                                 "streams_per_device": b["streams"]["streams_per_device"]}}
            for b in d["backends"] if b["available"]}
    return {"rows": rows, "ratios": d["precision_ratios"], "load_avg": d["system"]["load_avg"],
            "load_avg_end": d["system"]["load_avg_end"], "cpu": d["system"]["cpu_model"], "threads": threads,
            "gmac_per_step": d["model_cost"].get("gmac_per_step")}


def interleaved(fp32, int8, threads: int, n: int) -> dict:
    """fp32 and int8 steps timed alternately (ABAB...), so load from other processes on a shared
    machine falls on both alike; the ratio of the medians is the figure to trust there."""
    models = {"fp32": StepModel.from_export(fp32, "onnxruntime-cpu", threads), "int8": StepModel.from_export(int8, "onnxruntime-cpu", threads)}
    rng = np.random.default_rng(0)
    size, mels = fp32.config.image_size, fp32.config.n_mels
    frame = rng.standard_normal((1, 3, size, size), dtype=np.float32)
    mel = rng.standard_normal((1, 10, mels), dtype=np.float32)
    states = {k: m.new_state(1) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(n + 5):
        for k, m in models.items():
            t0 = time.perf_counter()
            _, states[k] = m.step(frame, mel, np.ones(1, np.float32), states[k])
            if i >= 5:  # warm-up
                times[k].append(1000 * (time.perf_counter() - t0))
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"threads": threads, "steps": n, "p50_ms": med, "min_ms": {k: float(np.min(v)) for k, v in times.items()},
            "p50_ratio": med["int8"] / med["fp32"], "load_avg": list(os.getloadavg())}


def _stream_step(path: Path, bundle, video, mel) -> np.ndarray:
    """Streamed alphas of the step graph ``path`` (any graph with ``bundle``'s step interface)."""
    from soundloc.runtime.onnx_backend import OnnxRuntimeBackend

    model = StepModel(OnnxRuntimeBackend(path, "cpu"), bundle.config, bundle.lookahead_steps, bundle.state_specs)
    state, alphas = model.new_state(1), []
    for frame, m, valid in stream_inputs(video, mel, model.lookahead):
        out, state = model.step(frame, m, valid, state)
        if out.valid[0]:
            alphas.append(out.alpha[0])
    return np.stack(alphas)


def sensitivity(fp32, calib, clip: Path, steps: int) -> list[dict]:
    """Error on the streamed maps with only one Conv of the step graph quantized, for each Conv."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    video, mel = file_inputs(clip, fp32.config, seconds=steps / fp32.config.fps)
    ref = _stream_step(fp32.path("step"), fp32, video, mel)
    scale = float(np.abs(ref).max())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        quantize_graph(fp32.path("step"), scratch, _feeds(fp32, "step", calib))  # the ranges, once
        prepared = scratch / "step.prep.onnx"
        graph = onnx.load(str(prepared)).graph
        inits = {i.name: list(i.dims) for i in graph.initializer}
        for node in [n for n in graph.node if n.op_type == "Conv"]:
            one = scratch / "one.onnx"
            quantize_static(str(prepared), str(one), None, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_quantize=[node.name],
                            calibration_cache_path=str(scratch / "step.ranges.json"))
            a8 = _stream_step(one, fp32, video, mel)
            rows.append({"node": node.name, "weight": node.input[1], "shape": list(inits.get(node.input[1], [])),
                         "alpha_max_rel_error": float(np.abs(a8 - ref).max() / scale),
                         **map_figures(a8, ref)})
            print(rows[-1], flush=True)
    return sorted(rows, key=lambda r: -r["alpha_max_rel_error"])


def demo_accuracy(data: Path, max_clips: int | None) -> dict:
    """The demo model fp32 vs int8 (calibrated on the folder's train clips) on its test clips."""
    import csv

    from soundloc import evaluate
    from soundloc.data.annotations import read_vggss
    from soundloc.inference import find_video
    from soundloc.localize import window_map

    fp32 = read_bundle(DEMO)
    rows = list(csv.reader((data / "vggsound.csv").open()))
    train = [r[0] + f"_{int(r[1]):06d}" for r in rows if r[3] == "train"]
    with tempfile.TemporaryDirectory() as tmp:
        cal = Path(tmp) / "calib"
        cal.mkdir()
        for clip_id in train:
            path = find_video(data, clip_id)
            if path is not None:
                os.symlink(path, cal / path.name)
        calib = load_calibration(cal, fp32.config)
        int8 = quantize_export(fp32, Path(tmp) / "int8", calib)
        gt = read_vggss(data / "vggss.json")
        ids = list(gt.ids)[:max_clips] if max_clips else list(gt.ids)
        maps = {"fp32": {}, "int8": {}}
        steps = fp32.config.window_steps
        for clip_id in ids:
            video, mel = file_inputs(find_video(data, clip_id), fp32.config)
            for name, b in (("fp32", fp32), ("int8", int8)):
                alpha = _stream_step(b.path("step"), b, video, mel)
                maps[name][clip_id] = window_map(alpha, len(alpha) // 2, steps)
        gt = gt.subset(ids)
        out = {name: evaluate.score_maps(m, gt, "lvs", source=name).summary for name, m in maps.items()}
    return {"clips": len(ids), "calibration": calib.record(), **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fp32", type=Path)
    ap.add_argument("--int8", type=Path)
    ap.add_argument("--clip", type=Path, help="real clip for map agreement and sensitivity")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--interleaved", type=int, default=0, help="N fp32/int8 step pairs timed alternately")
    ap.add_argument("--sensitivity", action="store_true")
    ap.add_argument("--calib", type=Path, help="calibration folder for --sensitivity")
    ap.add_argument("--sensitivity-steps", type=int, default=30)
    ap.add_argument("--demo-data", type=Path)
    ap.add_argument("--demo-clips", type=int, default=None)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization's per-call advice
    out: dict = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    fp32 = read_bundle(args.fp32) if args.fp32 else None
    if fp32 is not None and args.int8:
        int8 = read_bundle(args.int8)
        out["int8_manifest"] = {k: int8.manifest.get(k) for k in ("precision", "quantization", "verify")}
        if args.clip:
            out["agreement"] = agreement(fp32, int8, args.clip)
            print("agreement", out["agreement"], flush=True)
        if args.interleaved:
            out["interleaved"] = interleaved(fp32, int8, args.threads, args.interleaved)
            print("interleaved", out["interleaved"], flush=True)
        if args.bench:
            out["bench"] = run_bench(fp32, int8, args.streams, args.threads, args.duration)
            print("bench", json.dumps(out["bench"], indent=1), flush=True)
    if fp32 is not None and args.sensitivity:
        calib = load_calibration(args.calib, fp32.config)
        out["sensitivity"] = sensitivity(fp32, calib, args.clip, args.sensitivity_steps)
    if args.demo_data:
        out["demo"] = demo_accuracy(args.demo_data, args.demo_clips)
        print("demo", json.dumps(out["demo"], indent=1, default=str), flush=True)
    if args.json:
        write_json(out, args.json)


if __name__ == "__main__":
    main()
