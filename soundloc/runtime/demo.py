"""`soundloc demo`: the whole runtime on a fresh machine, no camera, GPU or download.

Renders a synthetic clip (coloured shapes that sound like tones; one of them sounds at a
time), streams it through the bundled demo model on onnxruntime, and writes the annotated
mp4 and the JSON-lines events.
"""

from __future__ import annotations

import shutil
import tempfile
from importlib import resources
from pathlib import Path

from .bundle import BundleError
from .run import StreamSummary, run_stream
from .stream import StreamOptions

DEMO_CLASSES = 10  # the synthetic class table the demo model was trained on


def demo_model_dir() -> Path:
    """The export directory of the model that ships inside the package."""
    path = Path(str(resources.files("soundloc") / "assets" / "demo"))
    if not (path / "soundloc.json").is_file():
        raise BundleError(f"{path}: the bundled demo model is missing; reinstall soundloc or run "
                          "benchmarks/train_demo.py to rebuild it")
    return path


def make_demo_clip(out_dir: Path, seconds: float = 10.0, seed: int = 4) -> Path:
    """One synthetic clip (H.264 + AAC mp4) of the classes the demo model knows."""
    from ..data.synth import make_synthetic_dataset

    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        make_synthetic_dataset(tmp, num_clips=1, seed=seed, seconds=seconds, num_classes=DEMO_CLASSES,
                               val_fraction=0.0, workers=1)
        clip = next((Path(tmp) / "videos").glob("*.mp4"))
        dest = out_dir / "input.mp4"
        shutil.move(str(clip), dest)
    return dest


def run_demo(out_dir: str | Path = "demo_out", seconds: float = 10.0, seed: int = 4, backend: str = "onnxruntime",
             model: str | Path | None = None, status: bool = True) -> StreamSummary:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clip = make_demo_clip(out, seconds, seed)
    target = Path(model) if model is not None else demo_model_dir()
    return run_stream(target, str(clip), out=out / "demo.mp4", events=out / "events.jsonl", backend=backend,
                      options=StreamOptions(window="centered"), status=status)
