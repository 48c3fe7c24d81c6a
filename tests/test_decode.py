"""The decode path at camera settings (issue 28): FFmpeg's threads and the hardware-decoder
choice change how frames are decoded, never which frames and samples the model gets; the
choice is stated in one line (start line, first event); the CPU backends' threading knobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest

from soundloc.bench.stages import ClipSpec, make_clip
from soundloc.config import IMAGE_SIZE
from soundloc.decoders import DECODERS, hardware_decoders, open_decoding
from soundloc.media import FrameGrid, VideoChunk, iter_av, open_container, video_rgb
from soundloc.encode import write_mp4
from soundloc.runtime.sources import StepSource

# A hardware decoder that cannot exist on this platform (VideoToolbox is macOS only).
ABSENT = "vaapi" if sys.platform == "darwin" else "videotoolbox"


def _clip(path, fps: int, seconds: float = 3.0, bframes: bool = True):
    """A moving pattern (every frame differs) with a tone, at ``fps``; x264's default B-frames,
    or the camera-like encoding (no B-frames, a bit rate)."""
    if not bframes:
        return make_clip(path, ClipSpec(320, 240, fps, seconds, 48_000, bitrate=800_000))
    t = int(seconds * fps)
    y, x = np.mgrid[0:240, 0:320]
    frames = np.stack([np.stack([(x + 7 * i) % 256, (y + 3 * i) % 256, (x * y // 64 + i) % 256], -1)
                       for i in range(t)]).astype(np.uint8)
    s = np.arange(int(seconds * 44100)) / 44100
    write_mp4(path, frames, fps, (0.3 * np.sin(2 * np.pi * 500 * s)).astype(np.float32), 44100)
    return path


def _grid(container, path):
    """What the model gets from a container: per 10 fps point, the source frame's pts and its
    model-size pixels; and the 16 kHz audio."""
    grid: FrameGrid = FrameGrid()
    points, audio = [], []
    end = 0.0
    for item in iter_av(str(path), container=container):
        if isinstance(item, VideoChunk):
            points += grid.push(item.pts, (item.pts, item.frame))
            end = item.pts + 1.0 / float(container.streams.video[0].average_rate)
        else:
            audio.append(item.samples)
    points += grid.flush(end=end)
    container.close()
    return [(k, pts, video_rgb(frame, IMAGE_SIZE)) for k, (pts, frame) in points], np.concatenate(audio)


def _plain(path):
    """The path before issue 28: PyAV's default decoder settings."""
    return _grid(open_container(str(path)), path)


@pytest.mark.parametrize("fps", [24, 25, 30])
@pytest.mark.parametrize("bframes", [True, False], ids=["b-frames", "camera-no-b"])
def test_fast_decode_keeps_the_plain_paths_frames_and_audio(tmp_path, fps, bframes):
    path = _clip(tmp_path / f"c{fps}.mp4", fps, bframes=bframes)
    plain_frames, plain_audio = _plain(path)
    for decoder in ("auto", ABSENT):  # threaded software, and the fallback from an absent decoder
        container, line = open_decoding(str(path), decoder=decoder)
        assert "frame+slice threads" in line
        frames, audio = _grid(container, path)
        assert [k for k, _, _ in frames] == [k for k, _, _ in plain_frames] == list(range(len(frames)))
        assert len(frames) == 3 * 10
        for (k, pts, px), (_, plain_pts, plain_px) in zip(frames, plain_frames):
            assert abs(pts - plain_pts) < 1.0 / fps, (k, pts, plain_pts)  # the same source frame
            assert np.array_equal(px, plain_px), k
        np.testing.assert_array_equal(audio, plain_audio)
    # Frames really differ from one to the next, so a wrongly kept frame would show.
    assert not np.array_equal(plain_frames[0][2], plain_frames[1][2])


@pytest.mark.parametrize("fps", [24, 25, 30])
def test_step_source_with_threads_equals_the_plain_decode(tmp_path, fps):
    path = _clip(tmp_path / f"s{fps}.mp4", fps, bframes=False)
    plain_frames, plain_audio = _plain(path)
    with StepSource(str(path), decoder="auto") as src:
        steps = list(src)
        assert "software" in src.decoder and "frame+slice" in src.decoder
    assert [s.index for s in steps] == list(range(len(plain_frames)))
    for s, (_, _, px) in zip(steps, plain_frames):
        assert np.array_equal(s.small, px), s.index
    got = np.concatenate([s.audio for s in steps])
    n = min(len(got), len(plain_audio))
    assert n >= 29 * 1600
    np.testing.assert_array_equal(got[:n], plain_audio[:n])


def test_live_sources_get_slice_threads_only(tmp_path):
    path = _clip(tmp_path / "live.mp4", 25, seconds=1.0, bframes=False)
    container, line = open_decoding(str(path), decoder="software", live=True)
    try:
        assert line.endswith("(slice threads)") and container.streams.video[0].codec_context.thread_type.name == "SLICE"
    finally:
        container.close()


def test_absent_hardware_decoder_falls_back_in_one_line(tmp_path):
    assert ABSENT not in hardware_decoders()
    path = _clip(tmp_path / "hw.mp4", 30, seconds=1.0, bframes=False)
    container, line = open_decoding(str(path), decoder=ABSENT)
    container.close()
    assert "\n" not in line and ABSENT in line and line.endswith("so software runs"), line


def test_unknown_decoder_is_refused():
    from soundloc.media import MediaError

    with pytest.raises(MediaError, match="decoder must be one of"):
        open_decoding("x.mp4", decoder="nvdec")
    assert "auto" in DECODERS and "software" in DECODERS


def test_stream_states_the_decoder_in_its_start_line_and_first_event(tmp_path):
    path = _clip(tmp_path / "s.mp4", 30, seconds=2.0, bframes=False)
    events = tmp_path / "ev.jsonl"
    r = subprocess.run([sys.executable, "-m", "soundloc", "stream", "soundloc/assets/demo", "--video", str(path),
                        "--decoder", ABSENT, "--events", str(events), "--json", str(tmp_path / "s.json")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("decoder:")]
    assert len(lines) == 1 and ABSENT in lines[0] and "so software runs" in lines[0], r.stdout
    rows = [json.loads(ln) for ln in events.read_text().splitlines()]
    assert len(rows) == 20
    assert rows[0]["decoder"] == lines[0].removeprefix("decoder: ")
    assert all("decoder" not in row for row in rows[1:])
    assert json.loads((tmp_path / "s.json").read_text())["decoder"] == rows[0]["decoder"]
    bad = subprocess.run([sys.executable, "-m", "soundloc", "stream", "soundloc/assets/demo", "--video", str(path),
                          "--decoder", "nvdec"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--decoder must be one of" in bad.stdout + bad.stderr


def test_camera_clip_has_the_asked_size_rate_and_no_b_frames(tmp_path):
    spec = ClipSpec(320, 240, 25, 2.0, 48_000, bitrate=1_000_000)
    path = make_clip(tmp_path / "cam.mp4", spec)
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        assert (v.codec_context.width, v.codec_context.height) == (320, 240) and v.average_rate == 25
        kinds = {int(f.pict_type) for f in c.decode(video=0)}  # FFmpeg's AVPictureType: 1 I, 2 P, 3 B
        assert kinds == {1, 2}
    mbit = path.stat().st_size * 8 / spec.seconds / 1e6
    assert 0.5 < mbit < 1.6  # about the asked 1 Mbit/s (VBV-capped average bit rate)
    assert spec.name == "320x240p25-1M"


def test_onnxruntime_spinning_is_off_unless_asked(tiny):
    from soundloc.runtime.onnx_backend import OnnxRuntimeBackend

    path = tiny.bundle.path("step", "onnx")
    for spin, want in ((False, "0"), (True, "1")):
        b = OnnxRuntimeBackend(path, "cpu", spin=spin)
        opts = b.session.get_session_options()
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == want
        b.close()


def test_torch_backend_asks_openmp_for_sleeping_threads_before_torch_loads():
    code = ("import os, sys; from soundloc.runtime.torch_backend import prefer_passive_openmp; "
            "assert 'torch' not in sys.modules; print(prefer_passive_openmp(), os.environ['OMP_WAIT_POLICY'])")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["True", "PASSIVE"]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**env, "OMP_WAIT_POLICY": "ACTIVE"})  # a user's choice is kept
    assert out.stdout.split() == ["False", "ACTIVE"]


def test_torch_state_kept_on_the_device_gives_the_same_steps(tiny):
    pytest.importorskip("torch", reason="torch backend")
    from soundloc.runtime.engine import StepModel
    from soundloc.runtime.torch_backend import DeviceState, TorchBackend

    def run(**kw):
        tb = TorchBackend(tiny.ckpt, "cpu", **kw)
        model = StepModel(tb, tb.config, tb.lookahead, tb.state_specs)
        rng = np.random.default_rng(1)
        state, alphas = model.new_state(1), []
        for _ in range(6):
            frame = rng.standard_normal((1, 3, tb.config.image_size, tb.config.image_size), dtype=np.float32)
            mel = rng.standard_normal((1, 10, 80), dtype=np.float32)
            out, state = model.step(frame, mel, np.ones(1, np.float32), state)
            alphas.append(out.alpha)
        return np.stack(alphas), state

    plain, plain_state = run(keep_state=False)
    kept, kept_state = run(keep_state=True)
    assert all(isinstance(s, DeviceState) for s in kept_state)
    assert not any(isinstance(s, DeviceState) for s in plain_state)
    np.testing.assert_allclose(kept, plain, rtol=1e-5, atol=1e-6)
    for a, b in zip(kept_state, plain_state):  # np.asarray reads a kept state back (serve's batching)
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)
    bf16, _ = run(dtype="bf16")  # the GPU's reduced precision, here on the CPU
    assert np.isfinite(bf16).all() and np.abs(bf16 - plain).max() <= 0.1 * np.abs(plain).max() + 1e-3
    assert TorchBackend(tiny.ckpt, "cpu", dtype="bf16").providers == ["cpu bf16"]


def test_cuda_graphs_are_refused_off_a_gpu_and_off_by_default_on_the_cpu(tiny):
    pytest.importorskip("torch", reason="torch backend")
    from soundloc.runtime.backend import BackendError
    from soundloc.runtime.torch_backend import TorchBackend

    tb = TorchBackend(tiny.ckpt, "cpu")
    assert tb.cuda_graphs is False and tb.providers == ["cpu"]
    with pytest.raises(BackendError, match="CUDA graphs need a CUDA device; this torch backend runs on cpu"):
        TorchBackend(tiny.ckpt, "cpu", cuda_graphs=True)


def test_cuda_graph_steps_equal_eager_steps_at_two_batch_sizes(tiny):
    """GPU only: the replayed graph gives the eager step's maps and state, step after step (the
    kept state is copied out of the graph's output buffer), for batch 1 and batch 3."""
    torch = pytest.importorskip("torch", reason="torch backend")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: CUDA graphs run only on a GPU")
    from soundloc.runtime.engine import StepModel
    from soundloc.runtime.torch_backend import TorchBackend

    def run(batch: int, **kw):
        tb = TorchBackend(tiny.ckpt, "cuda", **kw)
        model = StepModel(tb, tb.config, tb.lookahead, tb.state_specs)
        rng = np.random.default_rng(2)
        state, alphas = model.new_state(batch), []
        for _ in range(5):
            frame = rng.standard_normal((batch, 3, tb.config.image_size, tb.config.image_size), dtype=np.float32)
            mel = rng.standard_normal((batch, 10, 80), dtype=np.float32)
            out, state = model.step(frame, mel, np.ones(batch, np.float32), state)
            alphas.append(out.alpha)
        return np.stack(alphas), [np.asarray(s) for s in state], tb

    for batch in (1, 3):
        eager, eager_state, _ = run(batch, cuda_graphs=False)
        graphs, graph_state, tb = run(batch, cuda_graphs=True)
        assert tb.cuda_graphs and tb.providers == ["cuda graphs"]
        np.testing.assert_allclose(graphs, eager, rtol=1e-4, atol=1e-5)
        for a, b in zip(graph_state, eager_state):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
