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
from soundloc.encode import write_mp4  # noqa: E402


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
    assert all(s.heatmap is None or s.heatmap.shape == (14, 14) for s in steps)  # the demo model reads 14x14
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


def test_default_recipe_model_through_every_command(default_run, tmp_path):
    """A model trained by `soundloc train` with no recipe flags (tied-fc, salient maps) through
    each command that takes a model, as a user runs them (the paper recipe's tiny model walks
    the same commands in the other test files)."""
    ckpt, export, data = default_run.ckpt, default_run.export, default_run.data
    video = sorted((data / "videos").glob("*.mp4"))[0]

    def ok(*args):
        r = soundloc_cli(*args)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and "Skipping torchvision" not in r.stdout + r.stderr
        return r

    r = ok("info", ckpt)
    assert "training: schedule cosine, zoom 1" in r.stdout  # what the run was trained with
    r = ok("info", export)
    assert "tied-fc, salient maps" in r.stdout and "precision  fp32" in r.stdout and "best.pt" in r.stdout
    r = ok("export", ckpt, "--out", tmp_path / "triton", "--format", "triton")  # + TensorRT operator check
    assert (tmp_path / "triton" / "triton" / "soundloc_step" / "config.pbtxt").is_file()
    ok("stream", export, "--video", video, "--out", tmp_path / "s.mp4", "--events", tmp_path / "s.jsonl")
    assert len(events(tmp_path / "s.jsonl")) == 20 and media_facts(tmp_path / "s.mp4") == media_facts(video)
    ok("serve", export, "--video", f"a={video}", "--out-dir", tmp_path / "serve")
    assert media_facts(tmp_path / "serve" / "a.mp4") == media_facts(video)
    assert events(tmp_path / "serve" / "a.jsonl") == [e | {k: events(tmp_path / "serve" / "a.jsonl")[i][k]
                                                         for k in ("latency_ms", "model_ms", "step_ms_p50")}
                                                     for i, e in enumerate(events(tmp_path / "s.jsonl"))]
    r = ok("bench", export, "--compare", "onnxruntime-cpu", "--no-references", "--warmup", "0.1", "--duration", "0.2",
           "--min-iters", "3", "--json", tmp_path / "b.json")
    assert "issue" not in r.stdout and "not measured: None" not in r.stdout
    r = ok("eval", ckpt, "--videos", data, "--annotations", data / "vggss.json", "--json", tmp_path / "e.json")
    assert "audio dependence over" in r.stdout
    ok("moments", ckpt, data, "--top-k", "2", "--json", tmp_path / "m.json")
    best = json.loads((tmp_path / "m.json").read_text())
    assert all(len(v) == 2 and v[0]["score"] >= v[1]["score"] and v[0]["time_s"] == v[0]["frame"] / 10
               for v in best.values())
    r = ok("annotate", ckpt, data, "--out", tmp_path / "boxes.json")
    assert "predicted class" in r.stdout
    assert all(e["class_source"] == "predicted" for e in json.loads((tmp_path / "boxes.json").read_text()))


def test_info_tells_what_train_trains_and_what_an_export_is():
    r = soundloc_cli("info", "--preset", "tiny")
    assert r.returncode == 0, r.stderr
    assert "train --preset tiny --recipe default" in r.stdout and "tied-fc" in r.stdout and "salient" in r.stdout
    assert "training: schedule cosine, zoom 1" in r.stdout
    r = soundloc_cli("info", "--preset", "small", "--recipe", "paper")
    assert "individual-fc" in r.stdout and " dot " in r.stdout + " "
    assert "training: schedule plateau, zoom 1" in r.stdout
    r = soundloc_cli("info", "demo")
    assert r.returncode == 0, r.stderr
    assert "family     classifier" in r.stdout and "classes    10" in r.stdout and "epoch 10" in r.stdout
    assert "RANDOM" not in r.stdout


def test_random_weight_exports_say_so_in_info(tmp_path):
    pytest.importorskip("torch", reason="torch (the train extra) needed to export")
    r = soundloc_cli("export", "--preset", "tiny", "--out", tmp_path / "rand")
    assert r.returncode == 0, r.stderr
    r = soundloc_cli("info", tmp_path / "rand")
    assert r.returncode == 0 and "RANDOM WEIGHTS" in r.stdout and "warning" in r.stdout


def test_help_texts_print_brackets_and_name_no_tracker_numbers():
    import re

    for cmd in ("moments", "serve", "stream", "train", "export", "bench", "info", "eval", "annotate"):
        r = soundloc_cli(cmd, "--help")
        assert r.returncode == 0, r.stderr
        assert not re.search(r"\bissue \d", r.stdout), cmd
    assert "{clip_id: [{time_s, frame, score}" in soundloc_cli("moments", "--help").stdout.replace("\n", " ")
    assert "[[stream]]" in soundloc_cli("serve", "--help").stdout
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert not re.search(r"\bissue \d", readme)
