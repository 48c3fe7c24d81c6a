"""`soundloc demo` on this machine: playable mp4 with the overlay, events, and no torch."""

from __future__ import annotations

import json
import subprocess
import sys

import av
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime", reason="onnxruntime (the cpu extra) not installed")


def _frames(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_demo_writes_annotated_mp4_and_events_without_torch(tmp_path):
    script = (
        "import sys; from soundloc.runtime.demo import run_demo; "
        f"s = run_demo({str(tmp_path)!r}, seconds=4.0, status=False); "
        "assert 'torch' not in sys.modules, 'the runtime imported torch'; "
        "h = s.hit_rates; print(s.steps, s.gated, h.steps, h.model, h.shuffled, h.centre)")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    steps, gated, judged = map(int, r.stdout.split()[:3])
    model, shuffled, centre = map(float, r.stdout.split()[3:])
    assert 0 < judged <= steps - gated and all(0 <= x <= 1 for x in (model, shuffled, centre))
    assert steps == 40
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["index"] for e in events] == list(range(40))
    shown = [e for e in events if not e["gated"]]
    assert len(shown) == steps - gated
    out, inp = _frames(tmp_path / "demo.mp4"), _frames(tmp_path / "input.mp4")
    assert len(out) == 40 and out[0].shape[0] >= 480  # shown large enough to judge
    size = out[0].shape[1::-1]
    inp = [np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR)) for f in inp]
    bar = out[0][-12:].mean(axis=2)  # the status bar: black with white text (time, score, gate)
    assert (bar < 30).mean() > 0.5 and (bar > 200).any()
    with av.open(str(tmp_path / "demo.mp4")) as c:
        assert c.streams.audio[0].codec_context.name == "aac"
    for e in shown[:5]:
        a, b = out[e["index"]].astype(int), inp[e["index"]].astype(int)
        assert np.abs(a - b).mean() > 5, "overlay missing on a non-gated frame"
        green = (a[..., 1] > 200) & (a[..., 0] < 60) & (a[..., 2] < 60)
        assert green.sum() > 50, "box missing"


def test_runtime_and_cli_never_import_torch():
    mods = ["soundloc.cli", "soundloc.runtime.run", "soundloc.runtime.engine", "soundloc.runtime.stream",
            "soundloc.runtime.sources", "soundloc.runtime.sinks", "soundloc.runtime.preview",
            "soundloc.runtime.tensorrt_backend", "soundloc.runtime.onnx_backend", "soundloc.runtime.demo",
            "soundloc.evaluate", "soundloc.metrics", "soundloc.bench"]
    script = "import sys, importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in mods) + \
             "print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
