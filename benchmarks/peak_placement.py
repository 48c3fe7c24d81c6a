"""Where does the map's peak land, and how well does the map point? (issue 24)

For each checkpoint, on a `soundloc synth` folder's test clips, at the middle frame with the
3 s centred window and the map kind the checkpoint exports, the peak of the map upsampled to
224x224 is put in the first of these places that holds it:

- ``sounding``: inside the sounding object's box;
- ``silent``: inside another object's box (a silent object or decoy);
- ``next_to_sounding``: background within 25 % of the sounding box's size around it;
- ``between``: background inside the rectangle spanned by the sounding box and a silent one;
- ``edge``: background within 10 % of the frame's side from its border;
- ``elsewhere``: the rest of the background.

Beside it, each figure for the same model with another clip's audio of another class
(``shuffled``) and for a centred Gaussian (``center``), the scores of ``generalisation.py``
(pointing, sounding-beats-silent, mean cIoU, AP50, AUC), and the live box
(``localize.pseudo_box`` at threshold 0.5) around the largest thresholded segment and around
the segment holding the peak: mean IoU with the sounding box and the share with IoU >= 0.5.
``by``: pointing split by the clip's sound family, object count, the sounding object's texture
and height, and whether the audio head names the clip's class (``breakdown``).

    python benchmarks/peak_placement.py --data runs/heldout100 --run default=runs/default/last.pt \\
        --json benchmarks/results/peak_placement.json

Choose settings on the training profile's validation clips (``--data`` the training folder:
its test split), never on the held-out profile.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from generalisation import score

from soundloc import evaluate, localize
from soundloc.config import EVAL_SIZE, SALIENCE_POWER
from soundloc.data.annotations import find_video, read_vggss
from soundloc.dependence import other_clips
from soundloc.fileio import write_json
from soundloc.localize import BOX_SEGMENTS, pseudo_box, upsample, window_map
from soundloc.model import classifier
from soundloc.model.inference import Analyzer, Skipped, window_outputs

PLACES = ("sounding", "silent", "next_to_sounding", "between", "edge", "elsewhere")
NEXT_TO = 0.25  # of the sounding box's width / height, on each side
EDGE = 0.10  # of the frame's side


def _inside(x: float, y: float, box, grow: float = 0.0) -> bool:
    x0, y0, x1, y1 = box
    gw, gh = grow * (x1 - x0), grow * (y1 - y0)
    return x0 - gw <= x <= x1 + gw and y0 - gh <= y <= y1 + gh


def place(x: float, y: float, boxes: list, sounding: int) -> str:
    """Which of ``PLACES`` the point (x, y) (frame fractions) is in; ``boxes``: every object's."""
    src = boxes[sounding]
    others = [b for k, b in enumerate(boxes) if k != sounding]
    if _inside(x, y, src):
        return "sounding"
    if any(_inside(x, y, b) for b in others):
        return "silent"
    if _inside(x, y, src, NEXT_TO):
        return "next_to_sounding"
    spans = [(min(src[0], b[0]), min(src[1], b[1]), max(src[2], b[2]), max(src[3], b[3])) for b in others]
    if any(_inside(x, y, s) for s in spans):
        return "between"
    if min(x, y, 1 - x, 1 - y) < EDGE:
        return "edge"
    return "elsewhere"


def peak_xy(m: np.ndarray) -> tuple[float, float]:
    """The peak of a map upsampled to the evaluation size, as frame fractions (pixel centres)."""
    up = upsample(m, EVAL_SIZE, EVAL_SIZE, dtype=np.float64) if m.shape != (EVAL_SIZE, EVAL_SIZE) else m
    r, c = np.unravel_index(int(np.argmax(up)), up.shape)
    return (c + 0.5) / up.shape[1], (r + 0.5) / up.shape[0]


def clip_places(maps: dict[str, np.ndarray], tracks: dict, frame: dict[str, int]) -> dict[str, str]:
    """Which of ``PLACES`` each clip's peak lands in."""
    out = {}
    for clip_id, m in maps.items():
        track = tracks[clip_id]
        boxes = [o["boxes"][frame[clip_id]] for o in track["objects"]]
        out[clip_id] = place(*peak_xy(m), boxes, track["sounding"])
    return out


def placements(places: dict[str, str]) -> dict[str, float]:
    """Share of clips whose peak lands in each of ``PLACES``."""
    return {k: list(places.values()).count(k) / max(len(places), 1) for k in PLACES}


def _height_bin(box) -> str:
    h = box[3] - box[1]
    return "<0.22" if h < 0.22 else "0.22-0.28" if h < 0.28 else ">=0.28"


def breakdown(places: dict[str, str], tracks: dict, frame: dict[str, int], heard: dict[str, str | None]) -> dict:
    """Pointing and the silent-object share by what each clip shows and plays: its sound family,
    object count, the sounding object's texture and box height (frame fractions), and whether
    the audio head names the clip's class at the scored window (``heard``: its top class, None
    for a model without one). Which of a held-out profile's differences costs the peak: a
    diagnosis, not a choice of settings. ``places``: ``clip_places`` of the maps."""
    rows: dict[str, dict[str, list[str]]] = {}
    for clip_id, where in places.items():
        track = tracks[clip_id]
        src = track["objects"][track["sounding"]]
        keys = {"sound": track.get("sound", "steady"), "objects": str(len(track["objects"])),
                "texture": src.get("texture", "not recorded"), "height": _height_bin(src["boxes"][frame[clip_id]]),
                "audio_class": "no audio head" if heard[clip_id] is None else
                "right" if heard[clip_id] == track["label"] else "wrong"}
        for factor, value in keys.items():
            rows.setdefault(factor, {}).setdefault(value, []).append(where)
    return {factor: {v: {"n": len(w), "pointing": w.count("sounding") / len(w), "silent": w.count("silent") / len(w)}
                     for v, w in sorted(values.items())} for factor, values in rows.items()}


def box_iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def boxes(maps: dict[str, np.ndarray], tracks: dict, frame: dict[str, int]) -> dict[str, dict[str, float]]:
    """The live box of each segment rule against the sounding object's box."""
    out = {}
    for segment in BOX_SEGMENTS:
        ious = []
        for clip_id, m in maps.items():
            track = tracks[clip_id]
            box = pseudo_box(m, EVAL_SIZE, EVAL_SIZE, 0.5, segment)
            ious.append(0.0 if box is None else box_iou(box, track["objects"][track["sounding"]]["boxes"][frame[clip_id]]))
        out[segment] = {"mean_iou": float(np.mean(ious)), "iou50": float(np.mean(np.array(ious) >= 0.5))}
    return out


def full(maps: dict[str, np.ndarray], gt, tracks: dict, frame: dict[str, int],
         places: dict[str, str] | None = None) -> dict:
    places = clip_places(maps, tracks, frame) if places is None else places
    return {**score(maps, gt, tracks, frame), "placement": placements(places), "boxes": boxes(maps, tracks, frame)}


def reread(an: Analyzer, **overrides) -> None:
    """Read a model's weights under other settings of the same parameters: ``fine_map=True``
    (layer4 unstrided: a 7x7 model's 14x14 map without retraining) or another ``image_size``
    (the networks are convolutional: frames resized to it, a map of size / 8 cells)."""
    from soundloc.model.classifier import AVClassifier

    model = AVClassifier(an.config.replace(**overrides)).to(an.device).eval()
    model.load_state_dict(an.model.state_dict())
    an.model, an.config = model, model.config


def evaluate_run(ckpt: Path, data: Path, gt, tracks: dict, fine: bool = False, image_size: int | None = None) -> dict:
    an = Analyzer(ckpt)
    overrides = {**({"fine_map": True} if fine else {}), **({"image_size": image_size} if image_size else {})}
    if overrides:
        reread(an, **overrides)
    feats = list(an.each([(i, find_video(data, i)) for i in gt.ids], Skipped()))
    steps = an.config.window_steps
    frame = {f.clip_id: f.steps // 2 for f in feats}
    other = other_clips([tracks[f.clip_id]["label"] for f in feats], len(feats))
    own = {f.clip_id: window_map(f.alpha(), frame[f.clip_id], steps) for f in feats}
    shuffled = {f.clip_id: window_map(f.alpha(feats[j].za), frame[f.clip_id], steps) for f, j in zip(feats, other)}
    heard = {f.clip_id: window_outputs(an, f, frame[f.clip_id], steps)["classes"].get("audio") for f in feats}
    places = clip_places(own, tracks, frame)
    cfg = an.config
    return {"ckpt": str(ckpt), "clips": len(feats), "map_size": list(next(iter(own.values())).shape),
            "config": {k: getattr(cfg, k) for k in ("head", "map_kind", "contrastive_weight", "contrastive_map", "fine_map", "image_size")},
            "map": full(own, gt, tracks, frame, places), "shuffled": full(shuffled, gt, tracks, frame),
            "by": breakdown(places, tracks, frame, heard)}


def _line(name: str, r: dict) -> str:
    p = r["placement"]
    return (f"{name:>16}  pointing {r['pointing']:.2f}  sounding>silent {r['sounding_beats_silent']:.2f}  "
            f"cIoU {r['mean_ciou']:.3f}  AP50 {r['ap50']:.2f}  | peak: " +
            "  ".join(f"{k} {v:.2f}" for k, v in p.items()) +
            "  | box IoU>=0.5: " + "  ".join(f"{k} {v['iou50']:.2f}" for k, v in r["boxes"].items()))


def set_salience_power(power: float) -> None:
    """Both implementations of the salient map (torch's, which scores here, and numpy's, which
    streams) read the module constant at call time."""
    classifier.SALIENCE_POWER = localize.SALIENCE_POWER = power


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="a `soundloc synth` folder (its test split is scored)")
    ap.add_argument("--run", action="append", default=[],
                    help="NAME=CHECKPOINT (repeatable); NAME=CHECKPOINT:fine reads it with fine_map on")
    ap.add_argument("--salience-power", type=float, default=None,
                    help=f"read salient maps with this power of |V| instead of {SALIENCE_POWER} (an exploration of the "
                         "read; the constant is not a checkpoint setting, so this sets it for this process)")
    ap.add_argument("--image-size", type=int, default=None,
                    help="read every run's weights at this input size (a multiple of 16) instead of its checkpoint's")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    t0 = time.time()
    if args.salience_power is not None:
        set_salience_power(args.salience_power)
    gt = read_vggss(args.data / "vggss.json")
    tracks = json.loads((args.data / "tracks.json").read_text())
    frame = {i: len(tracks[i]["objects"][0]["boxes"]) // 2 for i in gt.ids}
    center = evaluate.center_maps(gt.ids)
    result = {"data": str(args.data), "protocol": "lvs", "clips": len(gt.ids), "salience_power": classifier.SALIENCE_POWER,
              "center": full(center, gt, tracks, frame), "runs": {}}
    print(_line("center", result["center"]), flush=True)
    for spec in args.run:
        name, _, ckpt = spec.partition("=")
        fine = ckpt.endswith(":fine")
        r = result["runs"][name] = evaluate_run(Path(ckpt.removesuffix(":fine")), args.data, gt, tracks, fine, args.image_size)
        print(_line(name, r["map"]), flush=True)
        print(_line(f"{name} shuffled", r["shuffled"]), flush=True)
        for factor, values in r["by"].items():
            print(f"{'':>16}  by {factor}: " + "  ".join(f"{v} {x['pointing']:.2f} (n={x['n']})" for v, x in values.items()))
    result["seconds"] = round(time.time() - t0, 1)
    if args.json:
        write_json(result, args.json)


if __name__ == "__main__":
    main()
