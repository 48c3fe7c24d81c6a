"""Export one checkpoint twice for `soundloc bench`: the step graph as it was before the label
outputs (no ``logits_*``, no in-view calibration) and as it is now (issue 25), so that one bench
run times both side by side.

    python benchmarks/label_cost.py CKPT --out runs/cost [--calibration runs/export_cal]
    soundloc bench runs/cost/before runs/cost/now --backend onnxruntime-cpu --threads 1 --json ...

``--calibration``: copy that export's ``visibility`` into ``now`` (the localization stage then
computes the confidence too).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from soundloc.export.onnx import export_model
from soundloc.model import classifier
from soundloc.model.checkpoint import load_checkpoint
from soundloc.runtime.bundle import write_manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--calibration", type=Path, help="a calibrated export whose visibility record to copy")
    args = ap.parse_args()
    model, _ = load_checkpoint(args.ckpt)
    now = export_model(model, args.out / "now", graphs=("step",))
    if args.calibration:
        cal = json.loads((args.calibration / "soundloc.json").read_text())
        manifest = dict(now.manifest, visibility=cal["visibility"])
        write_manifest(now.root, manifest)
    heads = classifier.AVClassifier.label_heads
    classifier.AVClassifier.label_heads = property(lambda self: ())  # the step graph before issue 25
    try:
        export_model(model, args.out / "before", graphs=("step",))
    finally:
        classifier.AVClassifier.label_heads = heads
    print(f"wrote {args.out / 'before'} and {args.out / 'now'}")


if __name__ == "__main__":
    main()
