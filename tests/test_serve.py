"""`soundloc serve` (issue 15): many streams through one model with one batched call per tick
give exactly what separate `soundloc stream` runs give. Real files (H.264 + AAC through PyAV),
a real HTTP source that stalls (test_faults' LiveServer), real onnxruntime sessions."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import av
import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime (the cpu extra) not installed")

from soundloc.runtime.engine import StepModel  # noqa: E402
from soundloc.runtime.run import run_stream  # noqa: E402
from soundloc.runtime.serve import (Batcher, BatchStats, ServeError, ServeSource, pair_sources, read_sources,  # noqa: E402
                                    run_serve, with_out_dir)
from soundloc.runtime.stream import StreamOptions  # noqa: E402
from test_bad_inputs import assert_one_line_error, run_cli  # noqa: E402
from test_faults import LiveServer, frames_in, ts_payload  # noqa: E402,F401  (ts_payload: a fixture)

OPTIONS = StreamOptions(gate_db=-30.0)  # the synthetic clips' quiet stretches get gated


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    """Two 4 s synthetic clips and one of 1.5 s (the stream that ends early)."""
    from soundloc.data.synth import make_synthetic_dataset

    root = tmp_path_factory.mktemp("clips")
    make_synthetic_dataset(root / "long", num_clips=2, seed=3, seconds=4.0, workers=1)
    make_synthetic_dataset(root / "short", num_clips=1, seed=5, seconds=1.5, workers=1)
    return sorted((root / "long" / "videos").glob("*.mp4")) + list((root / "short" / "videos").glob("*.mp4"))


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def decoded(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def assert_same_steps(served: list[dict], alone: list[dict]) -> None:
    """Maps (peak, score), boxes and gating of every step equal."""
    assert [e["index"] for e in served] == [e["index"] for e in alone]
    for a, b in zip(served, alone):
        assert a["gated"] == b["gated"] and a["peak"] == b["peak"], (a, b)
        assert a["score"] == pytest.approx(b["score"], rel=1e-5, abs=1e-5)
        assert (a["box"] is None) == (b["box"] is None)
        if a["box"] is not None:
            np.testing.assert_allclose(a["box"], b["box"], atol=2e-4)


def test_serve_equals_separate_runs_with_one_ending_early_and_one_stalling(tiny, clips, ts_payload, tmp_path):
    stalling = LiveServer(ts_payload, 0.5, "stall")  # sends 3 s of MPEG-TS, then nothing
    names = ["a", "b", "short"]
    sources = [ServeSource(n, str(c), out=tmp_path / f"{n}.mp4", events=tmp_path / f"{n}.jsonl")
               for n, c in zip(names, clips)]
    sources.append(ServeSource("stall", stalling.url, out=tmp_path / "stall.mp4", events=tmp_path / "stall.jsonl"))
    try:
        summary = run_serve(tiny.export, sources, options=OPTIONS, stall_seconds=1.0, status=False)
    finally:
        stalling.close()
    assert summary.errors == {} and summary.signal is None
    assert summary.streams["stall"].end_reason == "source stalled: no input for 1 s"
    assert summary.streams["short"].steps == 15 and summary.streams["a"].steps == 40
    assert summary.batch.behind["stall"] > 0  # left out of the ticks while it stalled
    assert summary.batch.steps == sum(s.steps + tiny.bundle.lookahead_steps for s in summary.streams.values())

    for src in sources:  # the same inputs through `soundloc stream`, one at a time
        alone_out, alone_ev = tmp_path / f"alone_{src.name}.mp4", tmp_path / f"alone_{src.name}.jsonl"
        server = LiveServer(ts_payload, 0.5, "stall") if src.name == "stall" else None
        try:
            run_stream(tiny.export, server.url if server else src.video, out=alone_out, events=alone_ev,
                       options=OPTIONS, stall_seconds=1.0, status=False)
        finally:
            if server:
                server.close()
        served = events(src.events)
        assert len(served) == summary.streams[src.name].steps
        assert_same_steps(served, events(alone_ev))
        assert np.abs(decoded(src.out).astype(int) - decoded(alone_out)).max() <= 2  # the drawn mp4s
    gated = [e["gated"] for s in sources for e in events(s.events)]
    assert any(gated) and not all(gated)  # the gate was exercised both ways


def test_a_stream_reconnects_while_the_others_run_on(tiny, clips, ts_payload, tmp_path):
    stalling = LiveServer(ts_payload, 0.5, "stall")
    sources = with_out_dir([ServeSource("file", str(clips[0])), ServeSource("cam", stalling.url)], tmp_path)
    try:
        summary = run_serve(tiny.export, sources, options=OPTIONS, stall_seconds=1.0, reconnect=1, status=False)
    finally:
        stalling.close()
    cam, file = summary.streams["cam"], summary.streams["file"]
    assert cam.reconnects == 1 and stalling.connections == 2 and cam.end_reason.startswith("source stalled")
    assert frames_in(tmp_path / "cam.mp4") == cam.steps >= 2 * 20  # both connections' steps, one output
    assert file.steps == 40 and file.reconnects == 0 and file.end_reason.endswith("end of stream")
    assert frames_in(tmp_path / "file.mp4") == 40 and summary.errors == {}


def steps_through_batcher(tiny, names: str, **batcher_kwargs) -> BatchStats:
    """One step per stream in ``names``, submitted at once from threads through a ``Batcher``;
    asserts every row equals the step run alone and returns the batcher's statistics."""
    model = StepModel.from_export(tiny.export, backend="onnxruntime-cpu")
    rng = np.random.default_rng(len(names))
    cfg = model.config
    inputs = [(rng.standard_normal((1, 3, cfg.image_size, cfg.image_size)).astype(np.float32),
               rng.standard_normal((1, 10, cfg.n_mels)).astype(np.float32),
               [rng.standard_normal(s.shape).astype(np.float32) for s in model.new_state(1)]) for _ in names]
    batcher = Batcher(model, **batcher_kwargs)
    handles = [batcher.handle(n) for n in names]
    got: dict[int, tuple] = {}

    def submit(k: int) -> None:
        frame, mel, state = inputs[k]
        got[k] = handles[k].step(frame, mel, np.ones(1, np.float32), state)

    workers = [threading.Thread(target=submit, args=(k,)) for k in range(len(names))]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    for k, (frame, mel, state) in enumerate(inputs):
        want, want_state = model.step(frame, mel, np.ones(1, np.float32), state)
        out, new_state = got[k]
        np.testing.assert_allclose(out.alpha, want.alpha, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out.score, want.score, rtol=1e-5, atol=1e-6)
        for a, b in zip(new_state, want_state):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for h in handles:
        h.close()
    batcher.close()
    model.close()
    return batcher.stats


def test_batcher_one_call_per_tick_rows_equal_single_calls(tiny):
    stats = steps_through_batcher(tiny, "xyz", wait_s=60.0)  # a tick closes only when all three have a step waiting
    assert stats.calls == 1 and stats.steps == 3


def test_two_lanes_split_the_streams_and_rows_equal_single_calls(tiny):
    """Four streams, two lanes: each call takes its share (two streams) and the second tick
    waits only for the streams not in flight."""
    stats = steps_through_batcher(tiny, "wxyz", wait_s=60.0, lanes=2)
    assert stats.calls == 2 and stats.steps == 4
    assert stats.behind == dict.fromkeys("wxyz", 0)  # in flight is not behind


def test_lanes_on_a_backend_without_concurrent_calls_is_refused(tiny, clips, tmp_path):
    with pytest.raises(ServeError, match="--lanes 2 needs a backend that takes concurrent calls.*torch"):
        run_serve(tiny.ckpt, [ServeSource("a", str(clips[0]))], backend="torch", lanes=2, status=False)
    assert_one_line_error(run_cli("serve", tiny.export, "--video", f"a={clips[2]}", "--lanes", "0"), "--lanes")


def test_serve_with_two_lanes_equals_one_lane(tiny, clips, tmp_path):
    sources = lambda tag: [ServeSource(n, str(c), events=tmp_path / f"{tag}_{n}.jsonl")  # noqa: E731
                           for n, c in zip("abc", clips)]
    one = run_serve(tiny.export, sources("one"), options=OPTIONS, status=False)
    two = run_serve(tiny.export, sources("two"), options=OPTIONS, lanes=2, status=False)
    assert two.errors == {} and two.lanes == 2 and two.as_dict()["lanes"] == 2
    assert two.batch.steps == one.batch.steps and 2 * two.batch.calls >= two.batch.steps  # shares of <= 2, not 3
    for n in "abc":
        assert_same_steps(events(tmp_path / f"two_{n}.jsonl"), events(tmp_path / f"one_{n}.jsonl"))


def test_a_stream_without_a_step_ready_is_left_out_and_counted(tiny):
    model = StepModel.from_export(tiny.export, backend="onnxruntime-cpu")
    batcher = Batcher(model, wait_s=0.2)
    busy, idle = batcher.handle("busy"), batcher.handle("idle")
    cfg = model.config
    frame = np.zeros((1, 3, cfg.image_size, cfg.image_size), np.float32)
    mel = np.zeros((1, 10, cfg.n_mels), np.float32)
    busy.step(frame, mel, np.ones(1, np.float32), model.new_state(1))  # returns although "idle" never steps
    assert batcher.stats.behind == {"busy": 0, "idle": 1} and idle.behind == 1
    idle.close()  # a stream that ended no longer holds a tick open
    busy.step(frame, mel, np.ones(1, np.float32), model.new_state(1))
    assert batcher.stats.calls == 2 and batcher.stats.behind["idle"] == 1
    busy.close()
    batcher.close()
    model.close()


def test_sources_from_toml_and_named_pairs(tmp_path):
    toml = tmp_path / "streams.toml"
    toml.write_text('[[stream]]\nname = "door"\nvideo = "v4l2:/dev/video0"\naudio = "alsa:default"\n'
                    'out = "door.mp4"\n\n[[stream]]\nname = "hall"\nvideo = "hall.mp4"\nvideo_only = true\n')
    door, hall = read_sources(toml)
    assert door == ServeSource("door", "v4l2:/dev/video0", "alsa:default", Path("door.mp4"))
    assert hall.video_only and hall.out is None
    assert with_out_dir([door, hall], tmp_path)[1].events == tmp_path / "hall.jsonl"
    assert with_out_dir([door, hall], tmp_path)[0].events is None  # its own outputs stay
    pairs = pair_sources(["cam1=lavfi:testsrc=size=64x48:rate=10", "cam2=b.mp4"], ["cam1=alsa:hw:1,0"])
    assert pairs[0].video == "lavfi:testsrc=size=64x48:rate=10" and pairs[0].audio == "alsa:hw:1,0"
    assert pairs[1].audio is None
    for bad, needle in [('[[stream]]\nname = "a"\nvideo = "x"\ncolour = 1\n', "unknown key 'colour'"),
                        ('[[stream]]\nname = "a"\n', "'video'"),
                        ('[[stream]]\nname = "a"\nvideo = "x"\n[[stream]]\nname = "a"\nvideo = "y"\n', "two streams"),
                        ("[[stream]\n", "not valid TOML"), ("", r"only \[\[stream\]\]")]:
        toml.write_text(bad)
        with pytest.raises(ServeError, match=needle) as e:
            read_sources(toml)
        assert "\n" not in str(e.value)
    for videos, audios, needle in [(["clip.mp4"], [], "give each source a name"),
                                   (["a=x.mp4"], ["b=alsa:default"], "no --video of that name"),
                                   (["lavfi:sine=frequency=440"], [], "NAME=SPEC")]:
        with pytest.raises(ServeError, match=needle):
            pair_sources(videos, audios)


def test_cli_bad_input_is_one_line(tiny, clips, tmp_path):
    assert_one_line_error(run_cli("serve", tiny.export, "--video", str(clips[0])), "NAME=SPEC")
    assert_one_line_error(run_cli("serve", tiny.export), "--video NAME=SPEC")
    same = tmp_path / "same.mp4"
    toml = tmp_path / "s.toml"
    toml.write_text(f'[[stream]]\nname = "a"\nvideo = "{clips[0]}"\nout = "{same}"\n'
                    f'[[stream]]\nname = "b"\nvideo = "{clips[1]}"\nout = "{same}"\n')
    assert_one_line_error(run_cli("serve", tiny.export, "--sources", toml), "same.mp4")
    assert not same.exists()


def test_a_source_that_cannot_open_leaves_the_others_running(tiny, clips, tmp_path):
    r = run_cli("serve", tiny.export, "--video", f"good={clips[2]}", "--video", "gone=v4l2:/dev/video99",
                "--out-dir", tmp_path, "--json", tmp_path / "s.json")
    assert r.returncode == 1
    assert_one_line_error(r, "1 of 2 streams failed", "gone", "video99")
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["streams"]["good"]["steps"] == 15 and "gone" not in summary["streams"]
    assert frames_in(tmp_path / "good.mp4") == 15 and len(events(tmp_path / "good.jsonl")) == 15


def test_sigterm_finalises_every_stream(tiny, clips, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "soundloc", "serve", str(tiny.export), "--realtime",
                             "--video", f"a={clips[0]}", "--video", f"b={clips[1]}", "--out-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600  # a hang guard; the test waits for progress, not a fixed time
    while time.monotonic() < deadline and not all(
            any(p.read_bytes().count(b"\n") >= 3 for p in tmp_path.glob(f"{n}.*.partial.jsonl")) for n in "ab"):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    for n in "ab":
        steps = len(events(tmp_path / f"{n}.jsonl"))
        assert 3 <= steps < 40 and frames_in(tmp_path / f"{n}.mp4") == steps
    assert not list(tmp_path.glob("*.partial.*"))


def test_preview_grid_shows_every_stream(tiny, clips):
    from soundloc.runtime.preview import PreviewGrid
    from soundloc.runtime.sources import StepSource
    from soundloc.runtime.stream import localize_stream

    model = StepModel.from_export(tiny.export, backend="onnxruntime-cpu")
    with PreviewGrid(["a", "b", "c"], port=0, extra=lambda: {"batch": {"calls": 7}}) as grid:
        tiles = {n: grid.tile(n, lambda: {"behind": 2}) for n in "ab"}
        for n, clip in zip("ab", clips):
            with StepSource(str(clip)) as source:
                for result in localize_stream(source, model, OPTIONS):
                    tiles[n].write(result)
        tiles["a"].close()
        with urllib.request.urlopen(grid.url + "status.json", timeout=10) as r:
            status = json.load(r)
        with urllib.request.urlopen(grid.url + "frame.jpg", timeout=10) as r:
            from PIL import Image
            import io

            image = np.asarray(Image.open(io.BytesIO(r.read())))
        with urllib.request.urlopen(grid.url, timeout=10) as r:
            page = r.read().decode()
    model.close()
    assert status["streams"]["a"]["state"] == "ended" and status["streams"]["b"]["state"] == "running"
    assert status["streams"]["c"] == {"state": "starting"} and status["batch"] == {"calls": 7}
    assert status["streams"]["b"]["index"] == 39 and status["streams"]["b"]["behind"] == 2
    assert image.shape == (2 * 240, 2 * 320, 3)  # 3 streams: a 2x2 grid of 320x240 tiles
    assert image[:240, :320].mean() > 10 and image[:240, 320:].mean() > 10  # a and b drawn
    assert image[240:, :320].mean() < 5  # c has no frame yet
    assert "/status.json" in page and "stream.mjpg" in page


# -- issue 21, case 7: the grid's cost does not grow with N squared; SIGTERM ends serve at any N ---------
def test_grid_mosaic_stays_bounded_for_thousands_of_streams():
    from soundloc.config import SERVE_MOSAIC_MAX
    from soundloc.runtime.preview import PreviewGrid

    names = [f"s{i}" for i in range(2000)]
    with PreviewGrid(names, port=0) as grid:  # before: 45x45 tiles of 320x240, a 350 MB mosaic
        h, w, _ = grid._mosaic.shape
        assert w <= SERVE_MOSAIC_MAX[0] and h <= SERVE_MOSAIC_MAX[1]
        grid.update("s1999", np.full((48, 64, 3), 200, np.uint8), {"state": "running"})
        for n in names:  # every stream ending: status only, no recomposition each time
            grid.update(n, None, {"state": "ended"})
        with urllib.request.urlopen(grid.url + "status.json", timeout=30) as r:
            status = json.load(r)
    assert len(status["streams"]) == 2000 and {s["state"] for s in status["streams"].values()} == {"ended"}


def test_sigterm_ends_serve_with_many_sources_and_the_preview(tiny, tmp_path):
    n = 40
    args = [a for i in range(n) for a in ("--video", f"s{i}=lavfi:testsrc=size=64x48:rate=10",
                                          "--audio", f"s{i}=lavfi:sine=frequency=440")]
    proc = subprocess.Popen([sys.executable, "-m", "soundloc", "serve", str(tiny.export), *args,
                             "--preview", "--port", "0", "--backend", "onnxruntime-cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:  # a hang guard is the communicate timeout below
        lines.append(line)
        if line.startswith("backend:"):
            break
    assert proc.poll() is None, (lines, proc.stderr.read())
    time.sleep(1.0)  # the streams are running (not a timing assertion: any moment must do)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err
