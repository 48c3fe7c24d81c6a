"""Export time, file sizes and verify errors of the full-size model (fp32 and fp16).

    python benchmarks/export_cost.py --out /tmp/export_cost --json export_cost.json

The model is MC3-18 + the audio net at full width with randomised BatchNorm statistics (so
the check exercises every layer); weights do not change export time, size or exactness.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from soundloc.config import Config
from soundloc.export.pipeline import export_checkpoint
from soundloc.export.verify import randomise_batchnorm, verify
from soundloc.fileio import write_json
from soundloc.model.checkpoint import save_checkpoint
from soundloc.model.classifier import AVClassifier


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/export_cost"))
    ap.add_argument("--steps", type=int, default=100, help="clip length for the verify run")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = AVClassifier(Config()).eval()
    randomise_batchnorm(model)
    ckpt = args.out / "full.pt"
    args.out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(ckpt, model)
    result = {"machine": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads()}
    for precision in ("fp32", "fp16"):
        t0 = time.perf_counter()
        bundle = export_checkpoint(ckpt, args.out / precision, precision=precision)
        seconds = time.perf_counter() - t0
        report = verify(bundle, model, steps=args.steps)
        result[precision] = {
            "export_seconds": round(seconds, 1), "per_graph_seconds": bundle.manifest["export_seconds"],
            "bytes": {n: g["files"]["onnx"]["bytes"] for n, g in bundle.manifest["graphs"].items()},
            "verify": report.as_dict()}
        print(precision, json.dumps(result[precision], indent=1))
    if args.json:
        write_json(result, args.json)


if __name__ == "__main__":
    main()
