"""Writing media with PyAV: the one H.264 + AAC encoder setup every mp4 soundloc writes uses
(synthetic clips, benchmark clips, the stream's annotated output); ``write_mp4`` for a whole clip."""

from __future__ import annotations

import os
from fractions import Fraction
from typing import Any

import av
import numpy as np

from .fileio import Staged

def add_h264(container: Any, rate: int | Fraction, width: int, height: int, options: dict[str, str],
             time_base: Fraction | None = None) -> Any:
    """Add a libx264 yuv420p stream (even ``width`` x ``height``) to an output container;
    ``time_base``: the one its frames' pts count in (default 1/``rate``)."""
    stream = container.add_stream("libx264", rate=rate, options=options)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    if time_base is not None:
        stream.codec_context.time_base = time_base
    return stream


def add_aac(container: Any, sample_rate: int, channels: int = 1, bit_rate: int | None = None) -> Any:
    """Add an AAC stream, mono or stereo."""
    stream = container.add_stream("aac", rate=sample_rate, layout="stereo" if channels == 2 else "mono")
    if bit_rate is not None:
        stream.codec_context.bit_rate = bit_rate
    return stream


def encode_rgb(container: Any, stream: Any, image: np.ndarray, pts: int, time_base: Fraction) -> None:
    """Encode one (H, W, 3) uint8 RGB image at ``pts`` (in ``time_base``) and mux its packets."""
    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
    frame.pts, frame.time_base = pts, time_base
    container.mux(stream.encode(frame))


def encode_pcm(container: Any, stream: Any, samples: np.ndarray, pts: int, sample_rate: int) -> None:
    """Encode float32 samples, (N,) mono or (2, N) stereo, starting at sample ``pts``."""
    if samples.ndim == 2:
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout="stereo")
    else:
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = sample_rate, pts, Fraction(1, sample_rate)
    container.mux(stream.encode(frame))


def flush_encoders(container: Any, *streams: Any) -> None:
    """Drain each encoder's delayed packets into the container (before it is closed)."""
    for stream in streams:
        if stream is not None:
            container.mux(stream.encode(None))


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int | Fraction, audio: np.ndarray, sample_rate: int,
              *, crf: int = 20, preset: str = "veryfast") -> None:
    """Write a whole clip as H.264 + AAC to ``path`` atomically (``fileio.Staged``). frames
    (T, H, W, 3) uint8 RGB with even H, W; audio (N,) float32 mono or (2, N) stereo."""
    with Staged(path, prefix=".tmp-", suffix=".mp4") as staged, av.open(str(staged.temp), "w", format="mp4") as out:
        # One thread: a pool runs one clip per core. mbtree off: with it, this x264 build gave
        # different bytes for the same frames in about 1 run in 5 (measured); without it the
        # files are reproducible, which the determinism test checks.
        video = add_h264(out, fps, frames.shape[2], frames.shape[1],
                         {"crf": str(crf), "preset": preset, "x264-params": "threads=1:mbtree=0"})
        video.codec_context.thread_count = 1
        sound = add_aac(out, sample_rate, 2 if audio.ndim == 2 else 1)
        for k, image in enumerate(frames):
            encode_rgb(out, video, image, k, Fraction(1) / fps)
        flush_encoders(out, video)
        chunk = sample_rate // 10
        for i in range(0, audio.shape[-1], chunk):
            encode_pcm(out, sound, audio[..., i: i + chunk], i, sample_rate)
        flush_encoders(out, sound)
