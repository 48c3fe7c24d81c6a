"""The authors' test layout: a folder with ``frames/<id>.jpg`` and ``audio/<id>.wav`` (one frame
and one wav per clip), as VGG-SS and Flickr-SoundNet are distributed, beside folders of videos.

``find_clip`` / ``list_clips`` give a ``StillClip`` for such a folder and a video path otherwise;
each family's ``file_inputs`` takes either. The default path decodes both with PyAV as a video's
frame and audio are decoded (swscale to the model's size, the channel mean at 16 kHz);
``--preprocess authors`` reads them with ``soundloc.authors``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import SAMPLE_RATE, SAMPLES_PER_STEP
from .data.annotations import find_video, list_videos, safe_join

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".m4a")


@dataclass(frozen=True)
class StillClip:
    """One clip of the authors' layout: its frame (the annotated one) and its whole audio."""

    frame: Path
    audio: Path

    @property
    def stem(self) -> str:
        return self.frame.stem


def is_still_layout(root: str | Path) -> bool:
    """A folder holding ``frames/`` and ``audio/``."""
    return (Path(root) / "frames").is_dir() and (Path(root) / "audio").is_dir()


def _first(root: Path, sub: str, clip: str, suffixes: tuple[str, ...]) -> Path | None:
    for suffix in suffixes:
        path = safe_join(root, f"{sub}/{clip}{suffix}")
        if path.is_file():
            return path
    return None


def find_clip(root: str | Path, clip: str) -> StillClip | Path | None:
    """Clip ``clip`` of a folder: a ``StillClip`` in the authors' layout (None unless both its
    frame and its audio are there), else its video (``find_video``)."""
    if not is_still_layout(root):
        return find_video(root, clip)
    frame, audio = _first(Path(root), "frames", clip, FRAME_SUFFIXES), _first(Path(root), "audio", clip, AUDIO_SUFFIXES)
    return StillClip(frame, audio) if frame and audio else None


def list_clips(root: str | Path) -> list[tuple[str, StillClip | Path]]:
    """Every clip of a folder, sorted by id: the ids with both a frame and an audio file in the
    authors' layout, else every video (``list_videos``)."""
    if not is_still_layout(root):
        return list_videos(root)
    frames = {p.stem for p in (Path(root) / "frames").iterdir() if p.suffix.lower() in FRAME_SUFFIXES}
    audio = {p.stem for p in (Path(root) / "audio").iterdir() if p.suffix.lower() in AUDIO_SUFFIXES}
    return [(i, find_clip(root, i)) for i in sorted(frames & audio)]


def still_frame(path: str | os.PathLike, size: int | None) -> np.ndarray:
    """The picture as the default path decodes a video frame: PyAV, swscale to ``size``."""
    import av

    from .media import MediaError, one_line, video_rgb

    try:
        with av.open(os.fspath(path)) as container:
            frame = next(container.decode(video=0))
            return video_rgb(frame, size)
    except (av.FFmpegError, OSError, StopIteration) as e:
        raise MediaError(f"{path}: not a readable image ({one_line(e) if str(e) else 'no frame'})") from None


def still_audio(path: str | os.PathLike) -> np.ndarray:
    """The whole audio file as the default path decodes a video's audio: mono mean, 16 kHz float32."""
    from .media import AudioChunk, MediaError, iter_av

    parts = [c.samples for c in iter_av(os.fspath(path), video=False, sample_rate=SAMPLE_RATE)
             if isinstance(c, AudioChunk)]
    if not parts:
        raise MediaError(f"{path}: no decodable audio")
    return np.concatenate(parts).astype(np.float32, copy=False)


def still_as_video(clip: StillClip, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A still clip as a video on the model's grid, for a family that needs a sequence (the
    classifier): the frame held for every whole 0.1 s step of the audio. (T, S, S, 3), (N,)."""
    audio = still_audio(clip.audio)
    steps = max(1, len(audio) // SAMPLES_PER_STEP)
    frame = still_frame(clip.frame, size)
    return np.repeat(frame[None], steps, axis=0), audio[: steps * SAMPLES_PER_STEP]

