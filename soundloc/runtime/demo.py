"""`soundloc demo`: the whole runtime on a fresh machine, no camera, GPU or download.

Renders a synthetic clip (coloured shapes that sound like tones; one of them sounds at a
time), streams it through the bundled demo model on onnxruntime, and writes the annotated
mp4 and the JSON-lines events.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .run import StreamSummary, run_stream
from .stream import StreamOptions

DEMO_CLASSES = 10  # the synthetic class table the demo model was trained on


DEMO_HEIGHT = 480  # the annotated demo video's height (the synthetic clip is 160 px)


@dataclass
class DemoTruth:
    """The synthetic clip's ground truth: what sounds, its box at each 10 fps step, and when."""

    label: str
    boxes: list[list[float]]  # the sounding object's normalised box per step
    intervals: list[list[float]]  # [start_s, end_s] spans where it sounds

    def sounding(self, t: float) -> bool:
        return any(a <= t < b for a, b in self.intervals)

    def hit(self, index: int, point: Sequence[float]) -> bool:
        """Whether normalised ``point`` (x, y) lies in the sounding object's box at step ``index``."""
        x0, y0, x1, y1 = self.boxes[min(index, len(self.boxes) - 1)]
        return x0 <= point[0] <= x1 and y0 <= point[1] <= y1


@dataclass
class HitRates:
    """Of the steps where the object sounds and the map is shown: how often the map's peak is
    on the sounding object, for the clip's audio, another clip's audio, and the frame centre."""

    steps: int
    model: float
    shuffled: float
    centre: float


def make_demo_clip(out_dir: Path, seconds: float = 10.0, seed: int = 0,
                   other: Path | None = None) -> tuple[Path, DemoTruth]:
    """One synthetic clip (H.264 + AAC mp4) of the classes the demo model knows, as
    ``out_dir/input.mp4``, and its truth; with ``other``, a second clip (another class: its
    sound is the shuffled-audio baseline) is kept there."""
    from ..data.synth import make_synthetic_dataset

    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        make_synthetic_dataset(tmp, num_clips=2, seed=seed, seconds=seconds, num_classes=DEMO_CLASSES,
                               val_fraction=0.0, workers=1)
        clip, second = sorted((Path(tmp) / "videos").glob("*.mp4"))
        track = json.loads((Path(tmp) / "tracks.json").read_text())[clip.stem]
        intervals = json.loads((Path(tmp) / "intervals.json").read_text())[clip.stem]
        dest = out_dir / "input.mp4"
        shutil.move(str(clip), dest)
        if other is not None:
            shutil.move(str(second), other)
    sounding = track["objects"][track["sounding"]]
    return dest, DemoTruth(sounding["class"], sounding["boxes"], intervals)


def hit_rates(truth: DemoTruth, events: list[dict], shuffled: list[dict]) -> HitRates:
    """``HitRates`` from the events of the clip's own run and of its run with other audio."""
    def rate(evs: list[dict], point=None) -> tuple[int, float]:
        judged = [e for e in evs if truth.sounding(e["pts"]) and not e["gated"]]
        hits = sum(truth.hit(e["index"], point or e["peak"]) for e in judged)
        return len(judged), hits / len(judged) if judged else float("nan")

    steps, model = rate(events)
    _, other = rate(shuffled)
    _, centre = rate(events, (0.5, 0.5))
    return HitRates(steps, model, other, centre)


def run_demo(out_dir: str | Path = "demo_out", seconds: float = 10.0, seed: int = 0, backend: str = "onnxruntime",
             model: str | Path | None = None, status: bool = True) -> StreamSummary:
    """The demo: a synthetic clip through the model (the bundled one by default) into
    ``demo.mp4`` (480 px high, the sounding object named from the clip's ground truth) and
    ``events.jsonl``; then the same video with another clip's sound, to print how often the
    map's peak lands on the sounding object with its own sound, with other sound, and for the
    frame's centre. ``summary.hit_rates`` holds those figures."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=out))
    clip, truth = make_demo_clip(out, seconds, seed, other=scratch / "other.mp4")
    options = StreamOptions(window="centered")

    def label(result) -> str:
        sounding = truth.sounding(result.pts)
        return f"sounding (ground truth): {truth.label}" if sounding else "silent (ground truth)"

    summary = run_stream(model, str(clip), out=out / "demo.mp4", events=out / "events.jsonl", backend=backend,
                         options=options, status=status, size=DEMO_HEIGHT, labeler=label)
    try:
        run_stream(model, str(clip), str(scratch / "other.mp4"), events=scratch / "shuffled.jsonl",
                   backend=backend, options=options, status=False)
        summary.hit_rates = hit_rates(truth, _events(out / "events.jsonl"), _events(scratch / "shuffled.jsonl"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return summary


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]
