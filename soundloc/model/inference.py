"""Offline analysis of whole clips with a checkpoint: the maps behind `soundloc eval`, and the
paper's two applications (§5) -- informative moments and pseudo boxes (`soundloc moments`,
`soundloc annotate`).

A clip is run once through the backbones (the whole clip, any length, time never
downsampled); every later question -- the map at the annotated frame, the top-k moments, the
box at the best moment, the map with another clip's audio -- is answered from those features.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import EVAL_SIZE, steps_to_seconds
from ..data.annotations import find_video, list_videos
from ..dependence import AudioDependence, audio_dependence, check_steps, other_clips
from ..errors import UsageError
from ..families import blend_prior, family_of
from ..fileio import write_json
from ..labels import class_name, softmax
from ..visibility import heard_seen
from ..localize import moment_scores, pseudo_box, step_maps, top_k_moments, window_bounds, window_map
from ..media import MediaError
from .checkpoint import load_checkpoint

@dataclass
class ClipFeatures:
    """Backbone outputs of one clip: V (D, T, h, w), z^V (T, D), z^A (T, D)."""

    clip_id: str
    V: np.ndarray
    zv: np.ndarray
    za: np.ndarray
    map_kind: str = "dot"
    prior: np.ndarray | None = None  # (T, h, w) a family's object prior (EZ-VSL), blended by prior_alpha
    prior_alpha: float | None = None

    @property
    def steps(self) -> int:
        return self.zv.shape[0]

    def alpha(self, za: np.ndarray | None = None) -> np.ndarray:
        """(T, h, w) per-step maps; ``za`` from another clip gives the shuffled-audio baseline."""
        za = self.za if za is None else za
        T = min(self.steps, len(za))
        maps = step_maps(self.V[:, :T], za[:T], self.map_kind)
        return blend_prior(maps, None if self.prior is None else self.prior[:T], self.prior_alpha)

    def scores(self) -> np.ndarray:
        return moment_scores(self.zv, self.za)


@dataclass
class Skipped:
    items: list[tuple[str, str]] = field(default_factory=list)  # (clip id, one-line reason)

    def add(self, clip_id: str, reason: str) -> None:
        self.items.append((clip_id, reason))


class Analyzer:
    """A checkpoint ready to turn video files into ``ClipFeatures``."""

    def __init__(self, ckpt: str | Path, device: str = "auto") -> None:
        dev = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
        self.model, self.checkpoint = load_checkpoint(ckpt, map_location=dev)
        self.device = torch.device(dev)
        self.config = self.model.config

    def features(self, path: Path, clip_id: str | None = None) -> ClipFeatures:
        video, audio = family_of(self.config).file_inputs(path, self.config)
        with torch.inference_mode():
            f = self.model.features(torch.from_numpy(video).to(self.device), torch.from_numpy(audio).to(self.device))
        return ClipFeatures(clip_id or path.stem, f.V[0].float().cpu().numpy(), f.zv[0].float().cpu().numpy(),
                            f.za[0].float().cpu().numpy(), self.config.map_kind,
                            None if f.prior is None else f.prior[0].float().cpu().numpy(), self.config.prior_alpha)

    def classify(self, feats: ClipFeatures) -> str:
        """The audio-visual head's top class name (or index) for a clip ("" for a model without classes)."""
        if not hasattr(self.model, "heads"):
            return ""
        with torch.inference_mode():
            logits = self.model.heads(torch.from_numpy(feats.zv)[None].to(self.device),
                                      torch.from_numpy(feats.za)[None].to(self.device))
        k = int(logits["av"].argmax())
        names = self.config.class_names
        return names[k] if names else str(k)

    def each(self, clips: Iterable[tuple[str, Path | None]], skipped: Skipped) -> Iterator[ClipFeatures]:
        """Features of each (id, path); missing or broken files are skipped with their reason."""
        for clip_id, path in clips:
            if path is None:
                skipped.add(clip_id, "video not found")
                continue
            try:
                yield self.features(path, clip_id)
            except MediaError as e:
                skipped.add(clip_id, str(e))




def clip_dependence(feats: list[ClipFeatures], steps: int, labels: Mapping[str, str] | None = None) -> AudioDependence:
    """The audio-dependence check (``soundloc.dependence``) on clips' maps at their top-1
    moment, each against its map with another clip's audio (of another class where ``labels``
    say so)."""
    other = other_clips([labels.get(f.clip_id, "") for f in feats] if labels else None, len(feats))
    at = [check_steps(f.scores())[0] for f in feats]
    own = [window_map(f.alpha(), t, steps) for f, t in zip(feats, at)]
    swapped = [window_map(f.alpha(feats[j].za), t, steps) for f, j, t in zip(feats, other, at)]
    return audio_dependence(own, swapped)


def maps_from_checkpoint(ckpt: Path, videos: Path, ids: Iterable[str], baseline: str | None = None,
                         progress: bool = True, labels: Mapping[str, str] | None = None,
                         windows: dict[str, dict] | None = None
                         ) -> tuple[dict[str, np.ndarray], Skipped, AudioDependence]:
    """Each clip's map at its middle frame (VGG-SS's annotated frame) with the 3 s centred
    window, and the audio-dependence check on the same clips (``labels``: class per id).

    ``baseline="shuffled"``: each clip's visual features with the *next* clip's audio, which
    tells whether the audio drives the map at all. ``windows``, when given, is filled with what
    else the same window says of each clip (``window_outputs``): its mean S_av and each label
    head's top class (with the shuffled baseline: those of the other clip's audio).
    """
    if baseline not in (None, "shuffled"):
        raise ValueError(f"checkpoint baseline must be 'shuffled' or none, not {baseline!r}")
    an = Analyzer(ckpt)
    skipped = Skipped()
    clips = [(i, find_video(videos, i)) for i in ids]
    feats = list(an.each(_progress(clips, "maps", progress), skipped))
    steps = an.config.window_steps
    maps = {}
    for k, f in enumerate(feats):
        za = feats[(k + 1) % len(feats)].za if baseline == "shuffled" and len(feats) > 1 else None
        maps[f.clip_id] = window_map(f.alpha(za), f.steps // 2, steps)
        if windows is not None:
            windows[f.clip_id] = window_outputs(an, f, f.steps // 2, steps, za)
    return maps, skipped, clip_dependence(feats, steps, labels)


def window_outputs(an: Analyzer, f: ClipFeatures, t: int, steps: int, za: np.ndarray | None = None) -> dict:
    """The centred window at step ``t``: its mean S_av (``score``), each label head's top
    class name (``classes``), from the head on the window's mean features (Eq. 1), as the
    stream's window-averaged logits give it, and ``visibility.heard_seen`` of those heads."""
    za = f.za if za is None else za
    T = min(f.steps, len(za))
    lo, hi = window_bounds(t, steps, T)
    out: dict = {"score": float(moment_scores(f.zv[lo:hi], za[lo:hi]).mean()), "classes": {}}
    if hasattr(an.model, "label_heads"):
        with torch.inference_mode():
            logits = an.model.heads(torch.from_numpy(f.zv[lo:hi])[None].to(an.device),
                                    torch.from_numpy(za[lo:hi])[None].to(an.device))
        names = an.config.class_names
        out["classes"] = {h: class_name(int(logits[h][0].argmax()), names) for h in an.model.label_heads}
        out["heard_seen"] = heard_seen({h: softmax(logits[h][0].float().cpu().numpy()) for h in an.model.label_heads})
    return out


def moments(ckpt: Path, folder: Path, k: int = 1, progress: bool = True) -> tuple[dict[str, list[dict]], Skipped]:
    """Top-k informative moments per clip, best first (§5.1): each ``{"time_s": seconds from the
    clip's start, "frame": the step (10 fps frame) index, "score": its S_av}``."""
    an = Analyzer(ckpt)
    skipped = Skipped()
    out = {}
    for f in an.each(_progress(list_videos(folder), "moments", progress), skipped):
        scores = f.scores()
        out[f.clip_id] = [{"time_s": round(steps_to_seconds(t), 2), "frame": int(t), "score": round(float(scores[t]), 4)}
                          for t in top_k_moments(scores, k)]
    return out, skipped


def annotate(ckpt: Path, folder: Path, out_json: Path, threshold: float = 0.5, resume: bool = True,
             save_every: int = 20, progress: bool = True) -> tuple[list[dict], Skipped]:
    """Pseudo boxes for every clip in VGG-SS format (§5.2): at the top-1 moment, the centred
    3 s map -> threshold -> largest component -> box. Resumable: clips already in ``out_json``
    are kept and skipped. The file is rewritten atomically (valid json at every moment) every
    ``save_every`` clips and when the run ends, also by Ctrl-C or an error: an interrupted run
    keeps every clip it finished, and running it again goes on from there. ``resume=False``
    starts afresh, but an existing ``out_json`` is replaced only once the new run has finished
    a clip: a run stopped before its first clip, or one that finds none, leaves it as it was."""
    entries = _read_existing(out_json) if resume else []
    done = {e["file"] for e in entries}
    an = Analyzer(ckpt)
    skipped = Skipped()
    todo = [(i, p) for i, p in list_videos(folder) if i not in done]
    try:
        for n, f in enumerate(an.each(_progress(todo, "annotate", progress), skipped), start=1):
            entries.append(_pseudo_entry(an, f, threshold))
            if n % save_every == 0:
                write_json(entries, out_json)
    finally:
        if entries or not os.path.lexists(out_json):
            write_json(entries, out_json)
    return entries, skipped


def _pseudo_entry(an: Analyzer, f, threshold: float) -> dict:
    """One clip's VGG-SS entry: its top-1 moment's centred 3 s map -> box (none if empty)."""
    t = top_k_moments(f.scores(), 1)[0]
    m = window_map(f.alpha(), t, an.config.window_steps)
    box = pseudo_box(m, EVAL_SIZE, EVAL_SIZE, threshold)
    return {"file": f.clip_id, "class": an.classify(f), "class_source": "predicted", "frame": t,
            "score": round(float(f.scores()[t]), 4), "bbox": [] if box is None else [list(box)]}


def _read_existing(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: cannot resume from a corrupt file ({e}); move it away") from None
    if not isinstance(data, list) or not all(isinstance(e, dict) and isinstance(e.get("file"), str) for e in data):
        raise UsageError(f"{path}: not a VGG-SS style list of {{\"file\": ...}} entries; cannot resume from it, "
                         "move it away")
    return data


def _progress(items: list, what: str, enabled: bool) -> Iterable:
    if not enabled:
        return items
    from rich.progress import track

    return track(items, description=what, transient=True)

