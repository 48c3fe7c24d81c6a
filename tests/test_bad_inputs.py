"""Bad inputs (issue 7): every kind of broken or unusual file meets each path that reads it --
``load_clip`` (training, evaluation), ``StepSource`` (the runtime), the dataset scan and the
CLI -- and gets a clear one-line message or a documented fallback, never a traceback.

Files are generated here with PyAV. Kinds already covered elsewhere are not repeated:
missing / empty / text-as-mp4 / cut mp4 and VFR through ``load_clip`` (test_media), a 60 s
file streamed in bounded memory (test_media), broken clips skipped through DataLoader
workers (test_dataset), corrupt VGG-SS json / Flickr xml / CSV rows (test_annotations),
checkpoints of another config or format version (test_checkpoint), altered or missing
export files (test_export), TensorRT version checks (test_tensorrt), all-NaN maps in the
metrics (test_metrics). Here those kinds go through the paths those tests do not reach.
"""

from __future__ import annotations

import fractions
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import av
import numpy as np
import pytest

from soundloc.media import MediaError, VideoChunk, iter_av, load_clip
from soundloc.runtime.sources import StepSource

LEFT, RIGHT = 30, 220  # grey levels of the left and right halves of every generated frame
TONE = 440.0


# -- generated media ------------------------------------------------------------------------------
def write_media(path: Path, *, size: tuple[int, int] = (64, 48), n: int = 20, rate: int = 10,
                codec: str = "libx264", pix_fmt: str = "yuv420p", fmt: str | None = None,
                pts_ms: list[int] | None = None, audio_rate: int = 44100, layout: str = "mono",
                audio_codec: str = "aac", audio_seconds: float | None = None, video: bool = True,
                audio: bool = True, options: dict[str, str] | None = None,
                grey: int | None = None) -> Path:
    """A file whose frames are dark on the left and bright on the right (or ``grey`` all over)
    and whose audio is a 440 Hz tone on every channel. ``pts_ms``: variable frame rate."""
    w, h = size
    with av.open(str(path), "w", format=fmt, options=options or {}) as c:
        if video:
            vs = c.add_stream(codec, rate=rate if pts_ms is None else 1000, options={"preset": "ultrafast"}
                              if codec == "libx264" else {})
            vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt
            if pts_ms is not None:
                vs.time_base = vs.codec_context.time_base = fractions.Fraction(1, 1000)
        if audio:
            ast = c.add_stream(audio_codec, rate=audio_rate, layout=layout)
        if video:
            img = np.full((h, w, 3), grey if grey is not None else LEFT, np.uint8)
            if grey is None:
                img[:, w // 2:] = RIGHT
            for i in range(n):
                frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format=pix_fmt)
                frame.pts = i if pts_ms is None else pts_ms[i]
                c.mux(vs.encode(frame))
            c.mux(vs.encode())
        if audio:
            seconds = audio_seconds or (n / rate if pts_ms is None else pts_ms[-1] / 1000 + 0.1)
            _write_tone(c, ast, audio_rate, seconds)
    return path


def _write_tone(c, stream, rate: int, seconds: float, block: int = 1024) -> None:
    channels = stream.codec_context.channels
    pcm16 = stream.codec_context.name.startswith("pcm_s16")
    total, pos = int(rate * seconds), 0
    while pos < total:
        k = min(block, total - pos)
        x = 0.3 * np.sin(2 * np.pi * TONE * np.arange(pos, pos + k) / rate)
        if pcm16:
            data = np.repeat((x * 32767).astype(np.int16), channels)[None]  # packed s16
            frame = av.AudioFrame.from_ndarray(data, format="s16", layout=stream.layout.name)
        else:  # packed: PyAV 18 gives a planar 8-channel frame 9 planes; the encoder converts
            data = np.repeat(x.astype(np.float32), channels)[None]
            frame = av.AudioFrame.from_ndarray(data, format="flt", layout=stream.layout.name)
        frame.sample_rate, frame.pts = rate, pos
        pos += k
        c.mux(stream.encode(frame))
    c.mux(stream.encode())


def dominant_hz(x: np.ndarray, rate: int = 16000) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * rate / len(x))


def assert_split_picture(frames: np.ndarray) -> None:
    """(T, H, W, 3) frames show the dark-left / bright-right picture. Levels may move by the
    limited/full range difference of gray and 10-bit formats (30 -> 15, 220 -> 236 for
    gray10le here), never swap or scramble."""
    w = frames.shape[2]
    left, right = frames[:, :, : w // 4].mean(), frames[:, :, -w // 4:].mean()
    assert abs(left - LEFT) < 20 and abs(right - RIGHT) < 20 and right - left > 150, (left, right)


def garbage_payload(good: Path, out: Path) -> Path:
    """``good`` (a faststart mp4) with every byte after the mdat header replaced by noise: a
    valid container whose video packets decode to nothing."""
    data = bytearray(good.read_bytes())
    at = data.find(b"mdat") + 4
    data[at:] = np.random.default_rng(0).integers(0, 256, len(data) - at, dtype=np.uint8).tobytes()
    out.write_bytes(bytes(data))
    return out


# -- the CLI as users run it ---------------------------------------------------------------------
def run_cli(*args: str, debug: bool = False, timeout: float = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "soundloc", *(["--debug"] if debug else []), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    """A failed command printed exactly one ``error:`` line naming ``needles`` and no traceback."""
    assert r.returncode != 0, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


# -- unusual but valid media: decoded onto the model's grid --------------------------------------
VIDEO_KINDS = {
    "1x1": dict(size=(1, 1), pix_fmt="yuv444p", grey=200),
    "gray": dict(codec="ffv1", pix_fmt="gray", fmt="matroska"),
    "gray10": dict(pix_fmt="gray10le"),
    "10bit": dict(pix_fmt="yuv420p10le"),
    "8k": dict(size=(7680, 4320), n=2),  # 7680x4320: two frames are enough (and cheap)
}


@pytest.mark.parametrize("kind", list(VIDEO_KINDS))
def test_unusual_video_decodes_in_offline_and_runtime_paths(tmp_path, kind):
    spec = VIDEO_KINDS[kind]
    path = write_media(tmp_path / f"{kind}.mkv", **spec)
    n = spec.get("n", 20)
    clip = load_clip(path, seconds=n / 10)
    assert clip.frames.shape == (n, 112, 112, 3) and clip.source_size == spec.get("size", (64, 48))
    if "grey" in spec:
        assert abs(clip.frames.mean() - spec["grey"]) < 6
    else:
        assert_split_picture(clip.frames)
    assert abs(dominant_hz(clip.audio) - TONE) < 20
    with StepSource(str(path)) as source:
        steps = list(source)
    assert [s.index for s in steps] == list(range(n)), source.stats
    w, h = spec.get("size", (64, 48))
    assert steps[0].frame.shape == (h, w, 3) and steps[0].small.shape == (112, 112, 3)
    np.testing.assert_array_equal(np.stack([s.small for s in steps]), clip.frames)  # one decode path


AUDIO_KINDS = {"8kHz": dict(audio_rate=8000), "96kHz": dict(audio_rate=96000),
               "8ch": dict(audio_rate=48000, layout="7.1")}


@pytest.mark.parametrize("kind", list(AUDIO_KINDS))
def test_unusual_audio_becomes_16k_mono(tmp_path, kind):
    path = write_media(tmp_path / f"{kind}.mp4", **AUDIO_KINDS[kind])
    with av.open(str(path)) as c:  # the file really is what the test says
        a = c.streams.audio[0].codec_context
        assert (a.sample_rate, a.channels) == (AUDIO_KINDS[kind]["audio_rate"], 8 if kind == "8ch" else 1)
    clip = load_clip(path, seconds=2.0)
    assert clip.audio.shape == (32000,) and clip.audio.dtype == np.float32
    assert abs(dominant_hz(clip.audio[1600:]) - TONE) < 20
    # mono is the mean of the channels (libswresample's own 7.1 -> mono mix gave about 5x one
    # channel's level, beyond full scale): the same tone on every channel keeps its level
    assert np.isfinite(clip.audio).all() and 0.2 < np.abs(clip.audio[1600:30000]).max() < 0.6  # the 0.3 tone, AAC-coded
    with StepSource(str(path)) as source:
        steps = list(source)
    assert len(steps) == 20 and all(s.audio.shape == (1600,) and s.has_audio for s in steps[:-1])
    live = np.concatenate([s.audio for s in steps])
    np.testing.assert_allclose(live[: len(clip.audio)], clip.audio[: len(live)], atol=1e-6)


def test_variable_frame_rate_runtime_equals_offline(tmp_path):
    # load_clip's VFR choice of frames is checked by timestamps in test_media; here the runtime
    # path must pick exactly the same frames (one definition of 10 fps by timestamps)
    pts = [0, 40, 90, 95, 260, 300, 310, 520, 700, 705, 710, 990, 1200, 1900]
    path = tmp_path / "vfr.mp4"
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=1000)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        vs.time_base = vs.codec_context.time_base = fractions.Fraction(1, 1000)
        ast = c.add_stream("aac", rate=16000, layout="mono")
        for i, p in enumerate(pts):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), (37 * i) % 256, np.uint8), format="rgb24")
            f.pts = p
            c.mux(vs.encode(f))
        c.mux(vs.encode())
        _write_tone(c, ast, 16000, 2.0)
    clip = load_clip(path)
    with StepSource(str(path)) as source:
        steps = list(source)
    assert len(steps) >= clip.num_frames >= 19
    np.testing.assert_array_equal(np.stack([s.small for s in steps[: clip.num_frames]]), clip.frames)


def test_wrong_extension_is_sniffed_not_trusted(tmp_path):
    # documented fallback: the container is recognised from its bytes, so an mp4 named .avi
    # works; an audio file named .mp4 is told apart by its content, in one line
    good = write_media(tmp_path / "clip.avi", fmt="mp4")
    assert load_clip(good, seconds=2.0).frames.shape == (20, 112, 112, 3)
    wav = write_media(tmp_path / "sound.mp4", fmt="wav", video=False, audio_codec="pcm_s16le", audio_seconds=1.0)
    with pytest.raises(MediaError, match="no video stream") as e:
        load_clip(wav)
    assert "\n" not in str(e.value) and str(wav) in str(e.value)


# -- broken media: one line from every path -------------------------------------------------------
def _broken(kind: str, d: Path) -> Path:
    if kind == "zero-byte":
        (d / "zero.mp4").write_bytes(b"")
        return d / "zero.mp4"
    if kind == "truncated":
        good = write_media(d / "whole.mp4", n=30)
        (d / "cut.mp4").write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])
        return d / "cut.mp4"
    if kind == "audio-only":
        return write_media(d / "audio.mp4", video=False, audio_seconds=2.0)
    if kind == "video-only":
        return write_media(d / "video.mp4", audio=False)
    if kind == "no-frames":  # a video track with no frame in it (and audio); mp4 would drop the track
        return write_media(d / "noframes.mkv", n=0, audio_seconds=2.0, fmt="matroska")
    if kind == "garbage-frames":  # container intact, every packet noise
        good = write_media(d / "fast.mp4", n=30, options={"movflags": "faststart"})
        return garbage_payload(good, d / "garbage.mp4")
    raise AssertionError(kind)


BROKEN = {"zero-byte": "empty file", "truncated": "truncated", "audio-only": "no video stream",
          "video-only": "no audio stream", "no-frames": "no decodable video frames",
          "garbage-frames": "corrupt|no decodable"}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_file_is_one_line_from_load_clip_and_runtime(tmp_path, kind):
    path = _broken(kind, tmp_path)
    with pytest.raises(MediaError, match=BROKEN[kind]) as e:
        load_clip(path, seconds=2.0)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    try:
        source = StepSource(str(path))
    except MediaError as e:  # refused at open: one line naming the file
        assert "\n" not in str(e) and str(path) in str(e)
        return
    with source:
        steps = list(source)
    # opened, but nothing decodable: the stream ends at once with its reason, no step invented
    assert steps == [] and source.stats.end_reason, source.stats
    assert all("\n" not in err for err in source.stats.errors)


@pytest.mark.parametrize("kind", list(BROKEN))
def test_broken_file_through_cli_stream_has_no_traceback(tmp_path, tiny, kind):
    path = _broken(kind, tmp_path)
    r = run_cli("stream", tiny.export, "--video", path, "--out", tmp_path / "o.mp4", "--json", tmp_path / "s.json")
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    if r.returncode == 0:  # opened, nothing decodable: the summary line says so
        summary = json.loads((tmp_path / "s.json").read_text())
        assert summary["steps"] == 0 and summary["end_reason"] in r.stdout
        assert not (tmp_path / "o.mp4").exists()  # no empty "output" pretending to be a result
    else:
        assert_one_line_error(r, str(path))


def test_debug_flag_shows_the_traceback(tmp_path, tiny):
    path = _broken("audio-only", tmp_path)
    r = run_cli("stream", tiny.export, "--video", path, debug=True)
    assert r.returncode != 0 and "Traceback" in r.stderr and "MediaError" in r.stderr


def test_dataset_scan_keeps_going_and_reports_every_kind(tmp_path):
    torch = pytest.importorskip("torch", reason="the training datasets need torch")
    from soundloc.config import preset
    from soundloc.train.datasets import PathListDataset, SkipReport, collate

    good = {"tiny1x1.mp4": dict(size=(1, 1), pix_fmt="yuv444p", grey=200, n=30),
            "gray.mkv": dict(codec="ffv1", pix_fmt="gray", fmt="matroska", n=30),
            "ten_bit.mp4": dict(pix_fmt="yuv420p10le", n=30), "rate8k.mp4": dict(audio_rate=8000, n=30),
            "rate96k.mp4": dict(audio_rate=96000, n=30), "surround.mp4": dict(audio_rate=48000, layout="7.1", n=30),
            "named.avi": dict(fmt="mp4", n=30)}
    for name, spec in good.items():
        write_media(tmp_path / name, **spec)
    bad = {kind: _broken(kind, tmp_path).name for kind in BROKEN}
    rows = [f"{name},a" for name in good] + [f"{name},b" for name in bad.values()] + ["gone.mp4,b"]
    (tmp_path / "list.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    ds = PathListDataset(tmp_path / "list.csv", config=preset("tiny"))
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate, num_workers=0)
    report, loaded = SkipReport(keep=50), []
    for batch in loader:
        report.add(batch["skipped"])
        loaded += batch["id"]
        assert batch["video"].shape[1:] == (3, 20, 112, 112) if batch["id"] else True
    assert sorted(loaded) == sorted(Path(n).stem for n in good)
    reasons = dict(report.first)
    assert report.count == len(bad) + 1 and "no such file" in reasons["gone"]
    for kind, name in bad.items():
        assert all(w in reasons[Path(name).stem] or kind == "garbage-frames" for w in BROKEN[kind].split("|")), reasons
        assert "\n" not in reasons[Path(name).stem]
    assert report.summary().startswith(f"{len(bad) + 1} clips skipped")


# -- a 1-hour file: streamed, never loaded whole ---------------------------------------------------
def _rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.fixture(scope="module")
def hour_file(tmp_path_factory) -> Path:
    """3,600 s: 16x16 H.264 at 1 fps (grey level = second * 37 % 256) + 8 kHz PCM, in ~5 s."""
    path = tmp_path_factory.mktemp("hour") / "hour.mkv"
    rate = 8000
    second = (0.3 * np.sin(2 * np.pi * TONE * np.arange(rate) / rate) * 32767).astype(np.int16)[None]
    with av.open(str(path), "w", format="matroska") as c:
        vs = c.add_stream("libx264", rate=1, options={"preset": "ultrafast", "g": "10"})
        vs.width = vs.height = 16
        vs.pix_fmt = "yuv420p"
        ast = c.add_stream("pcm_s16le", rate=rate, layout="mono")
        for i in range(3600):
            f = av.VideoFrame.from_ndarray(np.full((16, 16, 3), (37 * i) % 256, np.uint8), format="rgb24")
            f.pts = i
            c.mux(vs.encode(f))
            a = av.AudioFrame.from_ndarray(second, format="s16", layout="mono")
            a.sample_rate, a.pts = rate, i * rate
            c.mux(ast.encode(a))
        c.mux(vs.encode())
        c.mux(ast.encode())
    return path


class _CountingContainer:
    """A PyAV container that counts the packets it demuxes (what a seek saves)."""

    def __init__(self, container: av.container.InputContainer) -> None:
        self._container, self.packets = container, 0

    def __getattr__(self, name: str):
        return getattr(self._container, name)

    def demux(self, *args, **kwargs):
        for packet in self._container.demux(*args, **kwargs):
            self.packets += 1
            yield packet


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc for RSS")
def test_hour_long_file_streams_in_bounded_memory_and_seeks(hour_file):
    with StepSource(str(hour_file)) as source:
        steps = []
        for step in source:
            if step.index == 50:
                base = _rss_mb()
            if step.index >= 50:
                peak = max(_rss_mb(), locals().get("peak", 0.0))
            steps.append(step.index)
            if step.index == 1199:  # 2 minutes of media
                break
        captured = source.stats.frames_captured
    assert not any(t.is_alive() for t in source._threads)  # close() stopped the readers mid-file
    assert source.stats.frames_captured < 400  # ... and they read nothing more after the break
    assert steps == list(range(1200))
    assert captured < 200  # the reader is ~a queue ahead of the consumer, not 3,600 frames ahead
    assert peak - base < 30, (base, peak)  # MiB
    clip = load_clip(hour_file, seconds=5.0, start=3590.0)
    assert clip.duration == pytest.approx(3600, abs=1.5)
    assert clip.frames.shape == (50, 112, 112, 3)
    assert abs(clip.frames[0].mean() - (37 * 3590) % 256) < 6  # the frame at 3590 s, found by seeking
    assert abs(dominant_hz(clip.audio) - TONE) < 20
    with av.open(str(hour_file)) as raw:
        counted = _CountingContainer(raw)
        first = next(item for item in iter_av(str(hour_file), start=3590.0, container=counted)
                     if isinstance(item, VideoChunk))
    assert first.pts == pytest.approx(0.0, abs=0.2)  # the clock starts at the seek target
    # A seek reads at most one keyframe interval (250 frames) before 3590 s; decoding from 0 would
    # demux ~7,200 packets (a video and an audio packet per second of this file).
    assert counted.packets < 2000, counted.packets


# -- NaN / inf in maps -------------------------------------------------------------------------------
def _map_with(value: float, where: str) -> np.ndarray:
    m = np.zeros((7, 7), np.float32)
    m[2, 5] = 1.0
    if where == "one":
        m[0, 0] = value
    else:
        m[:] = value
    return m


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["one", "all"])
def test_non_finite_map_gives_no_box_and_no_warning(value, where):
    # documented fallback: a map with any non-finite value localises nothing (box None)
    import warnings

    from soundloc import localize

    m = _map_with(value, where)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from inf - inf either
        assert localize.normalise(m) is None
        assert localize.pseudo_box(m, 224, 224) is None
        avg = localize.window_average(np.stack([m, _map_with(0.0, "one")]), 3, "trailing")
    assert np.isfinite(avg[1]).all() or not np.isfinite(value)


def test_eval_counts_non_finite_maps_instead_of_failing(tmp_path):
    ann = [{"file": f"c{i}", "class": "x", "bbox": [[0.1, 0.1, 0.6, 0.6]]} for i in range(4)]
    (tmp_path / "vggss.json").write_text(json.dumps(ann))
    maps = {"c0": _map_with(np.nan, "one"), "c1": _map_with(np.inf, "all"), "c2": _map_with(-np.inf, "one"),
            "c3": _map_with(0.0, "one")}
    np.savez(tmp_path / "maps.npz", **maps)
    r = run_cli("eval", "--maps", tmp_path / "maps.npz", "--annotations", tmp_path / "vggss.json",
                "--json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["counts"]["non_finite_maps"] == 3 and result["counts"]["scored"] == 4
    assert result["summary"]["n"] == 4  # scored as empty predictions, not dropped


class _NanBackend:
    """Wraps a backend; calls ``bad`` (0-based) return NaN maps and an inf score."""

    def __init__(self, inner, bad: set[int]) -> None:
        self.inner, self.bad, self.calls = inner, bad, 0
        self.name, self.providers = inner.name, inner.providers

    def run(self, feed):
        out = self.inner.run(feed)
        if self.calls in self.bad:
            out = {**out, "alpha": np.full_like(out["alpha"], np.nan), "score": np.full_like(out["score"], np.inf)}
        self.calls += 1
        return out

    def close(self):
        self.inner.close()


def test_nan_from_the_model_gates_its_window_then_the_stream_recovers(tmp_path, tiny):
    pytest.importorskip("onnxruntime", reason="onnxruntime (the cpu extra) not installed")
    from soundloc.runtime.engine import StepModel
    from soundloc.runtime.sinks import JsonlSink
    from soundloc.runtime.stream import Localizer, StreamOptions

    path = write_media(tmp_path / "clip.mp4", n=60)
    model = StepModel.from_export(tiny.export, backend="onnxruntime-cpu")
    model.backend = _NanBackend(model.backend, bad={10})
    loc = Localizer(model, StreamOptions(window_seconds=1.0, gate_db=None))
    with StepSource(str(path)) as source, JsonlSink(tmp_path / "ev.jsonl") as sink:
        results = [r for inp in source for r in loc.push(inp)] + loc.flush()
        for r in results:
            sink.write(r)
    assert [r.index for r in results] == list(range(60))
    hit = 10 - tiny.bundle.lookahead_steps  # the step the NaN call describes
    poisoned = {r.index for r in results if r.heatmap is None}
    assert poisoned == set(range(hit, hit + 10))  # its 1 s trailing window, and nothing else
    assert all(r.gated and r.box is None for r in results if r.index in poisoned)
    assert all(r.heatmap is not None and np.isfinite(r.heatmap).all() for r in results[hit + 10:])
    events = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert len(events) == 60 and events[hit]["score"] is None  # inf/NaN written as JSON null


# -- annotations, checkpoints and exports through the CLI ---------------------------------------------
@pytest.mark.parametrize("text, why", [('[{"file": "a", "bbox": [[0, 0, 1', "corrupt or truncated json"),
                                       ('{"file": "a"}', "expected a json list"),
                                       ("\xff\xfe garbage", "not UTF-8")])
def test_corrupt_annotations_through_cli_eval(tmp_path, text, why):
    (tmp_path / "ann.json").write_bytes(text.encode("latin-1"))
    r = run_cli("eval", "--baseline", "center", "--annotations", tmp_path / "ann.json")
    assert_one_line_error(r, why, "ann.json")


def test_truncated_flickr_xml_through_cli_eval(tmp_path):
    (tmp_path / "xml").mkdir()
    (tmp_path / "xml" / "1.xml").write_text("<annotation><object><bbox><xmin>1</xmin><ymin>")
    r = run_cli("eval", "--baseline", "center", "--annotations", tmp_path / "xml")
    assert_one_line_error(r, "1.xml", "corrupt or truncated xml")


@pytest.mark.parametrize("text, why", [("a,0,cat,train\nb,0,cat", "4 columns"),  # cut mid-row
                                       ("a,0,cat,train\n\"b,0,cat,train\n", "4 columns|csv"),  # open quote
                                       ("a,0,cat,train\nb,\0x,cat,train\n", "not a number|NUL|csv")])
def test_corrupt_csv_through_cli_train(tmp_path, text, why):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "vggsound.csv").write_text(text)
    r = run_cli("train", tmp_path / "data", "--out", tmp_path / "run", "--epochs", "1", "--preset", "tiny")
    line = assert_one_line_error(r, "vggsound.csv")
    assert any(w in line for w in why.split("|")), line
    assert not (tmp_path / "run" / "last.pt").exists()


def _tamper(ckpt: Path, out: Path, how: str) -> Path:
    import torch

    if how == "truncated":
        out.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
        return out
    if how == "zero-byte":
        out.write_bytes(b"")
        return out
    data = torch.load(ckpt, weights_only=True)
    if how == "format-99":
        data["format_version"] = 99
    elif how == "other-config":
        data["config"]["width"] = 0.25  # weights of the tiny width under another width
    elif how == "not-soundloc":
        data = {"state_dict": data["model"]}
    torch.save(data, out)
    return out


CKPT_CASES = {"truncated": "not a readable checkpoint", "zero-byte": "not a readable checkpoint",
              "format-99": "format 99", "other-config": "do not match", "not-soundloc": "not a soundloc checkpoint"}


@pytest.mark.parametrize("how", list(CKPT_CASES))
def test_bad_checkpoint_through_cli_info_and_export(tmp_path, tiny, how):
    bad = _tamper(tiny.ckpt, tmp_path / f"{how}.pt", how)
    assert_one_line_error(run_cli("info", bad), CKPT_CASES[how], str(bad))
    if how in ("truncated", "other-config"):  # export reads through the same function; two suffice
        assert_one_line_error(run_cli("export", bad, "--out", tmp_path / "exp"), CKPT_CASES[how])
        assert not (tmp_path / "exp" / "soundloc.json").exists()


EXPORT_CASES = ["missing-graph", "altered-graph", "truncated-manifest", "manifest-format-99", "not-export"]


@pytest.mark.parametrize("how", EXPORT_CASES)
def test_bad_export_dir_through_cli_stream(tmp_path, tiny, how):
    root = tmp_path / "exp"
    shutil.copytree(tiny.export, root)
    manifest = root / "soundloc.json"
    if how == "missing-graph":
        (root / "step.onnx").unlink()
    elif how == "altered-graph":
        data = bytearray((root / "step.onnx").read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
        (root / "step.onnx").write_bytes(bytes(data))
    elif how == "truncated-manifest":
        manifest.write_text(manifest.read_text()[:100])
    elif how == "manifest-format-99":
        m = json.loads(manifest.read_text())
        m["format_version"] = 99
        manifest.write_text(json.dumps(m))
    elif how == "not-export":
        manifest.unlink()
    clip = write_media(tmp_path / "clip.mp4")
    r = run_cli("stream", root, "--video", clip, "--out", tmp_path / "o.mp4")
    why = {"missing-graph": "missing", "altered-graph": "altered", "truncated-manifest": "corrupt manifest",
           "manifest-format-99": "format 99", "not-export": "not an export directory"}[how]
    assert_one_line_error(r, why)
    assert not (tmp_path / "o.mp4").exists()


def _fake_tensorrt(monkeypatch, version: str) -> None:
    """This machine "has" TensorRT ``version`` on an sm_89 GPU (no library or GPU needed: the
    compatibility check runs before any engine byte is read)."""
    from soundloc.runtime import tensorrt_backend as trb

    monkeypatch.setattr(trb, "import_tensorrt", lambda: types.SimpleNamespace(__version__=version))
    monkeypatch.setattr(trb, "import_cudart", lambda: types.SimpleNamespace())
    monkeypatch.setattr(trb, "query_gpu", lambda device=0: trb.GpuInfo("NVIDIA L4", "8.9"))


def test_engine_from_another_tensorrt_is_refused_or_skipped_by_auto(tmp_path, tiny, monkeypatch):
    # the compatibility rules are unit-tested in test_tensorrt; here an export that carries an
    # engine built elsewhere meets the runtime's loader
    pytest.importorskip("onnxruntime", reason="onnxruntime (the cpu extra) not installed")
    from soundloc.runtime.backend import BackendError
    from soundloc.runtime.bundle import file_record, read_bundle, write_manifest
    from soundloc.runtime.backend_spec import load_step_model

    root = tmp_path / "exp"
    shutil.copytree(tiny.export, root)
    (root / "step.engine").write_bytes(b"serialised engine from another machine")
    m = json.loads((root / "soundloc.json").read_text())
    m["graphs"]["step"]["files"]["engine"] = file_record(root / "step.engine")
    m["tensorrt"] = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA L4", "compute_capability": "8.9"}
    write_manifest(root, m)
    _fake_tensorrt(monkeypatch, "11.4.0")
    with pytest.raises(BackendError) as e:
        load_step_model(root, "tensorrt")
    msg = str(e.value)
    assert "\n" not in msg and "10.3.0" in msg and "11.4.0" in msg and "rebuild" in msg
    model = load_step_model(root, "auto")  # documented fallback: auto uses onnxruntime instead
    try:
        assert model.backend.name.startswith("onnxruntime")
    finally:
        model.close()
    assert read_bundle(root).graph("step")["files"]["engine"]["file"] == "step.engine"


# -- issue 21, case 6: what was asked for did not run -> not a success -------------------------------------
def test_bench_with_no_backend_that_loads_exits_non_zero(tiny):
    pytest.importorskip("onnxruntime", reason="onnxruntime (the cpu extra) not installed")
    r = run_cli("bench", tiny.export, "--backend", "tensorrt", "--warmup", "0", "--duration", "0.1",
                "--min-iters", "2", "--no-references")
    assert r.returncode == 1, (r.stdout, r.stderr)  # before: 0, with "unavailable" in the table
    assert_one_line_error(r, "no backend could run", "tensorrt")


def test_resume_with_another_recipe_is_refused(tmp_path):
    pytest.importorskip("torch", reason="torch (the train extra) needed to train")
    from soundloc.data.synth import make_synthetic_dataset
    from soundloc.model.checkpoint import read_checkpoint

    data, out = tmp_path / "data", tmp_path / "run"
    make_synthetic_dataset(data, num_clips=4, seconds=1.0, num_classes=2, val_fraction=0.5, workers=1, size=64)
    base = ["train", data, "--out", out, "--workers", "0", "--batch-size", "2", "--preset", "tiny",
            "--set", "clip_seconds=1", "--val-split", "none"]
    assert run_cli(*base, "--epochs", "1", timeout=600).returncode == 0
    before = (out / "last.pt").read_bytes()
    resume = ["train", data, "--out", out, "--workers", "0", "--batch-size", "2", "--val-split", "none",
              "--epochs", "2", "--resume"]
    r = run_cli(*resume, "--recipe", "paper", timeout=600)
    assert r.returncode == 2, (r.stdout, r.stderr)  # before: 0, and the default recipe kept silently
    assert_one_line_error(r, "not trained with the paper recipe")
    assert (out / "last.pt").read_bytes() == before
    r = run_cli(*resume, "--recipe", "default", timeout=600)  # the recipe it was trained with: fine
    assert r.returncode == 0, r.stderr
    assert read_checkpoint(out / "last.pt")["epoch"] == 2


# -- issue 21, case 7: bounded resources ---------------------------------------------------------------
def test_eval_refuses_a_small_npz_holding_a_huge_map_before_decompressing_it(tmp_path):
    """A 20000x20000 uint8 map of zeros compresses to well under a megabyte; before, ``eval --maps``
    decompressed it and went to 4 GB of memory."""
    import zipfile

    npz = tmp_path / "maps.npz"
    with zipfile.ZipFile(npz, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("c0.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, {"descr": "|u1", "fortran_order": False,
                                                          "shape": (20000, 20000)})
            block = bytes(1 << 22)
            for _ in range(20000 * 20000 // len(block) + 1):
                member.write(block)
    assert npz.stat().st_size < 2_000_000
    (tmp_path / "vggss.json").write_text(json.dumps([{"file": "c0", "class": "x", "bbox": [[0.1, 0.1, 0.6, 0.6]]}]))
    r = run_cli("eval", "--maps", npz, "--annotations", tmp_path / "vggss.json")
    assert r.returncode != 0
    assert_one_line_error(r, "20000x20000", "at most 4096 a side")


# -- issue 21, case 8: a bad manifest is one line, and its files stay inside the export ------------------
@pytest.mark.parametrize("edit, needle", [
    (lambda m: m.update(graphs=list(m["graphs"])), "'graphs' must be an object"),
    (lambda m: m.update(lookahead_steps="abc"), "'lookahead_steps' must be a whole number"),
    (lambda m: m.update(lookahead_steps=float("nan")), "'lookahead_steps' must be a whole number"),
    (lambda m: m.update(lookahead_steps=1e9), "'lookahead_steps' must be a whole number"),
    (lambda m: m["graphs"]["step"].update(files="step.onnx"), "must be an object with 'files'"),
    (lambda m: m["graphs"]["step"].pop("state"), "lacks its 'state'"),
    (lambda m: m["graphs"]["step"]["files"]["onnx"].update(file="../outside.onnx"), "not inside the export"),
    (lambda m: m["graphs"]["step"]["files"]["onnx"].update(file="/etc/passwd"), "not inside the export"),
    (lambda m: m.update(config=[1]), "'config' must be an object"),
], ids=["graphs-list", "lookahead-abc", "lookahead-nan", "lookahead-1e9", "files-string", "no-state",
        "file-dotdot", "file-absolute", "config-list"])
def test_bad_manifest_is_one_line(tiny, tmp_path, edit, needle):
    pytest.importorskip("onnxruntime", reason="onnxruntime (the cpu extra) not installed")
    exp = tmp_path / "exp"
    shutil.copytree(tiny.export, exp)
    manifest = json.loads((exp / "soundloc.json").read_text())
    edit(manifest)
    (exp / "soundloc.json").write_text(json.dumps(manifest))
    video = write_media(tmp_path / "v.mp4")
    r = run_cli("stream", exp, "--video", video, "--backend", "onnxruntime-cpu")
    assert "unexpected" not in r.stderr, r.stderr  # before: KeyError/TypeError/ValueError, exit 1 "unexpected"
    assert_one_line_error(r, needle)


def _deep_json(path: Path) -> Path:
    path.write_text("[" * 100_000 + "]" * 100_000)
    return path


def _huge_coordinate(path: Path) -> Path:
    path.write_text('[{"file": "c0", "class": "x", "bbox": [[0.1, 0.1, 1' + "0" * 400 + ', 0.6]]}]')
    return path


@pytest.mark.parametrize("make, needle", [(_deep_json, "nested too deeply"), (_huge_coordinate, "out of range")],
                         ids=["nested-100000", "coordinate-1e400"])
def test_pathological_annotations_are_one_line(tmp_path, make, needle):
    r = run_cli("eval", "--baseline", "center", "--annotations", make(tmp_path / "vggss.json"))
    assert "unexpected" not in r.stderr, r.stderr  # before: RecursionError / OverflowError
    assert_one_line_error(r, needle)


def test_csv_start_time_inf_and_text_checkpoint_and_file_folders_are_one_line(tmp_path):
    data = tmp_path / "data"
    (data / "videos").mkdir(parents=True)
    (data / "vggsound.csv").write_text("abc,inf,dog,train\n")
    (tmp_path / "text.pt").write_text("epoch 12, not a checkpoint\n")
    (tmp_path / "afile").write_text("x")
    cases = [(["train", data, "--out", tmp_path / "r", "--epochs", "1"], "start_seconds 'inf'"),
             (["info", tmp_path / "text.pt"], "not a readable checkpoint"),
             (["serve", tmp_path / "text.pt", "--video", "a=x.mp4", "--out-dir", tmp_path / "afile"],
              "not a directory"),
             (["doctor", "--workdir", tmp_path / "afile"], "not a folder")]
    for args, needle in cases:
        r = run_cli(*args, timeout=300)
        assert "unexpected" not in r.stderr, (args, r.stderr)
        assert_one_line_error(r, needle)


def test_a_utf8_bom_is_not_part_of_the_first_clip_id(tmp_path):
    from soundloc.data.annotations import read_vggsound_csv

    csv = tmp_path / "vggsound.csv"
    csv.write_bytes("\ufeffabc,12,dog,train\nxyz,3,cat,test\n".encode())
    assert [r.ytid for r in read_vggsound_csv(csv)] == ["abc", "xyz"]  # before: "\ufeffabc", its clip "missing"
