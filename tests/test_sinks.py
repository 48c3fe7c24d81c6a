"""Sinks: the annotated mp4 (decoded back with PyAV), atomicity under failures and real
signals, a real full disk (tmpfs), JSON lines, the terminal status and the fan-out."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import av
import numpy as np
import pytest

from soundloc.runtime.results import StepResult
from soundloc.runtime.sinks import JsonlSink, Mp4Sink, MultiSink, Sink, SinkError, TerminalStatus

REPO = Path(__file__).resolve().parents[1]
HOT_ROW, HOT_COL = 2, 5
BOX = (0.1, 0.5, 0.4, 0.9)


def make_step(index: int, width: int = 320, height: int = 240, *, noise: bool = False) -> StepResult:
    """A grey frame (or noise), one hot map cell, a 440 Hz tone: 1600 samples at 16 kHz."""
    if noise:
        frame = np.random.default_rng(index).integers(0, 256, (height, width, 3), dtype=np.uint8)
    else:
        frame = np.full((height, width, 3), 90, np.uint8)
    heatmap = np.zeros((7, 7), np.float32)
    heatmap[HOT_ROW, HOT_COL] = 1.0
    t = (np.arange(1600) + index * 1600) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    now = time.monotonic()
    return StepResult(index, index / 10, frame, audio, heatmap, 0.7, BOX, False, now, now + 0.03, 0.5,
                      {"drops": 0})


def decode(path: Path) -> tuple[list[av.VideoFrame], np.ndarray, dict]:
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        info = {"vcodec": video.codec_context.name, "acodec": audio.codec_context.name,
                "rate": video.guessed_rate, "sample_rate": audio.codec_context.sample_rate,
                "size": (video.codec_context.width, video.codec_context.height)}
        frames = list(container.decode(video=0))
    with av.open(str(path)) as container:
        samples = np.concatenate([f.to_ndarray().ravel() for f in container.decode(audio=0)])
    return frames, samples, info


def partial_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.partial.mp4"))


def test_mp4_has_h264_at_10_fps_aac_tone_and_overlay(tmp_path):
    out = tmp_path / "out.mp4"
    with Mp4Sink(out) as sink:
        for i in range(30):
            sink.write(make_step(i))
    frames, samples, info = decode(out)
    assert info["vcodec"] == "h264" and info["acodec"] == "aac"
    assert len(frames) == 30 and info["rate"] == 10
    times = np.array([float(f.time) for f in frames])
    np.testing.assert_allclose(np.diff(times[1:]), 0.1, atol=1e-3)
    assert info["sample_rate"] == 16000
    assert 2.95 <= samples.size / 16000 <= 3.2  # 3 s of steps plus the encoder's priming
    spectrum = np.abs(np.fft.rfft(samples[2048:2048 + 16000]))
    assert abs(np.argmax(spectrum) * 16000 / 16000 - 440) <= 2  # the tone came through
    rgb = frames[15].to_ndarray(format="rgb24").astype(int)
    hot = rgb[round(2.5 * 240 / 7), round(5.5 * 320 / 7)]
    assert hot[0] > hot[1] + 40 and hot[0] > hot[2] + 40  # turbo's red over the grey scene
    edge = rgb[round(0.7 * 240), 33]  # left edge of the box: x = 0.1 * 320 (2 px wide)
    assert edge[1] > 180 and edge[0] < 100 and edge[2] < 100
    assert (np.abs(rgb[5:40, 5:40] - 90) < 8).all()  # cold, box-free corner stays grey


def test_no_final_file_until_close_and_odd_size_padded(tmp_path):
    out = tmp_path / "odd.mp4"
    sink = Mp4Sink(out)
    for i in range(5):
        sink.write(make_step(i, width=321, height=241))
    assert not out.exists() and partial_files(tmp_path) == [sink.temp_path]
    sink.close()
    sink.close()  # idempotent
    assert out.exists() and partial_files(tmp_path) == []
    frames, _, info = decode(out)
    assert info["size"] == (322, 242) and len(frames) == 5
    with pytest.raises(SinkError, match="closed"):
        sink.write(make_step(5))


def test_existing_output_intact_on_abort_and_on_empty_run(tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous run")
    sink = Mp4Sink(out)
    sink.write(make_step(0))
    sink.abort()
    assert out.read_bytes() == b"previous run" and partial_files(tmp_path) == []
    Mp4Sink(out).close()  # stream ended before its first step
    assert out.read_bytes() == b"previous run" and partial_files(tmp_path) == []


def test_unwritable_destination_is_a_one_line_error(tmp_path):
    with pytest.raises(SinkError, match="does not exist") as info:
        Mp4Sink(tmp_path / "missing" / "out.mp4")
    assert "\n" not in str(info.value)
    with pytest.raises(SinkError, match="directory"):
        Mp4Sink(tmp_path)


def test_close_from_inside_write_waits_for_the_write(tmp_path):
    """What a SIGTERM handler calling close() mid-write does: finalise after that write."""
    out = tmp_path / "out.mp4"
    sink = None

    def labeler(result: StepResult) -> None:
        if result.index == 2:
            sink.close()

    sink = Mp4Sink(out, labeler=labeler)
    for i in range(3):
        sink.write(make_step(i))
    assert out.exists()
    assert len(decode(out)[0]) == 3
    with pytest.raises(SinkError):
        sink.write(make_step(3))


WRITER = textwrap.dedent("""
    import signal, sys, time
    sys.path.insert(0, {tests!r})
    from test_sinks import make_step
    from soundloc.runtime.sinks import Mp4Sink

    sink = Mp4Sink(sys.argv[1])

    def stop(signum, frame):
        sink.close()
        print("frames", sink.frames_written, flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    print("temp", sink.temp_path, flush=True)
    i = 0
    while True:
        sink.write(make_step(i))
        i += 1
        if i == 25:
            print("ready", flush=True)
        time.sleep(0.01)
""")


def start_writer(out: Path) -> tuple[subprocess.Popen, Path]:
    script = WRITER.format(tests=str(Path(__file__).parent))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    temp = Path(proc.stdout.readline().split(" ", 1)[1].strip())
    assert proc.stdout.readline().strip() == "ready"
    return proc, temp


def test_sigkill_leaves_a_decodable_fragmented_temp_file(tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous run")
    proc, temp = start_writer(out)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=20) == -signal.SIGKILL
    assert out.read_bytes() == b"previous run"
    frames, samples, info = decode(temp)
    assert len(frames) >= 20 and info["vcodec"] == "h264"  # every fragment up to the last keyframe
    assert samples.size >= 16000


def test_sigterm_with_handler_leaves_a_finalised_mp4(tmp_path):
    out = tmp_path / "out.mp4"
    proc, temp = start_writer(out)
    os.kill(proc.pid, signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    written = int(stdout.split("frames", 1)[1].split()[0])
    frames, samples, _ = decode(out)
    assert len(frames) == written >= 25
    assert abs(samples.size / 16000 - written / 10) < 0.2
    assert not temp.exists() and partial_files(tmp_path) == []


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 64 KiB tmpfs: a real ENOSPC from the kernel."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                                 capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("cannot simulate a full disk: no `mount` command")
    if mounted.returncode != 0:
        pytest.skip(f"cannot simulate a full disk: mounting a tmpfs was refused ({mounted.stderr.strip()})")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_full_disk_gives_one_line_error_and_keeps_previous_mp4(tiny_disk):
    out = tiny_disk / "out.mp4"
    previous = os.urandom(8192)
    out.write_bytes(previous)
    sink = Mp4Sink(out)
    with pytest.raises(SinkError) as info:
        for i in range(200):  # noise frames: ~20 KB each, far more than the disk holds
            sink.write(make_step(i, noise=True))
    message = str(info.value)
    assert "disk full" in message and "\n" not in message and str(out) in message
    sink.close()  # after a failure, close is a no-op
    assert out.read_bytes() == previous
    assert partial_files(tiny_disk) == []  # the half file is removed, freeing the space


def test_full_disk_jsonl_keeps_whole_lines(tiny_disk):
    path = tiny_disk / "events.jsonl"
    (tiny_disk / "filler").write_bytes(b"x" * 50_000)
    sink = JsonlSink(path)
    with pytest.raises(SinkError, match="disk full"):
        for i in range(10_000):
            sink.write(make_step(i))
    sink.close()
    text = path.read_text()
    assert text.endswith("\n") and len(text) > 0
    assert [json.loads(line)["index"] for line in text.splitlines()] == list(range(sink.lines_written))


def test_jsonl_lines_parse_and_nan_becomes_null(tmp_path):
    path = tmp_path / "events.jsonl"
    with JsonlSink(path) as sink:
        for i in range(5):
            step = make_step(i)
            if i == 3:
                step.score, step.heatmap, step.box, step.gated = float("nan"), None, None, True
            sink.write(step)
            assert len(sink.temp_path.read_text().splitlines()) == i + 1  # visible at once, no buffering
            assert not path.exists()  # published by close(), not before
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["index"] for e in events] == [0, 1, 2, 3, 4]
    assert events[3]["score"] is None and events[3]["gated"] is True and events[3]["peak"] is None
    assert events[0]["peak"] == [round((HOT_COL + 0.5) / 7, 4), round((HOT_ROW + 0.5) / 7, 4)]
    with JsonlSink(path, append=True) as sink:
        sink.write(make_step(5))
    assert len(path.read_text().splitlines()) == 6


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def stepped(index: int, t: float, latency: float, gated: bool, drops: int) -> StepResult:
    step = make_step(index)
    step.capture_time, step.output_time, step.gated = t, t + latency, gated
    step.stats = {"drops": drops}
    return step


def test_terminal_status_prints_periodic_lines_when_not_a_tty():
    stream, clock = io.StringIO(), FakeClock()
    status = TerminalStatus(stream, interval_s=5.0, tty=False, clock=clock)
    for i in range(100):  # 10 s at 10 fps, latency 40 ms, every 4th step gated
        clock.now = i / 10
        status.write(stepped(i, i / 10, 0.04, i % 4 == 0, drops=i // 50))
    status.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3  # at 0 s, at 5 s, and the final line on close
    assert "\r" not in stream.getvalue()
    assert lines[-1] == "step 100 | 10.0 fps | latency p50 40 ms | drops 1 | gated 25%"


def test_terminal_status_redraws_in_place_on_a_tty():
    stream, clock = io.StringIO(), FakeClock()
    status = TerminalStatus(stream, tty=True, clock=clock)
    for i in range(10):
        clock.now = i * 0.25  # slower than the 0.1 s refresh: every step redraws
        status.write(stepped(i, i / 10, 0.02, False, 0))
    status.close()
    text = stream.getvalue()
    assert text.count("\r") == 10 and text.count("\x1b[K") == 10
    assert text.endswith("step 10 | 10.0 fps | latency p50 20 ms | drops 0 | gated 0%\x1b[K\n")
    assert text.count("\n") == 1


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.fail, self.written, self.closed = fail, 0, False

    def write(self, result: StepResult) -> None:
        self.written += 1
        if self.fail:
            raise SinkError("broken sink")

    def close(self) -> None:
        self.closed = True
        if self.fail:
            raise SinkError("broken on close")


def test_multisink_reaches_every_sink_even_if_one_raises():
    good_a, bad, good_b = Recorder(), Recorder(fail=True), Recorder()
    multi = MultiSink([good_a, bad, good_b])
    with pytest.raises(SinkError, match="broken sink"):
        multi.write(make_step(0))
    assert good_a.written == bad.written == good_b.written == 1
    with pytest.raises(SinkError, match="broken on close"):
        multi.close()
    assert good_a.closed and bad.closed and good_b.closed
    assert isinstance(TerminalStatus(io.StringIO()), Sink) and isinstance(multi, Sink)
