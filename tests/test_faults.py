"""Faults while running (issue 7): a live source that stalls or disappears, a file that
vanishes or shrinks mid-read, a disk that fills while writing the mp4, a checkpoint or an
export. Real servers on 127.0.0.1, real files, a real full disk (a small tmpfs).

Covered elsewhere and not repeated: training killed with SIGKILL mid-epoch resumes from the
last complete checkpoint (test_train::test_sigkill_mid_epoch_then_resume_completes); SIGTERM
during a stream leaves a playable mp4 (test_stream, test_sinks); the Mp4Sink and JsonlSink
alone on a full disk (test_sinks); a cut file streamed from the start (test_stream).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime (the cpu extra) not installed")

from soundloc.runtime.run import run_stream  # noqa: E402
from conftest import QuietHandler, serve_http  # noqa: E402
from test_bad_inputs import assert_one_line_error, run_cli, write_media  # noqa: E402

TS_PACKET = 188


def frames_in(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


class LiveServer:
    """An HTTP "camera" on 127.0.0.1 serving an MPEG-TS stream: each connection gets the first
    ``fraction`` of ``payload`` at once, then either stalls (holds the socket open, sends
    nothing) or hangs up. Counts connections."""

    def __init__(self, payload: bytes, fraction: float, mode: str) -> None:
        self.cut = int(len(payload) * fraction) // TS_PACKET * TS_PACKET
        self.payload, self.mode = payload, mode
        self.connections = 0
        self.release = threading.Event()
        server = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                server.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.end_headers()  # no Content-Length: a live stream of unknown length
                self.wfile.write(server.payload[: server.cut])
                self.wfile.flush()
                if server.mode == "stall":
                    server.release.wait(60)

        self.httpd, base = serve_http(Handler)
        self.url = base + "/live.ts"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def ts_payload(tmp_path_factory) -> bytes:
    """6 s of 64x48 H.264 + AAC in MPEG-TS (what an HTTP/UDP camera sends)."""
    path = write_media(tmp_path_factory.mktemp("ts") / "live.ts", n=60, fmt="mpegts", audio_rate=16000)
    return path.read_bytes()


@pytest.fixture
def server(request, ts_payload):
    live = LiveServer(ts_payload, *request.param)
    yield live
    live.close()


# -- live sources that stall or disappear -----------------------------------------------------------
@pytest.mark.parametrize("server", [(0.5, "stall")], indirect=True)
def test_stalled_source_ends_within_the_stall_timeout_with_sinks_finalised(tmp_path, tiny, server):
    out, events = tmp_path / "out.mp4", tmp_path / "ev.jsonl"
    summary = run_stream(tiny.export, server.url, out=out, events=events, stall_seconds=1.0, status=False)
    assert summary.end_reason == "source stalled: no input for 1 s", summary.end_reason
    assert 20 <= summary.steps < 60 and summary.reconnects == 0
    # The end reason proves the stall timeout ended it, not the server's release after 60 s.
    assert frames_in(out) == summary.steps  # finalised: the mp4 holds every step, playable
    assert len(events.read_text().splitlines()) == summary.steps
    assert not list(tmp_path.glob("*.partial.mp4"))


@pytest.mark.parametrize("server", [(0.5, "stall")], indirect=True)
def test_stalled_source_reconnects_n_times_and_sinks_carry_on(tmp_path, tiny, server):
    out = tmp_path / "out.mp4"
    summary = run_stream(tiny.export, server.url, out=out, stall_seconds=1.0, reconnect=2, status=False)
    assert summary.reconnects == 2 and server.connections == 3
    assert summary.end_reason.startswith("source stalled")
    assert summary.steps >= 3 * 20  # each connection's steps, in one output
    assert frames_in(out) == summary.steps


@pytest.mark.parametrize("server", [(0.4, "close")], indirect=True)
def test_server_that_hangs_up_ends_the_stream_cleanly(tmp_path, tiny, server):
    out = tmp_path / "out.mp4"
    summary = run_stream(tiny.export, server.url, out=out, stall_seconds=5.0, status=False)
    assert 15 <= summary.steps < 60 and server.connections == 1
    assert server.url in summary.end_reason  # the reason names the source
    assert frames_in(out) == summary.steps


def test_unreachable_source_is_one_line_and_reconnect_gives_up(tmp_path, tiny):
    # a camera that is gone before the start: one line, the sink never created
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as probe:
        port = probe.server_address[1]  # a port with nobody listening once closed
    r = run_cli("stream", tiny.export, "--video", f"http://127.0.0.1:{port}/cam.ts", "--out", tmp_path / "o.mp4",
                "--reconnect", "2")
    assert_one_line_error(r, f"127.0.0.1:{port}")
    assert not (tmp_path / "o.mp4").exists()


# -- files that vanish or shrink while read ----------------------------------------------------------
def _stream_in_thread(tiny, path: Path, out: Path) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def run() -> None:
        try:
            box["summary"] = run_stream(tiny.export, str(path), out=out, events=out.with_name("ev.jsonl"),
                                        realtime=True, stall_seconds=3.0, status=False)
        except Exception as e:  # noqa: BLE001 - reported by the test
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def _wait_for_steps(folder: Path, n: int, timeout: float = 600) -> None:
    """Until ``n`` steps are out (event lines in ev.jsonl, or in a temporary file beside it):
    the source is open then. Waiting for the partial mp4 raced: the sinks open before the
    source, and on a loaded machine the file was changed before it was ever opened."""
    deadline = time.monotonic() + timeout
    while not any(p.read_bytes().count(b"\n") >= n for p in folder.glob("*ev*")):
        assert time.monotonic() < deadline, "the stream never produced a step"
        time.sleep(0.05)


def test_file_truncated_while_streaming_ends_cleanly(tmp_path, tiny):
    path = write_media(tmp_path / "clip.mp4", n=100, size=(320, 240), audio_rate=16000)  # 10 s
    data = path.read_bytes()
    out = tmp_path / "out.mp4"
    t, box = _stream_in_thread(tiny, path, out)
    _wait_for_steps(tmp_path, 5)
    with open(path, "r+b") as f:  # another process cuts the file under the reader
        f.truncate(len(data) // 5)
    t.join(timeout=600)  # a hang guard
    assert not t.is_alive() and "error" not in box, box
    summary = box["summary"]
    assert 5 <= summary.steps < 100, summary.as_dict()
    assert frames_in(out) == summary.steps


def test_file_deleted_while_streaming_plays_to_its_end(tmp_path, tiny):
    # documented (POSIX): an open file stays readable after unlink, so the stream completes
    path = write_media(tmp_path / "clip.mp4", n=30, audio_rate=16000)
    out = tmp_path / "out.mp4"
    t, box = _stream_in_thread(tiny, path, out)
    _wait_for_steps(tmp_path, 1)
    path.unlink()
    t.join(timeout=600)  # a hang guard
    assert "error" not in box, box
    assert box["summary"].steps == 30 and frames_in(out) == 30


# -- a full disk ---------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(bytes)`` mounts a real tmpfs of that size: a real ENOSPC from the kernel."""
    mounts = []

    def make(size: int) -> Path:
        disk = tmp_path / f"disk{len(mounts)}"
        disk.mkdir()
        try:
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                               capture_output=True, text=True)
        except FileNotFoundError:
            pytest.skip("cannot simulate a full disk: no `mount` command")
        if r.returncode != 0:
            pytest.skip(f"cannot simulate a full disk: mounting a tmpfs was refused ({r.stderr.strip()})")
        mounts.append(disk)
        return disk

    yield make
    for disk in mounts:
        subprocess.run(["umount", str(disk)], check=True)


def _noise_clip(path: Path) -> Path:
    """3 s of 320x240 noise: its annotated mp4 is far larger than 64 KiB."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=10, options={"preset": "ultrafast"})
        vs.width, vs.height, vs.pix_fmt = 320, 240, "yuv420p"
        ast = c.add_stream("aac", rate=16000, layout="mono")
        for i in range(30):
            img = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
            c.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        c.mux(vs.encode())
        a = av.AudioFrame.from_ndarray((0.1 * rng.standard_normal((1, 48000))).astype(np.float32), format="flt",
                                       layout="mono")
        a.sample_rate, a.pts = 16000, 0
        c.mux(ast.encode(a))
        c.mux(ast.encode())
    return path


def test_full_disk_during_cli_stream_is_one_line_and_keeps_previous_mp4(tmp_path, tiny, small_disk):
    disk = small_disk(64 * 1024)
    clip = _noise_clip(tmp_path / "noise.mp4")
    previous = os.urandom(8192)
    (disk / "out.mp4").write_bytes(previous)
    r = run_cli("stream", tiny.export, "--video", clip, "--out", disk / "out.mp4", "--events", disk / "ev.jsonl")
    assert_one_line_error(r, "disk full", str(disk / "out.mp4"))
    assert (disk / "out.mp4").read_bytes() == previous
    assert not list(disk.glob("*.partial.mp4"))


def test_full_disk_during_checkpoint_write_keeps_previous(tiny, small_disk):
    import torch

    from soundloc.model.checkpoint import load_checkpoint, save_checkpoint

    size = tiny.ckpt.stat().st_size
    disk = small_disk(size * 3 // 2 + 8192)  # the old checkpoint fits; a second copy beside it does not
    shutil.copy(tiny.ckpt, disk / "last.pt")
    before = (disk / "last.pt").read_bytes()
    model, _ = load_checkpoint(tiny.ckpt)
    with pytest.raises(OSError) as e:
        save_checkpoint(disk / "last.pt", model, epoch=2, optimizer={"pad": torch.zeros(1000)})
    assert e.value.errno == errno.ENOSPC
    assert (disk / "last.pt").read_bytes() == before
    assert load_checkpoint(disk / "last.pt")[1].get("epoch") is None  # the previous one, loadable
    assert sorted(p.name for p in disk.iterdir()) == ["last.pt"]  # no temp file eating the space


def test_full_disk_during_training_keeps_last_pt_and_is_one_line(tmp_path, small_disk):
    from soundloc.data.synth import make_synthetic_dataset
    from soundloc.model.checkpoint import read_checkpoint

    make_synthetic_dataset(tmp_path / "data", num_clips=4, seconds=1.0, num_classes=2, val_fraction=0.0,
                           workers=1, size=64)
    base = ["train", tmp_path / "data", "--workers", "0", "--batch-size", "2", "--val-split", "none"]
    r = run_cli(*base, "--out", tmp_path / "run", "--preset", "tiny", "--set", "clip_seconds=1", "--epochs", "1")
    assert r.returncode == 0, r.stderr
    used = sum(p.stat().st_size for p in (tmp_path / "run").iterdir())
    disk = small_disk(used + (tmp_path / "run" / "last.pt").stat().st_size // 2)
    run = disk / "run"
    shutil.copytree(tmp_path / "run", run)
    before = (run / "last.pt").read_bytes()
    r = run_cli(*base, "--out", run, "--epochs", "2", "--resume")
    line = assert_one_line_error(r, "No space left on device")
    assert line.startswith("error: ") and "Traceback" not in r.stderr
    assert (run / "last.pt").read_bytes() == before and read_checkpoint(run / "last.pt")["epoch"] == 1
    assert not list(run.glob(".*.tmp"))


def test_full_disk_during_export_keeps_manifest_and_never_loads_half_a_graph(tmp_path, tiny, small_disk):
    from soundloc.runtime.bundle import BundleError, read_bundle, write_manifest

    used = sum(p.stat().st_size for p in tiny.export.iterdir())
    disk = small_disk(used + 16384)
    exp = disk / "exp"
    shutil.copytree(tiny.export, exp)
    manifest = (exp / "soundloc.json").read_bytes()
    # 1. the manifest write alone: atomic, the old one stays when the new one cannot be written
    (disk / "filler").write_bytes(b"\0" * (16384 - 4096))
    with pytest.raises(OSError) as e:
        write_manifest(exp, {**json.loads(manifest), "padding": "x" * 20000})
    assert e.value.errno == errno.ENOSPC
    assert (exp / "soundloc.json").read_bytes() == manifest and not list(exp.glob(".*.tmp"))
    (disk / "filler").unlink()
    # 2. a whole re-export (three graphs) into the folder that holds the old one
    r = run_cli("export", tiny.ckpt, "--out", exp)
    assert_one_line_error(r, "No space left on device")
    assert (exp / "soundloc.json").read_bytes() == manifest
    try:
        bundle = read_bundle(exp)  # either the old export, whole...
    except BundleError as err:  # ...or refused: a graph rewritten in place no longer matches
        assert "re-export" in str(err) and "\n" not in str(err)
    else:
        assert set(bundle.manifest["graphs"]) == {"step"}


def test_in_process_command_restores_the_signal_handlers_it_installed(tiny, tmp_path):
    """The CLI turns SIGTERM/SIGHUP into a clean exit for the length of a command only: run
    in-process (a test, a program embedding it), the caller's handlers come back afterwards,
    also when the command fails."""
    import signal

    from soundloc.cli import run_app

    mine = lambda signum, frame: None  # noqa: E731
    old = {s: signal.signal(s, mine) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        for args in (["info", str(tiny.ckpt)], ["info", str(tmp_path / "missing.pt")]):
            with pytest.raises(SystemExit):
                run_app(args)
            assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGHUP) is mine, args
    finally:
        for s, h in old.items():
            signal.signal(s, h)
