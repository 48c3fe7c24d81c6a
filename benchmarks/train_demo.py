"""Train and export the demo model into soundloc/assets/demo/.

    python benchmarks/train_demo.py --data data/synth500 --run runs/demo --train
    python benchmarks/train_demo.py --data data/synth500 --run runs/demo        # export only

Synthesises the benchmark if --data is empty (500 clips of 10 s, seed 1, 10 classes), trains
the `small` config with a training recipe (default: `soundloc train`'s default) on 3 s crops, and
exports the streaming step graph of the last epoch (fp32, ONNX, with its class outputs). The
asset shipped today: `--train --epochs 10` (2026-12-06, 2-core VM, about 35 min), then
`soundloc calibrate soundloc/assets/demo --data NEG` with `soundloc synth NEG --clips 120 --seed 11
--seconds 6 --profile negatives --val-fraction 0.5` (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from soundloc.config import MAP_KINDS, RECIPES, Config
from soundloc.export.onnx import export_model
from soundloc.fileio import sha256_file
from soundloc.model.checkpoint import load_checkpoint

ASSETS = Path(__file__).resolve().parents[1] / "soundloc" / "assets" / "demo"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--train", action="store_true", help="train first (else use RUN/last.pt)")
    ap.add_argument("--recipe", default="default", help="default or paper (soundloc.config.RECIPES)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="Config override over the recipe's, as `soundloc train --set` (repeatable)")
    ap.add_argument("--zoom", type=float, help="scale augmentation, as `soundloc train --zoom` (default: its default)")
    ap.add_argument("--device", default="auto", help="training device: auto, cpu, cuda")
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers")
    ap.add_argument("--map-kind", choices=MAP_KINDS, help="map the export computes (default: the recipe's); "
                    "without the contrastive term, training does not depend on it, so a run of another "
                    "map kind exports as this one")
    ap.add_argument("--out", type=Path, default=ASSETS)
    args = ap.parse_args()
    if not (args.data / "vggsound.csv").is_file():
        from soundloc.data.synth import make_synthetic_dataset

        make_synthetic_dataset(args.data, num_clips=500, seed=1, seconds=10.0, num_classes=10)
    if args.train:
        from soundloc.train import train

        zoom = {} if args.zoom is None else {"zoom": args.zoom}  # else TrainOptions' own default
        train(args.data, args.run, preset="small", recipe=args.recipe,
              overrides=Config.parse_overrides(args.overrides), epochs=args.epochs, batch_size=16,
              workers=args.workers, crop_seconds=3.0, flip=True, cache=True, device=args.device, **zoom)
    ckpt = args.run / "last.pt"  # the full schedule (val accuracy saturates early, so best.pt is an early epoch)
    model, data = load_checkpoint(ckpt)
    kind = args.map_kind or RECIPES[args.recipe][0]["map_kind"]
    if kind != model.config.map_kind:
        if model.config.contrastive_weight > 0:
            raise SystemExit(f"{ckpt} was trained with the contrastive term on {model.config.map_kind} maps; "
                             f"it cannot be exported as {kind}")
        model.config = model.config.replace(map_kind=kind)
    bundle = export_model(model, args.out, graphs=("step",), gate=data.get("gate"),
                          checkpoint={"file": "demo (benchmarks/train_demo.py)", "sha256": sha256_file(ckpt),
                                      "epoch": str(data.get("epoch"))})
    size = sum(g["files"]["onnx"]["bytes"] for g in bundle.manifest["graphs"].values())
    print(f"exported {ckpt} (epoch {data.get('epoch')}) to {args.out}: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
