"""Choose the salient map's power g (issue 10): maps cos(V, z^A) * |V|^g for several g.

g = 0 is the cosine map, g = 1 the dot product's spatial shape. One checkpoint is read with
every g (without the contrastive term, training does not involve the map). For each clip of a
`soundloc synth` folder's test split, at the middle frame with the 3 s centred window: pointing
and sounding-beats-silent (``generalisation.py``'s scores), own audio and another class's.

    python benchmarks/salience_power.py --data runs/train400 --run default=runs/default/last.pt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from generalisation import score
from soundloc.data.annotations import find_video, read_vggss
from soundloc.dependence import other_clips
from soundloc.fileio import write_json
from soundloc.model.inference import Analyzer, Skipped
from soundloc.localize import powered_cosine_maps, window_map

POWERS = (0.0, 0.25, 0.5, 0.75, 1.0)


def run(ckpt: Path, data: Path) -> dict[str, dict]:
    gt = read_vggss(data / "vggss.json")
    tracks = json.loads((data / "tracks.json").read_text())
    an = Analyzer(ckpt)
    feats = list(an.each([(i, find_video(data, i)) for i in gt.ids], Skipped()))
    frame = {f.clip_id: f.steps // 2 for f in feats}
    other = other_clips([tracks[f.clip_id]["label"] for f in feats], len(feats))
    steps = an.config.window_steps

    def maps(g: float, shuffled: bool) -> dict[str, np.ndarray]:
        out = {}
        for f, j in zip(feats, other):
            za = feats[j].za if shuffled else f.za
            T = min(f.steps, len(za))
            out[f.clip_id] = window_map(powered_cosine_maps(f.V[:, :T], za[:T], g), frame[f.clip_id], steps)
        return out

    return {str(g): {"map": score(maps(g, False), gt, tracks, frame), "shuffled": score(maps(g, True), gt, tracks, frame)}
            for g in POWERS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--run", action="append", required=True, help="NAME=CHECKPOINT (repeatable)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    result = {"data": str(args.data), "runs": {}}
    for spec in args.run:
        name, _, ckpt = spec.partition("=")
        result["runs"][name] = run(Path(ckpt), args.data)
        for g, r in result["runs"][name].items():
            a, b = r["map"], r["shuffled"]
            print(f"{name:>12} g={float(g):.2f}  pointing {a['pointing']:.2f} / {b['pointing']:.2f}  "
                  f"sounding>silent {a['sounding_beats_silent']:.2f} / {b['sounding_beats_silent']:.2f}  "
                  f"AUC {a['auc']:.3f}", flush=True)
    if args.json:
        write_json(result, args.json)


if __name__ == "__main__":
    main()
