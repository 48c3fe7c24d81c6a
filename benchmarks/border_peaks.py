"""Where do an ezvsl student's maps peak? The share of clips whose middle-frame map has its
maximum on the border ring (issue 26: from noise, EZ-VSL's max over locations can be satisfied
by the zero-padded border cells, which carry each frame's identity without finding anything).

    python benchmarks/border_peaks.py --data SYNTH_DIR --run NAME=CKPT [--run ...] [--clips 12] [--json OUT]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from soundloc.families import ezvsl_file_inputs
from soundloc.fileio import write_json
from soundloc.model.checkpoint import load_checkpoint


def border_share(ckpt: str, videos: list[Path]) -> dict:
    """Peaks of the middle frame's own-audio cosine map on the outermost ring, over ``videos``."""
    model, _ = load_checkpoint(ckpt)
    on_border = 0
    for video in videos:
        frames, specs = ezvsl_file_inputs(video, model.config)
        t = frames.shape[2] // 2
        with torch.no_grad():
            V = model.image(torch.from_numpy(frames[:, :, t]))
            za = model.audio(torch.from_numpy(specs[:, t][:, None]))
            m = model.maps(V, za, None)[0].numpy()
        y, x = np.unravel_index(m.argmax(), m.shape)
        on_border += int(y in (0, m.shape[0] - 1) or x in (0, m.shape[1] - 1))
    h, w = m.shape
    return {"clips": len(videos), "peaks_on_border": on_border, "border_cells": h * w - (h - 2) * (w - 2), "cells": h * w}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="a `soundloc synth` folder")
    ap.add_argument("--run", action="append", required=True, help="NAME=CHECKPOINT (repeatable)")
    ap.add_argument("--clips", type=int, default=12, help="the first N videos by name")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    videos = sorted((args.data / "videos").glob("*.mp4"))[: args.clips]
    results = {}
    for spec in args.run:
        name, ckpt = spec.split("=", 1)
        results[name] = border_share(ckpt, videos)
        r = results[name]
        print(f"{name}: {r['peaks_on_border']}/{r['clips']} peaks on the border ring ({r['border_cells']} of {r['cells']} cells)")
    if args.json:
        write_json(results, args.json)


if __name__ == "__main__":
    main()
