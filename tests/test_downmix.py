"""Stereo to mono is the mean of the channels, (L+R)/2, as VGGSound's mono files and every
published localizer's loader have it, for every decode path (files, mp4 clips, PCM devices):
libswresample's own float downmix gives (L+R)/sqrt(2), 3 dB louder, and past +-1 when both
channels are loud."""

from __future__ import annotations

import av
import numpy as np
import pytest

from soundloc.encode import write_mp4
from soundloc.media import AudioChunk, iter_av, load_clip


def _wav(path, left: np.ndarray, right: np.ndarray, rate: int, codec: str = "pcm_s16le") -> None:
    """A real stereo WAV file with the given channels."""
    fmt = {"pcm_s16le": "s16", "pcm_f32le": "flt"}[codec]
    with av.open(str(path), "w", format="wav") as out:
        stream = out.add_stream(codec, rate=rate, layout="stereo")
        inter = np.stack([left, right], 1).reshape(1, -1)
        data = (np.round(inter * 32767).astype(np.int16) if fmt == "s16" else inter.astype(np.float32))
        frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="stereo")
        frame.sample_rate, frame.pts = rate, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def _decoded(path) -> np.ndarray:
    return np.concatenate([c.samples for c in iter_av(str(path), video=False) if isinstance(c, AudioChunk)])


def test_stereo_s16_at_16k_decodes_to_the_channel_mean(tmp_path):
    t = np.arange(16000) / 16000
    left, right = 0.6 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 1000 * t)
    _wav(tmp_path / "a.wav", left, right, 16000)
    mono = _decoded(tmp_path / "a.wav")
    assert len(mono) == 16000
    # (L+R)/2 to within the 16-bit quantisation; the old mix, (L+R)/sqrt(2), is 0.1 off at the peaks
    np.testing.assert_allclose(mono, (left + right) / 2, atol=2 / 32768)


def test_opposite_channels_cancel_and_loud_equal_channels_stay_inside_one(tmp_path):
    t = np.arange(8000) / 16000
    tone = 0.95 * np.sin(2 * np.pi * 300 * t)
    _wav(tmp_path / "cancel.wav", tone, -tone, 16000)
    assert np.abs(_decoded(tmp_path / "cancel.wav")).max() < 1e-4
    _wav(tmp_path / "loud.wav", tone, tone, 16000, codec="pcm_f32le")
    mono = _decoded(tmp_path / "loud.wav")
    assert np.abs(mono).max() <= 0.95 + 1e-4  # (L+R)/sqrt(2) would reach 1.34
    np.testing.assert_allclose(mono, tone, atol=1e-5)


def test_resampled_stereo_keeps_the_level_of_the_channel_mean(tmp_path):
    rate = 44100
    t = np.arange(2 * rate) / rate
    left, right = 0.5 * np.sin(2 * np.pi * 500 * t), 0.5 * np.sin(2 * np.pi * 500 * t + 0.3)
    _wav(tmp_path / "b.wav", left, right, rate, codec="pcm_f32le")
    mono = _decoded(tmp_path / "b.wav")
    expected_rms = np.sqrt(np.mean(((left + right) / 2) ** 2))
    assert len(mono) == 32000
    assert np.sqrt(np.mean(mono[1000:-1000] ** 2)) == pytest.approx(expected_rms, rel=0.01)


def test_stereo_aac_clip_loads_at_the_channel_mean_level(tmp_path):
    """The training and eval path (``load_clip``) on an mp4 with stereo AAC, as the shift profile writes."""
    rate, seconds = 48000, 2.0
    t = np.arange(int(seconds * rate)) / rate
    audio = np.stack([0.4 * np.sin(2 * np.pi * 700 * t), 0.2 * np.sin(2 * np.pi * 700 * t)]).astype(np.float32)
    frames = np.full((20, 64, 64, 3), 128, np.uint8)
    write_mp4(tmp_path / "c.mp4", frames, 10, audio, rate)
    clip = load_clip(tmp_path / "c.mp4", seconds=seconds, size=32)
    rms = np.sqrt(np.mean(np.asarray(clip.audio)[4000:-4000] ** 2))
    assert rms == pytest.approx(0.3 / np.sqrt(2), rel=0.03)  # (0.4 + 0.2) / 2 amplitude; /sqrt(2) would be 0.3
