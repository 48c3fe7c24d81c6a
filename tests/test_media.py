"""Decoding real H.264 + AAC files made with PyAV: timestamps, audio rate, bad inputs, streaming."""

from __future__ import annotations

import fractions
import os

import av
import numpy as np
import pytest

from soundloc.media import AudioChunk, FrameGrid, MediaError, VideoChunk, iter_av, load_clip

NTSC = fractions.Fraction(30000, 1001)


def make_mp4(path, n=60, rate=NTSC, audio=True, video=True, sr=44100, size=(64, 48), pts=None,
             audio_seconds=None):
    """Frames whose grey level encodes the index ((37*i) % 256), a 440 Hz tone as audio.

    ``pts``: per-frame times in ms (variable frame rate) instead of a constant ``rate``.
    """
    c = av.open(str(path), "w")
    if video:
        v = c.add_stream("libx264", rate=rate if pts is None else 1000)
        v.width, v.height, v.pix_fmt = size[0], size[1], "yuv420p"
        if pts is not None:
            v.time_base = v.codec_context.time_base = fractions.Fraction(1, 1000)
    if audio:
        a = c.add_stream("aac", rate=sr)
        a.layout = "mono"
    if video:
        for i in range(n):
            img = np.full((size[1], size[0], 3), (37 * i) % 256, np.uint8)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i if pts is None else pts[i]
            c.mux(v.encode(f))
        c.mux(v.encode())
    if audio:
        secs = audio_seconds or (n / float(rate) if pts is None else (pts[-1] + 100) / 1000)
        total, pos = int(sr * secs), 0
        while pos < total:
            k = min(1024, total - pos)
            x = (0.5 * np.sin(2 * np.pi * 440 * np.arange(pos, pos + k) / sr)).astype(np.float32)
            f = av.AudioFrame.from_ndarray(x[None], format="flt", layout="mono")
            f.sample_rate, f.pts = sr, pos
            pos += k
            c.mux(a.encode(f))
        c.mux(a.encode())
    c.close()
    return str(path)


def source_frames(path):
    """Every source frame as (pts seconds, mean grey) straight from PyAV, for reference."""
    with av.open(path) as c:
        return [(float(f.pts * f.time_base), f.to_ndarray(format="rgb24").mean())
                for f in c.decode(video=0)]


def picked_indices(clip, ref, start=0.0):
    """For each output frame: (index expected by timestamp, index whose grey matches best)."""
    pts = np.array([p for p, _ in ref])
    means = np.array([m for _, m in ref])
    out = []
    for k, frame in enumerate(clip.frames):
        t = start + k / 10
        expected = int(np.searchsorted(pts, t + 1e-6, side="right") - 1)
        lo, hi = max(0, expected - 3), min(len(ref), expected + 4)
        best = lo + int(np.argmin(np.abs(means[lo:hi] - frame.mean())))
        out.append((expected, best))
    return out


def dominant_hz(x, sr=16000):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spec) * sr / len(x)


def test_2997_fps_frames_picked_by_timestamp(tmp_path):
    path = make_mp4(tmp_path / "ntsc.mp4", n=150)
    clip = load_clip(path, seconds=5.0)
    assert clip.frames.shape == (50, 112, 112, 3) and clip.frames.dtype == np.uint8
    assert clip.audio.shape == (80000,) and clip.audio.dtype == np.float32
    assert abs(clip.source_fps - 29.97) < 0.01 and clip.source_size == (64, 48)
    pairs = picked_indices(clip, source_frames(path))
    assert [e for e, _ in pairs][:4] == [0, 2, 5, 8]  # floor(k * 2.997)
    assert all(e == b for e, b in pairs), pairs
    assert abs(dominant_hz(clip.audio[16000:32000]) - 440) < 2


def test_whole_file_and_window_from_start(tmp_path):
    path = make_mp4(tmp_path / "ntsc.mp4", n=150)
    whole = load_clip(path)
    assert whole.frames.shape[0] == 50  # 150 frames / 29.97 = 5.005 s -> 50 whole steps
    assert abs(len(whole.audio) - 5.005 * 16000) < 1200  # AAC pads the last 1024-sample frame
    part = load_clip(path, seconds=1.0, start=2.0)
    assert part.frames.shape[0] == 10 and part.audio.shape == (16000,)
    pairs = picked_indices(part, source_frames(path), start=2.0)
    assert pairs[0][0] == 59 and all(e == b for e, b in pairs), pairs
    # audio from the seek point is the same span as in the whole decode, to within a sample
    # (the resampler restarts at an AAC frame boundary, which is not on the 16 kHz grid)
    errors = {lag: np.abs(part.audio[2000:14000] - whole.audio[34000 + lag:46000 + lag]).max()
              for lag in range(-4, 5)}
    assert min(errors, key=errors.get) in (-1, 0, 1) and min(errors.values()) < 0.05, errors


def test_padding_past_the_end(tmp_path):
    path = make_mp4(tmp_path / "short.mp4", n=30)  # ~1 s
    clip = load_clip(path, seconds=2.0)
    assert clip.frames.shape[0] == 20 and clip.audio.shape == (32000,)
    assert (clip.frames[10:] == clip.frames[10]).all()  # last source frame (at 0.968 s) repeated
    assert not (clip.frames[9] == clip.frames[10]).all()  # point 0.9 shows source frame 26
    assert not clip.audio[17000:].any()  # zeros after the audio ends


def test_variable_frame_rate(tmp_path):
    pts = [0, 40, 90, 95, 260, 300, 310, 520, 700, 705, 710, 990, 1200]
    path = make_mp4(tmp_path / "vfr.mp4", n=len(pts), pts=pts)
    ref = source_frames(path)
    assert [round(p * 1000) for p, _ in ref] == pts
    clip = load_clip(path, seconds=1.3)
    pairs = picked_indices(clip, ref)
    assert [e for e, _ in pairs] == [0, 3, 3, 5, 6, 6, 7, 8, 10, 10, 11, 11, 12]
    assert all(e == b for e, b in pairs), pairs


def one_line_error(path, **kw):
    with pytest.raises(MediaError) as info:
        load_clip(path, **kw)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_bad_files(tmp_path):
    assert "no such file" in one_line_error(tmp_path / "missing.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert "empty" in one_line_error(tmp_path / "empty.mp4")
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 50)
    assert "not a media file" in one_line_error(tmp_path / "text.mp4")
    good = make_mp4(tmp_path / "good.mp4", n=30)
    data = open(good, "rb").read()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    assert "truncated" in one_line_error(tmp_path / "cut.mp4")


def test_video_without_audio_and_audio_only(tmp_path):
    silent = make_mp4(tmp_path / "silent.mp4", n=20, audio=False)
    assert "no audio stream" in one_line_error(silent)
    clip = load_clip(silent, seconds=1.0, require_audio=False)
    assert not clip.has_audio and clip.audio.shape == (16000,) and not clip.audio.any()
    assert clip.frames.shape == (10, 112, 112, 3)
    only = make_mp4(tmp_path / "sound.m4a", video=False, audio_seconds=1.0)
    assert "no video stream" in one_line_error(only)


def test_frame_grid_30fps_and_flush():
    grid = FrameGrid(10)
    out = []
    for i in range(30):
        out += grid.push(i / 30, i)
    assert out == [(k, 3 * k) for k in range(10)]  # point 0.9 decided by the frame at 0.933
    assert grid.flush(end=1.0) == []  # 1 s holds 10 whole steps
    assert grid.flush(count=12) == [(10, 29), (11, 29)]


def test_frame_grid_late_first_frame_and_gaps():
    grid = FrameGrid(10)
    assert grid.push(0.25, "a") == [(0, "a"), (1, "a"), (2, "a")]  # before the first frame: first frame
    assert grid.push(0.55, "b") == [(3, "a"), (4, "a"), (5, "a")]
    assert grid.push(0.50, "late") == []  # out of order: treated as current time, no rewind
    assert grid.flush(end=0.8) == [(6, "late"), (7, "late")]


def test_frame_grid_exact_grid_timestamps():
    grid = FrameGrid(10)
    assert grid.push(0.0, 0) == []
    assert grid.push(0.1, 1) == [(0, 0)]  # frame at exactly 0.1 shows at point 0.1, not 0.0
    assert grid.push(0.2, 2) == [(1, 1)]
    assert FrameGrid(10).flush(end=5.0) == []  # nothing pushed: nothing to show


def vmrss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc for RSS")
def test_iter_av_streams_a_long_file(tmp_path):
    path = make_mp4(tmp_path / "long.mp4", n=600, rate=10, size=(320, 240))  # 60 s
    items = iter_av(path)
    seen = []
    for item in items:
        seen.append(item)
        if isinstance(item, VideoChunk) and item.pts >= 1.0:
            break
    assert max(i.pts for i in seen) < 1.5  # lazily decoded: nothing far ahead was read
    before, peak, frames, samples = vmrss_mb(), 0.0, 0, 0
    for item in items:
        if isinstance(item, VideoChunk):
            frames += 1
            peak = max(peak, vmrss_mb())
        else:
            assert item.offset == samples + sum(len(i.samples) for i in seen if isinstance(i, AudioChunk))
            samples += len(item.samples)
    assert frames + sum(isinstance(i, VideoChunk) for i in seen) == 600
    assert peak - before < 60  # the decoded file would be 600 x 230 kB = 138 MB
    clip = load_clip(path, seconds=2.0, start=55.0)  # seek: only the window is decoded
    assert clip.frames.shape[0] == 20
    assert picked_indices(clip, source_frames(path), start=55.0)[0] == (550, 550)
