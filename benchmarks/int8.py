"""INT8 vs fp32 exports (issue 12): speed, map agreement, per-layer sensitivity, and accuracy.

    python benchmarks/int8.py --fp32 EXP32 --int8 EXP8 --clip real.mp4 --bench --sensitivity \
        --demo-data data/synth --json out.json

- ``--clip``: the streaming maps of both exports over every step of a real clip: peak cell
  identical (fraction of steps), binarised-map cIoU (median, min), max relative error;
- ``--ties CLIP ...``: pooled over the clips, the int8 row's peak agreement and, for each step whose
  int8 peak moved beyond the row's reach, how far below its own peak fp32 scores that cell;
- ``--interleaved N``: fp32 and int8 steps timed alternately, N each (robust to a shared CPU);
- ``--bench``: one ``soundloc bench`` run with both exports (onnxruntime CPU, same threads):
  step p50 at batch 1 and batched, the int8/fp32 ratio, streams per device;
- ``--sensitivity``: the fp32 step graph quantized whole, then with each residual block (and the
  non-conv operators) kept float, then each conv of the blocks that cost most, then those blocks
  kept float cumulatively with the step time of each: which layers int8 hurts, at what speed;
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

from soundloc.export.quantize import calibration_feeds, load_calibration, quantize_export
from soundloc.export.verify import map_figures, peak_moves, stream_inputs, stream_onnx
from soundloc.fileio import write_json
from soundloc.preprocess import file_inputs
from soundloc.runtime.bundle import read_bundle
from soundloc.runtime.engine import StepModel

DEMO = Path(__file__).resolve().parents[1] / "soundloc" / "assets" / "demo"


def agreement(fp32, int8, clip: Path) -> dict:
    video, mel = file_inputs(clip, fp32.config)
    s32, s8 = stream_onnx(fp32, video, mel), stream_onnx(int8, video, mel)
    scale = float(np.abs(s32["alpha"]).max())
    return {"clip": clip.name, "steps": int(video.shape[2]), **map_figures(s8["alpha"][0], s32["alpha"][0], *_reach(s32["alpha"])),
            **near_ties(s8["alpha"][0], s32["alpha"][0]), "feature_norms": feature_norms(fp32, video, mel),
            "alpha_max_rel_error": float(np.abs(s8["alpha"] - s32["alpha"]).max() / scale)}


def feature_norms(fp32, video: np.ndarray, mel: np.ndarray) -> dict:
    """The fp32 video features V the map is made of, per cell (offline graph): the spread of
    their norms against the largest element, which sets int8's one scale for the tensor. A cell
    whose channels get one or two int8 levels loses its direction, which the cosine map reads."""
    from soundloc.export.verify import offline_onnx

    V = offline_onnx(fp32, video, mel)["V"]  # (1, C, T, h, w)
    norms = np.linalg.norm(V, axis=1).ravel()
    top, channels = float(np.abs(V).max()), int(V.shape[1])
    return {"cell_norm_min": float(norms.min()), "cell_norm_median": float(np.median(norms)),
            "cell_norm_max": float(norms.max()), "element_max_abs": top, "channels": channels,
            # int8 levels (of a symmetric scale, top / 127) per channel of the median cell, root-mean-square
            "median_cell_levels": float(np.median(norms) / np.sqrt(channels) / (top / 127))}


def ties(fp32, int8, clips: list[Path]) -> dict:
    """Pooled over ``clips``: the int8 row's peak figures, and for every step whose int8 peak moved
    beyond the row's reach, how far below its own peak fp32 scores int8's peak cell (a fraction of
    fp32's map range at that step: below the row's ``peak_tie`` the move is between fp32's ties)."""
    moved, below, err = [], [], []
    for clip in clips:
        video, mel = file_inputs(clip, fp32.config)
        a32, a8 = stream_onnx(fp32, video, mel)["alpha"][0], stream_onnx(int8, video, mel)["alpha"][0]
        m, b = peak_moves(a8, a32)
        ref, got = a32.reshape(len(a32), -1), a8.reshape(len(a8), -1)
        moved, below = moved + list(m), below + list(b)
        err += list(np.abs(got - ref).max(1) / (ref.max(1) - ref.min(1)))
    reach, tie = _reach(a32)
    moved, below = np.array(moved), np.array(below)
    far = moved > reach
    return {"clips": [c.name for c in clips], "steps": len(moved), "reach_cells": reach, "tie": tie,
            "peak_agrees": float(np.mean(~far | (below <= tie))), "peak_within_reach": float(np.mean(~far)),
            "moved_beyond_reach": int(far.sum()), "below_peak_of_those": sorted(round(float(b), 4) for b in below[far]),
            "error_over_range_median": float(np.median(err))}


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


def _step_model(path: Path, bundle, threads: int | None = None) -> StepModel:
    """The step graph file ``path`` (any graph with ``bundle``'s step interface) as a StepModel."""
    from soundloc.runtime.onnx_backend import OnnxRuntimeBackend

    return StepModel(OnnxRuntimeBackend(path, "cpu", threads), bundle.config, bundle.lookahead_steps,
                     bundle.state_specs)


def interleaved(fp32, int8, threads: int, n: int, int8_step: Path | None = None) -> dict:
    """fp32 and int8 steps timed alternately (ABAB...), so load from other processes on a shared
    machine falls on both alike; the ratio of the medians is the figure to trust there.
    ``int8_step``: time this step graph file instead of ``int8``'s."""
    models = {"fp32": _step_model(fp32.path("step"), fp32, threads),
              "int8": _step_model(int8_step or int8.path("step"), fp32, threads)}
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
    model = _step_model(path, bundle)
    state, alphas = model.new_state(1), []
    for frame, m, valid in stream_inputs(video, mel, model.lookahead):
        out, state = model.step(frame, m, valid, state)
        if out.valid[0]:
            alphas.append(out.alpha[0])
    return np.stack(alphas)


def _reach(maps: np.ndarray) -> tuple[int, float]:
    """The int8 row's peak reach in cells of these maps (0 on 7x7, 1 on 14x14) and its tie."""
    from soundloc.deploy.tolerance import tolerance_for

    row = tolerance_for("int8")
    return row.peak_cells(maps.shape[-1]), row.peak_tie


def near_ties(maps: np.ndarray, reference: np.ndarray) -> dict:
    """How flat the reference maps are, and whether int8 moves the peak only between near-ties:
    the reference's top-1 minus top-2 cell and its max minus min cell (medians over steps, as
    fractions of its max |alpha|: the binarised map thresholds the min-max normalised map, so an
    error is read against the range), int8's error per step against that range, and the peak
    agreement counted only on steps whose top-2 gap exceeds twice int8's largest error there."""
    ref, got = reference.reshape(len(reference), -1), maps.reshape(len(maps), -1)
    scale = float(np.abs(ref).max())
    top2 = np.sort(ref, axis=1)[:, -2:]
    gap = top2[:, 1] - top2[:, 0]
    span = ref.max(axis=1) - ref.min(axis=1)
    err = np.abs(got - ref).max(axis=1)
    clear = gap > 2 * err  # no error of int8's size can swap these cells' order
    same = got.argmax(1) == ref.argmax(1)
    return {"top2_gap_median": float(np.median(gap) / scale), "range_median": float(np.median(span) / scale),
            "error_median": float(np.median(err) / scale), "error_over_range_median": float(np.median(err / span)),
            "steps_clear": int(clear.sum()),
            "peak_agreement_clear": float(same[clear].mean()) if clear.any() else None,
            "peak_misses_in_near_ties": int((~same & ~clear).sum()), "peak_misses": int((~same).sum())}


def conv_places(model) -> dict[str, str]:
    """Conv node -> where it sits in the network ("video.layer3.0.conv1"), read from the exporter's
    module scope on the ReLU the conv feeds (the step graph computes its convs functionally, so
    they carry no module scope of their own); convs that feed no ReLU are "head"."""
    from collections import defaultdict

    consumers = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node)
    kernels = {i.name: tuple(i.dims[2:]) for i in model.graph.initializer}
    places = {}
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        frontier, relu = list(conv.output), None
        while frontier and relu is None:
            nxt = [c for c in consumers[frontier.pop(0)]]
            relu = next((c for c in nxt if c.op_type == "Relu"), None)
            frontier += [o for c in nxt for o in c.output]
        scope = "" if relu is None else next((p.value for p in relu.metadata_props if p.key == "namespace"), "")
        where = [seg.split(":")[0][len("model."):] for seg in scope.split("/") if seg.startswith("model.")]
        if not where:
            places[conv.name] = "head"
        elif where[-1].endswith(".conv1.2"):
            places[conv.name] = where[-1][:-len(".2")]
        elif where[-1].endswith(".relu"):
            one = all(k == 1 for k in kernels.get(conv.input[1], (3,)))
            places[conv.name] = where[-1][:-len("relu")] + ("downsample" if one else "conv2")
        else:
            places[conv.name] = where[-1].rsplit(".", 1)[0]  # the stem: "video.stem"
    return places


def _block(place: str) -> str:
    return place if place in ("head",) or place.endswith("stem") else place.rsplit(".", 1)[0]


SENSITIVITY_PARTS = ("blocks", "convs", "cumulative", "branches")


def sensitivity(fp32, calib, clip: Path, steps: int, work: Path, threads: int, time_pairs: int,
                per_conv: int, parts: tuple[str, ...] = SENSITIVITY_PARTS) -> dict:
    """Which layers int8 costs the maps, measured on the streamed step graph (the CPU flavour,
    the calibration's ranges): everything quantized; then ("blocks") each residual block (and the
    non-conv operators) kept float alone: what keeping it float buys back; ("convs") each conv of
    the ``per_conv`` blocks that buy back most, alone; ("cumulative") the four blocks that buy back
    most kept float together, one more at a time; ("branches") the whole video or audio network
    kept float. Rows kept float cumulatively or by branch, and the all-int8 row, also time the
    step (``time_pairs`` alternating fp32/int8 steps)."""
    import onnx

    from soundloc.export.quantize import float_nodes, prepare_graph, quantize_flavour

    video, mel = file_inputs(clip, fp32.config, seconds=steps / fp32.config.fps)
    ref = _stream_step(fp32.path("step"), fp32, video, mel)
    scale = float(np.abs(ref).max())
    work.mkdir(parents=True, exist_ok=True)
    ranges = work / "step.ranges.json"
    prepared = prepare_graph(fp32.path("step"), work)
    graph = onnx.load(str(prepared)).graph
    keep = float_nodes(onnx.load(str(prepared)))
    if not ranges.is_file():
        quantize_flavour(prepared, work / "calibrated.onnx", "onnx", ranges, keep,
                         calibration_feeds(fp32, "step", calib))
    places = {k: v for k, v in conv_places(onnx.load(str(fp32.path("step")))).items()}
    shapes = {i.name: list(i.dims) for i in graph.initializer}
    convs = {n.name: (places.get(n.name, "?"), shapes.get(n.input[1])) for n in graph.node if n.op_type == "Conv"}
    others = [n.name for n in graph.node if n.op_type not in ("Conv", "Relu") and n.name not in keep]

    def trial(label: str, floats: list[str], timed: bool = False) -> dict:
        dst = work / "trial.onnx"
        quantize_flavour(prepared, dst, "onnx", ranges, keep + floats)
        a8 = _stream_step(dst, fp32, video, mel)
        row = {"kept_float": label, "nodes": len(floats), "alpha_max_rel_error": float(np.abs(a8 - ref).max() / scale),
               **map_figures(a8, ref, *_reach(ref)), **near_ties(a8, ref)}
        if timed:
            row["time"] = interleaved(fp32, None, threads, time_pairs, int8_step=dst)
        print(row, flush=True)
        return row

    out = {"clip": clip.name, "steps": len(ref), "convs": {k: {"place": p, "shape": s} for k, (p, s) in convs.items()},
           "all_int8": trial("nothing (all int8)", [], timed=bool(time_pairs))}
    blocks: dict[str, list[str]] = {}
    for name, (place, _) in convs.items():
        blocks.setdefault(_block(place), []).append(name)
    if "branches" in parts:
        out["branch_float"] = [trial(f"{branch} network", [c for c, (p, _) in convs.items() if p.startswith(branch)],
                                     timed=bool(time_pairs)) for branch in ("video", "audio")]
    if not {"blocks", "convs", "cumulative"} & set(parts):
        return out
    rows = [trial(block, names) for block, names in blocks.items()] + [trial("non-conv operators", others)]

    def gain(r):
        return (r["peak_agrees"], r["peak_within_reach"], r["ciou_median"], -r["alpha_max_rel_error"])

    rows.sort(key=gain, reverse=True)
    out["block_float"] = rows
    top = [r["kept_float"] for r in rows if r["kept_float"] in blocks][:per_conv]
    if "convs" in parts:
        out["conv_float"] = sorted((trial(f"{convs[c][0]} ({c})", [c]) for b in top for c in blocks[b]),
                                   key=gain, reverse=True)
    if "cumulative" in parts:
        out["cumulative"], floats = [], []
        for r in rows[:4]:
            floats += blocks.get(r["kept_float"], others)
            label = " + ".join(c["kept_float"] for c in rows[:len(out["cumulative"]) + 1])
            out["cumulative"].append(trial(label, list(floats), timed=bool(time_pairs)))
    return out


def demo_accuracy(data: Path, max_clips: int | None) -> dict:
    """The demo model fp32 vs int8 (calibrated on the folder's train clips) on its test clips."""
    import csv

    from soundloc import evaluate
    from soundloc.data.annotations import read_vggss
    from soundloc.model.inference import find_video
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
    ap.add_argument("--ties", type=Path, nargs="+", help="clips whose steps are pooled: where int8's peak moves, "
                    "and how far below its own peak fp32 scores that cell")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--interleaved", type=int, default=0, help="N fp32/int8 step pairs timed alternately")
    ap.add_argument("--sensitivity", action="store_true")
    ap.add_argument("--calib", type=Path, help="calibration folder for --sensitivity")
    ap.add_argument("--sensitivity-steps", type=int, default=100)
    ap.add_argument("--sensitivity-work", type=Path, default=Path("int8-sensitivity"),
                    help="scratch folder; the calibrated ranges there are reused by a rerun")
    ap.add_argument("--sensitivity-per-conv", type=int, default=2, help="blocks whose convs are tried one by one")
    ap.add_argument("--sensitivity-time", type=int, default=20, help="fp32/int8 step pairs timed per cumulative row")
    ap.add_argument("--sensitivity-parts", default=",".join(SENSITIVITY_PARTS),
                    help=f"comma-separated, of: {', '.join(SENSITIVITY_PARTS)}")
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
        if args.ties:
            out["ties"] = ties(fp32, int8, args.ties)
            print("ties", out["ties"], flush=True)
        if args.interleaved:
            out["interleaved"] = interleaved(fp32, int8, args.threads, args.interleaved)
            print("interleaved", out["interleaved"], flush=True)
        if args.bench:
            out["bench"] = run_bench(fp32, int8, args.streams, args.threads, args.duration)
            print("bench", json.dumps(out["bench"], indent=1), flush=True)
    if fp32 is not None and args.sensitivity:
        calib = load_calibration(args.calib, fp32.config)
        out["sensitivity"] = sensitivity(fp32, calib, args.clip, args.sensitivity_steps, args.sensitivity_work,
                                         args.threads, args.sensitivity_time, args.sensitivity_per_conv,
                                         tuple(args.sensitivity_parts.split(",")))
    if args.demo_data:
        out["demo"] = demo_accuracy(args.demo_data, args.demo_clips)
        print("demo", json.dumps(out["demo"], indent=1, default=str), flush=True)
    if args.json:
        write_json(out, args.json)


if __name__ == "__main__":
    main()
