"""What a newcomer meets first, through the real `soundloc` command: a video annotated in one
line (the bundled model, the file's own frame rate, size and audio), the CLI and the Python API
giving the same steps, stream/serve options whose defaults are the library's, and the per-step
iterator. Real mp4 files (H.264 + AAC through PyAV), real onnxruntime sessions."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime (the cpu extra) not installed")

from conftest import soundloc_cli  # noqa: E402
from soundloc.media import write_mp4  # noqa: E402


def clip(path: Path, fps: int, rate: int, size=(176, 144), seconds: float = 1.5) -> Path:
    """A moving red square over grey, with a stereo tone (left 440 Hz, right 660 Hz)."""
    w, h = size
    n = round(seconds * fps)
    frames = np.full((n, h, w, 3), 90, np.uint8)
    for k in range(n):
        x = int(k / n * (w - 40))
        frames[k, h // 3:h // 3 + 40, x:x + 40] = (220, 30, 30)
    t = np.arange(round(seconds * rate)) / rate
    audio = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 660 * t)]).astype(np.float32)
    write_mp4(path, frames, fps, audio, rate)
    return path


def media_facts(path: Path) -> dict:
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        frames = sum(1 for _ in c.decode(video=0))
        return {"fps": v.average_rate, "size": (v.codec_context.width, v.codec_context.height),
                "rate": a.rate, "channels": a.channels, "frames": frames}


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("fps,rate", [(24, 48000), (25, 44100), (30, 48000)])
def test_own_video_in_one_line_keeps_rate_size_and_audio(tmp_path, fps, rate):
    """`soundloc stream --video clip.mp4 --out annotated.mp4`, no model named: the bundled one."""
    src = clip(tmp_path / "clip.mp4", fps, rate)
    r = soundloc_cli("stream", "--video", src, "--out", tmp_path / "annotated.mp4", "--events", tmp_path / "e.jsonl")
    assert r.returncode == 0, r.stderr
    got, want = media_facts(tmp_path / "annotated.mp4"), media_facts(src)
    assert got == want and got["fps"] == Fraction(fps) and got["channels"] == 2
    assert len(events(tmp_path / "e.jsonl")) == 15  # 1.5 s at 10 steps a second
    # the map is drawn on every original frame: each differs from the input somewhere
    with av.open(str(src)) as a, av.open(str(tmp_path / "annotated.mp4")) as b:
        for fa, fb in zip(a.decode(video=0), b.decode(video=0)):
            assert np.abs(fa.to_ndarray(format="rgb24").astype(int) - fb.to_ndarray(format="rgb24")).max() > 60


def test_size_and_the_name_demo(tmp_path):
    src = clip(tmp_path / "clip.mp4", 25, 44100)
    r = soundloc_cli("stream", "demo", "--video", src, "--out", tmp_path / "big.mp4", "--size", "288")
    assert r.returncode == 0, r.stderr
    got = media_facts(tmp_path / "big.mp4")
    assert got["size"] == (352, 288) and got["fps"] == 25 and got["rate"] == 44100 and got["frames"] == 38


def test_cli_and_python_api_give_the_same_events(tmp_path):
    """Same clip, no options: `soundloc stream` and ``run_stream`` gate, box and score alike
    (their defaults are one declaration: StreamOptions)."""
    from soundloc.runtime.run import iter_steps, run_stream

    src = clip(tmp_path / "clip.mp4", 30, 48000, seconds=2.0)
    r = soundloc_cli("stream", "--video", src, "--events", tmp_path / "cli.jsonl")
    assert r.returncode == 0, r.stderr
    run_stream(None, str(src), events=tmp_path / "api.jsonl", status=False)
    strip = ("latency_ms", "model_ms", "step_ms_p50", "fps")
    cli, api = ([{k: v for k, v in e.items() if k not in strip} for e in events(tmp_path / p)]
                for p in ("cli.jsonl", "api.jsonl"))
    assert cli == api and len(cli) == 20
    steps = list(iter_steps(str(src)))
    assert [(round(s.pts, 4), s.gated, s.score) for s in steps] == [(e["pts"], e["gated"], e["score"]) for e in api]
    assert all(s.heatmap is None or s.heatmap.shape == (7, 7) for s in steps)
    start = r.stdout.splitlines()[0]
    assert f"lookahead {api[0]['lookahead_s']:.1f} s" in start  # the start line and events agree


def test_stream_and_serve_options_default_to_the_library():
    """Every option stream and serve share is one declaration whose default is the library's."""
    import inspect

    import typer.main

    from soundloc.cli import app as _  # noqa: F401  (registers the commands)
    from soundloc.cli.app import app
    from soundloc.cli.options import library_default
    from soundloc.runtime.stream import StreamOptions

    cmds = {c.name: typer.main.get_command_from_info(c, pretty_exceptions_short=True,
                                                     rich_markup_mode=None) for c in app.registered_commands}
    for name in ("stream", "serve"):
        params = {p.name: p for p in cmds[name].params}
        assert params["gate_db"].default == StreamOptions().gate_db == library_default("gate_db")
        assert params["window"].default == StreamOptions().window
        assert params["box_threshold"].default == StreamOptions().box_threshold
        assert params["stall"].default == library_default("stall_seconds")
        assert "last 0.5 s" in params["gate_db"].help
    shared = {p.name: (p.default, p.help) for p in cmds["stream"].params}
    for p in cmds["serve"].params:
        if p.name in ("gate_db", "gate_score", "window", "box_threshold", "backend", "stall", "threads"):
            assert shared[p.name] == (p.default, p.help), p.name
    assert inspect.signature(StreamOptions).parameters["gate_db"].default == -40.0
