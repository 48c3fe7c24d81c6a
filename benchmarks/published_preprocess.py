"""How far soundloc's default input path is from the published localizers' own preprocessing
(issue 27), on the shared real VGGSound clip, per family and map variant.

    python benchmarks/published_preprocess.py --frame PHOTO.jpg --wav ../shared/data/vggsound/FwVYUHKoLtQ_000034.wav \
        --work /tmp/pp --json benchmarks/results/published_preprocess.json

The clip as the authors distribute VGG-SS (``frames/<id>.jpg`` + ``audio/<id>.wav``) and as a
video (``videos/<id>.mp4``: the photo held for the wav's length at 25 fps, H.264 + AAC written by
soundloc's encoder). The reference is ``--preprocess authors`` on the frames/audio layout, which
tests/test_published.py shows equal to the authors' own code (their tensors exactly, their
scored map to <= 1e-4). Each row: the map `soundloc eval` scores (224x224, min-max normalised;
``metrics.prediction``) against the reference: max abs difference, correlation, and whether the
peak falls in the same map cell (7x7; LVS and SSL-Align 14x14). Models: seeded random weights in each family's checkpoint
layout (tests/published_weights.py) with the object prior (none for LVS and SSL-Align); the maps mean nothing, their
differences measure the inputs. Also the inputs themselves: the 224 px frame (grey levels) and the
spectrogram (max abs difference).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

CLIP = "FwVYUHKoLtQ_000034"
MODELS = [("ezvsl", ""), ("fnac", "bilinear"), ("fnac", "bicubic"), ("slavc", "online"), ("slavc", "momentum"),
          ("lvs", "cosine"), ("sslalign", "vggss"), ("sslalign", "flickr")]
NO_PRIOR = ("lvs", "sslalign")  # no object prior there (soundloc.model.published)
PROTOCOL = {"lvs": "lvs", "sslalign": "lvs"}  # how `eval` upsamples a default-path map (the others: ezvsl)


def layouts(frame: Path, wav: Path, work: Path) -> tuple[Path, Path]:
    """The authors' layout and a video folder of the same frame and audio."""
    from PIL import Image
    from scipy.io import wavfile

    from soundloc.encode import write_mp4

    still, video = work / "still", work / "video"
    for d in (still / "frames", still / "audio", video / "videos"):
        d.mkdir(parents=True, exist_ok=True)
    shutil.copy(frame, still / "frames" / f"{CLIP}.jpg")
    shutil.copy(wav, still / "audio" / f"{CLIP}.wav")
    rgb = np.asarray(Image.open(frame).convert("RGB"))
    rgb = rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2]  # H.264 4:2:0 wants even sides
    rate, samples = wavfile.read(wav)
    audio = samples.astype(np.float32) / 32768
    frames = np.repeat(rgb[None], int(len(audio) / rate * 25), axis=0)
    write_mp4(video / "videos" / f"{CLIP}.mp4", frames, 25, audio, rate)
    return still, video


def checkpoints(work: Path, models: list[str] | None = None) -> dict[str, Path]:
    import torch
    from published_weights import ezvsl_state, lvs_state, prior_state, save_authors, save_lvs, slavc_state

    from soundloc.model.published import import_ezvsl

    torch.save(prior_state(), work / "resnet18.pth")
    save_authors(work / "ezvsl.pth", ezvsl_state("module.", seed=0))
    save_authors(work / "slavc.pth", slavc_state("module.", seed=0))
    save_lvs(work / "lvs.pth", lvs_state("module.", seed=0))
    out = {}
    for family, variant in MODELS:
        name = f"{family}-{variant}" if variant else family
        if models and name not in models:
            continue
        src = work / {"slavc": "slavc.pth", "lvs": "lvs.pth", "sslalign": "lvs.pth"}.get(family, "ezvsl.pth")
        prior = None if family in NO_PRIOR else work / "resnet18.pth"
        import_ezvsl(src, work / f"{name}.pt", prior, 0.4, family, "authors", variant)
        out[name] = work / f"{name}.pt"
    return out


def scored(m: np.ndarray, family: str) -> np.ndarray:
    from soundloc.metrics import prediction

    return prediction(m, PROTOCOL.get(family, "ezvsl"))[0]


def compare(a: np.ndarray, ref: np.ndarray, grid: int = 7) -> dict:
    def cell(m: np.ndarray) -> tuple[int, int]:
        return tuple(int(i) // (224 // grid) for i in np.unravel_index(np.argmax(m), m.shape))

    return {"max_abs": round(float(np.abs(a - ref).max()), 4), "corr": round(float(np.corrcoef(a.ravel(), ref.ravel())[0, 1]), 5),
            "same_peak_cell": cell(a) == cell(ref), "peak_cell": cell(a), "ref_peak_cell": cell(ref)}


def input_figures(ckpt: Path, still: Path, video: Path, with_video: bool = True) -> dict:
    import dataclasses

    from soundloc.families import IMAGENET_MEAN, IMAGENET_STD, ezvsl_file_inputs
    from soundloc.model.checkpoint import load_checkpoint
    from soundloc.stills import find_clip

    cfg = load_checkpoint(ckpt)[0].config
    std, mean = np.asarray(IMAGENET_STD)[:, None, None], np.asarray(IMAGENET_MEAN)[:, None, None]

    def grey(v):  # normalised frame -> 0..255 levels
        return (v * std + mean) * 255

    ref_v, ref_s = ezvsl_file_inputs(find_clip(still, CLIP), cfg)
    rows = {}
    for name, clip, pre in (("default, frames/audio", find_clip(still, CLIP), "soundloc"),
                            ("default, mp4", find_clip(video, CLIP), "soundloc"),
                            ("authors, mp4", find_clip(video, CLIP), "authors")):
        if "mp4" in name and not with_video:
            continue
        v, s = ezvsl_file_inputs(clip, dataclasses.replace(cfg, preprocess=pre))
        t = v.shape[2] // 2
        d = np.abs(grey(v[0, :, t]) - grey(ref_v[0, :, 0]))
        rows[name] = {"frame_mean_levels": round(float(d.mean()), 3), "frame_max_levels": round(float(d.max()), 2),
                      "spec_max_abs": round(float(np.abs(s[0, t] - ref_s[0, 0]).max()), 5)}
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frame", type=Path, required=True, help="a photograph (jpg) standing for the clip's frame")
    ap.add_argument("--wav", type=Path, required=True, help="the clip's 16 kHz wav")
    ap.add_argument("--work", type=Path, required=True, help="scratch folder")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--models", nargs="*", help="only these (e.g. lvs-cosine sslalign-vggss); default all")
    ap.add_argument("--no-video", action="store_true", help="only the frames/audio layout (the mp4 rows run "
                    "the model on all 250 frames: minutes per model on a loaded 2-core machine)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from soundloc.model.inference import maps_from_checkpoint

    args.work.mkdir(parents=True, exist_ok=True)
    still, video = layouts(args.frame, args.wav, args.work)
    ckpts = checkpoints(args.work, args.models)
    results = {"inputs": {f: input_figures(ckpts[n], still, video, not args.no_video) for f, n in
                          (("ezvsl", "ezvsl"), ("lvs", "lvs-cosine"), ("sslalign", "sslalign-vggss")) if n in ckpts},
               "maps": {}}
    for name, ckpt in ckpts.items():
        family = name.split("-")[0]
        maps = {}
        for row, folder, pre in (("reference", still, "authors"), ("default, frames/audio", still, "soundloc"),
                                 ("default, mp4", video, "soundloc"), ("authors, mp4", video, "authors")):
            if "mp4" in row and args.no_video:
                continue
            maps[row] = scored(maps_from_checkpoint(ckpt, folder, [CLIP], progress=False, preprocess=pre)[0][CLIP],
                               family)
        grid = 14 if family in NO_PRIOR else 7
        results["maps"][name] = {row: compare(m, maps["reference"], grid) for row, m in maps.items()
                                 if row != "reference"}
    print(json.dumps(results, indent=1))
    if args.json:
        from soundloc.fileio import write_json

        write_json(results, args.json)


if __name__ == "__main__":
    main()
