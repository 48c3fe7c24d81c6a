"""Capture sources on real files, real lavfi graphs and an ALSA "microphone" without hardware."""

from __future__ import annotations

import fractions
import json
import os
import subprocess
import sys
import time

import av
import numpy as np
import pytest

from soundloc.media import MediaError, load_clip
from soundloc.runtime import sources
from soundloc.runtime.sources import open_source, parse_spec

CAMERA = "lavfi:testsrc=size=160x120:rate=30"
MIC = "lavfi:sine=frequency=440:sample_rate=48000"


def make_mp4(path, n=60, rate=fractions.Fraction(30000, 1001), audio=True, sr=44100):
    """An H.264 + AAC mp4: frames whose grey encodes the index, a 440 Hz tone."""
    c = av.open(str(path), "w")
    v = c.add_stream("libx264", rate=rate)
    v.width, v.height, v.pix_fmt = 96, 64, "yuv420p"
    a = c.add_stream("aac", rate=sr) if audio else None
    if a is not None:
        a.layout = "mono"
    for i in range(n):
        f = av.VideoFrame.from_ndarray(np.full((64, 96, 3), (37 * i) % 256, np.uint8), format="rgb24")
        f.pts = i
        c.mux(v.encode(f))
    c.mux(v.encode())
    if a is not None:
        total = int(sr * n / float(rate))
        for pos in range(0, total, 1024):
            x = (0.5 * np.sin(2 * np.pi * 440 * np.arange(pos, min(pos + 1024, total)) / sr))
            f = av.AudioFrame.from_ndarray(x.astype(np.float32)[None], format="flt", layout="mono")
            f.sample_rate, f.pts = sr, pos
            c.mux(a.encode(f))
        c.mux(a.encode())
    c.close()
    return str(path)


def dominant_hz(x, sr=16000):
    return np.argmax(np.abs(np.fft.rfft(x * np.hanning(len(x))))) * sr / len(x)


def take(source, n, delay=0.0):
    out = []
    for step in source:
        out.append(step)
        if delay:
            time.sleep(delay)
        if len(out) >= n:
            break
    return out


def test_parse_spec():
    s = parse_spec("v4l2:/dev/video0?video_size=640x480&framerate=30")
    assert (s.format, s.url, s.options, s.live) == ("v4l2", "/dev/video0",
                                                   {"video_size": "640x480", "framerate": "30"}, True)
    assert parse_spec("avfoundation:0").options == {"framerate": "30"}
    assert parse_spec("avfoundation::0", audio=True).options == {}
    assert parse_spec("alsa:hw:1").url == "hw:1" and os.environ.get("ALSA_CONFIG_DIR")
    assert parse_spec("rtsp://cam/stream").live and parse_spec("rtsp://cam/stream").format is None
    assert not parse_spec("clip.mp4").live
    assert parse_spec("dshow:video=USB Camera").url == "video=USB Camera"


def test_file_source_matches_offline_decode(tmp_path):
    path = make_mp4(tmp_path / "a.mp4", n=90)  # 3.003 s at 29.97 fps
    offline = load_clip(path)
    with open_source(path, queue_size=2) as src:
        steps = []
        for step in src:
            steps.append(step)
            time.sleep(0.005)  # slower than the reader: a file must block, not drop
    assert [s.index for s in steps] == list(range(30)) and src.stats.dropped == 0
    assert src.stats.max_queue_depth <= 2 and "end of stream" in src.stats.end_reason
    for s in steps:
        assert s.frame.shape == (64, 96, 3) and s.small.shape == (112, 112, 3)
        assert s.audio.shape == (1600,) and s.audio.dtype == np.float32 and s.has_audio
        assert s.pts == pytest.approx(s.index / 10)
        np.testing.assert_array_equal(s.small, offline.frames[s.index])
        np.testing.assert_array_equal(s.audio, offline.audio[1600 * s.index:1600 * (s.index + 1)])
    times = [s.capture_time for s in steps]
    assert times == sorted(times)


def test_file_realtime_pacing(tmp_path):
    path = make_mp4(tmp_path / "a.mp4", n=30)  # 1 s
    t0 = time.monotonic()
    with open_source(path, realtime=True) as src:
        steps = list(src)
    assert len(steps) == 10 and time.monotonic() - t0 >= 0.85


def test_video_only_file(tmp_path):
    path = make_mp4(tmp_path / "silent.mp4", n=30, audio=False)
    with pytest.raises(MediaError, match="no audio stream") as info:
        open_source(path)
    assert "\n" not in str(info.value)
    with open_source(path, video_only=True) as src:
        steps = list(src)
    assert len(steps) == 10 and not any(s.has_audio or s.audio.any() for s in steps)


def test_lavfi_camera_and_mic():
    with open_source(CAMERA, MIC) as src:
        steps = take(src, 12)
        assert src.live
    assert [s.index for s in steps] == list(range(12))
    times = [s.capture_time for s in steps]
    assert times == sorted(times) and times[-1] - times[0] > 0.8  # lavfi paced at 1x
    assert all(s.audio.shape == (1600,) and s.frame.shape == (120, 160, 3) for s in steps)
    audio = np.concatenate([s.audio for s in steps])
    assert abs(dominant_hz(audio) - 440) < 3
    assert src.stats.end_reason == "closed"


def test_slow_consumer_drops_oldest_on_live_source():
    with open_source(CAMERA, MIC, queue_size=3) as src:
        steps = take(src, 6, delay=0.35)
        stats = src.stats
    assert stats.dropped > 0 and stats.max_queue_depth <= 3
    idx = [s.index for s in steps]
    assert idx == sorted(idx) and idx[-1] > 8  # later steps arrive: old ones were dropped


def test_stream_that_ends_early():
    """A live camera that ends after 0.5 s while its microphone's audio is still on the way:
    every frame captured (5 steps) comes out, whichever capture thread the scheduler runs
    first (the camera used to end the stream before the audio of its frames arrived). Both are
    paced at 1x, as real devices deliver; audio later than ``END_GRACE_S`` would be zeros."""
    with open_source(CAMERA + ":duration=0.5", MIC, realtime=True) as src:
        steps = list(src)
    assert [s.index for s in steps] == list(range(5)) and "end of stream" in src.stats.end_reason
    with_audio = [s.audio for s in steps if s.has_audio]
    assert all(abs(dominant_hz(a) - 440) < 40 for a in with_audio)


def test_camera_ending_before_its_microphone_starts(monkeypatch):
    """The race of the test above made certain: the microphone's first chunk is held back until
    the camera has ended; the camera's frames still come out, with the microphone's audio."""
    real = sources._Assembler.add_audio

    def late_audio(self, chunk, t):
        deadline = time.monotonic() + 5
        while not self.video_ended and time.monotonic() < deadline:
            time.sleep(0.01)
        real(self, chunk, t)

    monkeypatch.setattr(sources._Assembler, "add_audio", late_audio)
    monkeypatch.setattr(sources, "END_GRACE_S", 60.0)  # the wait ends when the audio is in
    with open_source(CAMERA + ":duration=0.5", MIC, realtime=False) as src:
        steps = list(src)
    assert [s.index for s in steps] == list(range(5)) and all(s.has_audio for s in steps)


def test_separate_audio_file_far_ahead_of_the_video_loses_no_step(tmp_path):
    """``--audio`` from a second file: its thread decodes audio much faster than the video
    thread decodes frames. It must wait (a file never skips), and the video's end, not the
    audio's, ends the stream: every step comes out with the audio of the offline decode."""
    path = make_mp4(tmp_path / "a.mp4", n=240, rate=fractions.Fraction(30))  # 8 s > MAX_LAG_STEPS
    offline = load_clip(path)
    with open_source(path, path, queue_size=2) as src:
        steps = list(src)
    assert [s.index for s in steps] == list(range(80)) and src.stats.skipped == 0
    assert all(s.has_audio for s in steps)
    for s in steps[::7]:
        np.testing.assert_array_equal(s.audio, offline.audio[1600 * s.index:1600 * (s.index + 1)])


def test_separate_audio_file_shorter_than_the_video_pads_with_zeros(tmp_path):
    video = make_mp4(tmp_path / "v.mp4", n=90, rate=fractions.Fraction(30), audio=False)  # 3 s
    audio = make_mp4(tmp_path / "a.mp4", n=30, rate=fractions.Fraction(30))  # 1 s of tone
    with open_source(video, audio) as src:
        steps = list(src)
    assert [s.index for s in steps] == list(range(30))
    assert all(s.has_audio for s in steps[:9]) and not any(s.has_audio or s.audio.any() for s in steps[11:])


def test_unopenable_device():
    with pytest.raises(MediaError) as info:
        open_source("v4l2:/dev/video99", MIC)
    assert "/dev/video99" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(MediaError, match="no such file"):
        open_source("/nonexistent/clip.mp4")


ALSA_SCRIPT = r"""
import json, sys
from soundloc.runtime.sources import open_source
try:
    src = open_source(sys.argv[1], "alsa:default?channels=1&sample_rate=48000", realtime=True)
except Exception as e:
    print(json.dumps({"error": str(e)})); sys.exit(0)
with src:
    steps = []
    for s in src:
        steps.append(s)
        if len(steps) >= 10:
            break
import numpy as np
audio = np.concatenate([s.audio for s in steps])
spec = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
print(json.dumps({"n": len(steps), "hz": float(np.argmax(spec) * 16000 / len(audio)),
                  "lens": sorted({len(s.audio) for s in steps}), "samples": src.stats.audio_samples}))
"""


def test_alsa_microphone_from_file_plugin(tmp_path):
    raw = tmp_path / "mic.raw"
    t = np.arange(48000 * 4) / 48000
    (0.4 * 32767 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tofile(raw)
    conf = tmp_path / "asound.conf"
    conf.write_text('pcm.!default {\n type file\n slave.pcm { type null }\n file "/dev/null"\n'
                    f' infile "{raw}"\n format "raw"\n}}\n')
    env = dict(os.environ, ALSA_CONFIG_PATH=str(conf))
    res = subprocess.run([sys.executable, "-c", ALSA_SCRIPT, CAMERA], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if "error" in out:
        pytest.skip(f"PyAV's alsa demuxer cannot open the file-plugin PCM here: {out['error']}")
    assert out["n"] == 10 and out["lens"] == [1600] and abs(out["hz"] - 440) < 3


def test_list_devices_and_parsers(tmp_path):
    assert isinstance(sources.list_devices(), list)  # no crash on a machine without devices
    (tmp_path / "video0").touch()
    (tmp_path / "video10").touch()
    (tmp_path / "vcs").touch()
    cams = sources._linux_cameras(str(tmp_path))
    assert [c["spec"] for c in cams] == [f"v4l2:{tmp_path}/video0", f"v4l2:{tmp_path}/video10"]
    pcm = tmp_path / "pcm"
    pcm.write_text("00-00: ALC3246 Analog : ALC3246 Analog : playback 1 : capture 1\n"
                   "00-03: HDMI 0 : HDMI 0 : playback 1\n"
                   "01-00: USB Audio : USB Audio : capture 1\n")
    mics = sources._alsa_capture_devices(str(pcm))
    assert [m["spec"] for m in mics] == ["alsa:hw:0,0", "alsa:hw:1,0"]
    assert mics[1]["name"] == "USB Audio"
    assert sources._alsa_capture_devices(str(tmp_path / "absent")) == []


def test_devices_command(monkeypatch):
    from typer.testing import CliRunner

    from soundloc.cli import app

    monkeypatch.setattr(sources, "list_devices", lambda: [])
    res = CliRunner().invoke(app, ["devices"])
    assert res.exit_code == 0 and "no cameras/microphones found" in res.output and "lavfi:" in res.output
    monkeypatch.setattr(sources, "list_devices",
                        lambda: [{"kind": "camera", "spec": "v4l2:/dev/video0", "name": "Cam"}])
    res = CliRunner().invoke(app, ["devices"])
    assert "v4l2:/dev/video0" in res.output and "no cameras" not in res.output
