"""Decoded media -> model inputs, in numpy: the one place frames are scaled and the log-mel is
cut into steps, shared by training data, evaluation, export checks and the runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .mel import log_mel
from .config import SAMPLES_PER_STEP, VIDEO_MEAN, VIDEO_STD, Config

_MEAN = np.asarray(VIDEO_MEAN, np.float32).reshape(3, 1, 1, 1)
_STD = np.asarray(VIDEO_STD, np.float32).reshape(3, 1, 1, 1)


def normalise_frames(frames: np.ndarray, mean: tuple[float, ...] | None = None,
                     std: tuple[float, ...] | None = None) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (3, T, H, W) float32 with the video models' mean/std (or the
    given ones: a model family's, ``soundloc.families``)."""
    x = np.asarray(frames, np.float32).transpose(3, 0, 1, 2) / 255.0
    m = _MEAN if mean is None else np.asarray(mean, np.float32).reshape(3, 1, 1, 1)
    s = _STD if std is None else np.asarray(std, np.float32).reshape(3, 1, 1, 1)
    return (x - m) / s


def model_inputs(frames: np.ndarray, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) uint8 and 16 kHz audio -> video (3, T, H, W) and mel (1, 10T, 80).

    The audio is zero-padded or cut to exactly T steps, so step t of both is the same 0.1 s.
    """
    T = len(frames)
    audio = np.asarray(audio, np.float32)[: T * SAMPLES_PER_STEP]
    audio = np.pad(audio, (0, T * SAMPLES_PER_STEP - len(audio)))
    return normalise_frames(frames), log_mel(audio)[None]


def file_inputs(path: str | Path | Any, config: Config, seconds: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A media file -> batched model inputs video (1, 3, T, S, S), mel (1, 1, 10T, 80). A
    ``stills.StillClip`` (one frame and its wav) is the frame held over the whole audio."""
    from .media import load_clip
    from .stills import StillClip, still_as_video

    if isinstance(path, StillClip):
        frames, audio = still_as_video(path, config.image_size)
    else:
        clip = load_clip(path, seconds=seconds, size=config.image_size)
        frames, audio = clip.frames, clip.audio
    video, mel = model_inputs(frames, audio)
    return video[None], mel[None]
