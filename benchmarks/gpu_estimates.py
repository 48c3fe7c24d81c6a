"""Expected GPU step latency ON PAPER (estimates, not measurements) for a full-size export.

    soundloc export --preset paper --out /tmp/paper32
    python benchmarks/gpu_estimates.py /tmp/paper32 --json benchmarks/results/gpu_estimates.json

From the step graph it counts MACs per step (batch 1) and convolution nodes, then for each
device and precision prints: the compute floor (FLOPs / dense tensor-core peak), a planning
figure at an assumed utilisation (batch-1 convolutions on 7x7..56x56 maps use a small share
of a large GPU), and the launch floor (one kernel per convolution, uncaptured vs replayed as a
CUDA graph). The larger of compute and launch is the estimate. Replace every figure with a
measurement: `soundloc bench DIR --backend tensorrt --json bench.json` on the device.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import onnx

from soundloc.bench.targets import Target
from soundloc.bench.references import model_macs
from soundloc.fileio import write_json
from soundloc.runtime.bundle import random_weights_note, read_bundle

# Dense tensor-core peaks (NVIDIA datasheets list sparse figures = 2x these), TFLOP/s or TOP/s.
# H100: SXM5; L4: PCIe 72 W; AGX Orin 64GB: GPU only (no DLA), MAXN 1.3 GHz; Orin Nano 8GB:
# 40 sparse INT8 TOPS (625 MHz), 67 with JetPack 6.2's "super" mode (1.02 GHz).
DEVICES = {
    "H100 SXM": {"fp16": 989.0, "int8": 1979.0},
    "L4": {"fp16": 121.0, "int8": 242.0},
    "Jetson AGX Orin 64GB": {"fp16": 42.5, "int8": 85.0},
    "Jetson Orin Nano 8GB (super)": {"fp16": 16.7, "int8": 33.5},
}
UTILISATION = 0.15  # assumed share of peak for batch-1 convs of this size (planning figure only)
LAUNCH_US = {"uncaptured": 5.0, "cuda graph": 1.5}  # per kernel, data-centre GPU + driver, typical


def conv_nodes(path: Path) -> int:
    return sum(n.op_type == "Conv" for n in onnx.load(str(path), load_external_data=False).graph.node)


def estimate(macs: int, kernels: int) -> list[dict]:
    flops = 2 * macs
    rows = []
    for device, peaks in DEVICES.items():
        for precision, tera in peaks.items():
            compute_ms = flops / (tera * 1e12) * 1e3
            planned_ms = compute_ms / UTILISATION
            launch = {k: kernels * us / 1e3 for k, us in LAUNCH_US.items()}
            rows.append({"device": device, "precision": precision, "peak_tera": tera,
                         "compute_floor_ms": round(compute_ms, 4), "at_utilisation_ms": round(planned_ms, 3),
                         "launch_floor_ms": {k: round(v, 3) for k, v in launch.items()},
                         "estimate_ms": round(max(planned_ms, launch["cuda graph"]), 3),
                         "estimate_uncaptured_ms": round(max(planned_ms, launch["uncaptured"]), 3)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", type=Path, help="a full-size export directory (soundloc export --preset paper)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    bundle = read_bundle(args.export, verify_files=False)
    cost = model_macs(Target(args.export, None, bundle.config))
    kernels = conv_nodes(bundle.path("step"))
    rows = estimate(cost["macs_per_step"], kernels)
    print("ESTIMATES ON PAPER, not measurements:", random_weights_note(bundle.manifest) or "trained weights")
    print(f"step graph: {cost['gmac_per_step']} GMAC ({2 * cost['macs_per_step'] / 1e9:.2f} GFLOP) per step at "
          f"batch 1, {kernels} Conv nodes; assumed utilisation {UTILISATION:.0%}; launch {LAUNCH_US} us/kernel")
    print(f"{'device':<30}{'prec':<6}{'peak T':>8}{'floor ms':>10}{'@util ms':>10}{'launch ms':>11}"
          f"{'graph ms':>10}{'estimate':>10}")
    for r in rows:
        print(f"{r['device']:<30}{r['precision']:<6}{r['peak_tera']:>8.1f}{r['compute_floor_ms']:>10.4f}"
              f"{r['at_utilisation_ms']:>10.3f}{r['launch_floor_ms']['uncaptured']:>11.3f}"
              f"{r['launch_floor_ms']['cuda graph']:>10.3f}{r['estimate_ms']:>10.3f}")
    if args.json:
        write_json({"estimates_not_measurements": True, "export": str(args.export),
                    "macs_per_step": cost["macs_per_step"], "conv_nodes": kernels,
                    "utilisation_assumed": UTILISATION, "launch_us": LAUNCH_US, "rows": rows}, args.json)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
