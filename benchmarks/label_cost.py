"""Export one checkpoint twice for `soundloc bench`: the step graph as it was before the label
outputs (no ``logits_*``, no in-view calibration) and as it is now (issue 25), so that one bench
run times both side by side.

    python benchmarks/label_cost.py CKPT --out runs/cost [--calibration runs/export_cal]
    soundloc bench runs/cost/before runs/cost/now --backend onnxruntime-cpu --threads 1 --json ...

``--calibration``: copy that export's ``visibility`` into ``now`` (the localization stage then
computes the confidence too). ``--localize N``: also time the per-step localization stage
(``localize.StepLocalizer``: window, gate, box) N steps without and with the label heads'
window posteriors and the in-view confidence, alternating blocks of 100, on random 7x7 maps
and 10-class logits (no model: the runtime's own numpy code only).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from soundloc.export.onnx import export_model
from soundloc.model import classifier
from soundloc.model.checkpoint import load_checkpoint
from soundloc.runtime.bundle import write_manifest


def time_localize(steps: int, classes: int = 10, heads: tuple[str, ...] = ("vision", "audio", "av"),
                  visibility=None) -> dict:
    """Median ms per step of ``StepLocalizer.push`` without and with labels + confidence
    (``visibility``: the rule to time; default SLAVC's top25)."""
    from soundloc.localize import Labelling, StepLocalizer
    from soundloc.visibility import Visibility

    rng = np.random.default_rng(0)
    maps, logits = rng.normal(size=(steps, 7, 7)), rng.normal(size=(steps, classes * len(heads)))
    names = tuple(f"class {k}" for k in range(classes))
    plain = StepLocalizer(30, "trailing", 5, -40.0)
    # threshold 0: the confidence is computed on every step but hides no box, so both localizers
    # draw the same boxes (a rule that hid most random maps would skip the box and look cheaper)
    rule = replace(visibility or Visibility("top25", -1.0, 1.0, 0.5), threshold=0.0)
    full = StepLocalizer(30, "trailing", 5, -40.0, visibility=rule, labelling=Labelling(heads, names))
    times: dict[str, list[float]] = {"plain": [], "labels+confidence": []}
    for start in range(0, steps, 100):
        for name, loc, with_logits in (("plain", plain, False), ("labels+confidence", full, True)):
            for t in range(start, min(start + 100, steps)):
                t0 = time.perf_counter()
                loc.push(t, maps[t], 1.0, 0.01, logits[t] if with_logits else None)
                times[name].append((time.perf_counter() - t0) * 1000)
    return {k: {"p50_ms": float(np.median(v)), "mean_ms": float(np.mean(v)), "n": len(v)} for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--calibration", type=Path, help="a calibrated export whose visibility record to copy")
    ap.add_argument("--localize", type=int, default=0, help="also time the localization stage this many steps")
    args = ap.parse_args()
    if args.localize:
        print(json.dumps(time_localize(args.localize), indent=1))
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
