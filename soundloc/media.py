"""Media with PyAV: decoding files and device streams to 10 fps frames and 16 kHz mono audio
(``soundloc.encode`` is the writing side).

Shared by the training datasets (``load_clip``) and the runtime sources (``iter_av`` +
``FrameGrid``), so there is one definition of "10 fps by timestamps" and one audio path:

* Video: output frame ``k`` shows the source frame *displayed* at ``start + k/10`` s, i.e. the
  latest frame whose pts is <= that time. Any source rate works (29.97, 25, 60, variable);
  frames are never interpolated, and the whole frame is resized (no crop) so maps cover it.
* Audio: resampled to 16 kHz with ``av.AudioResampler`` and mixed to mono as the mean of the
  channels ((L+R)/2, as VGGSound's mono files are); sample ``i`` of the
  output is at time ``start + i/16000``, so samples ``[1600k, 1600(k+1))`` belong to step ``k``.

Nothing here holds more of a file than the window asked for: ``iter_av`` streams packets, and
``load_clip`` seeks to ``start`` and stops once its window is full.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Generic, Iterator, TypeVar

import av
import numpy as np

from .config import FPS, IMAGE_SIZE, SAMPLE_RATE
from .errors import SoundlocError

T = TypeVar("T")
PTS_EPS = 1e-6  # seconds: a frame stamped within 1 us of a grid point counts as at that point
SMALL_AUDIO_FRAME = 256  # decoded audio frames shorter than this are coalesced before resampling


class MediaError(SoundlocError):
    """A file or device that cannot be decoded; the message is one line naming the input and why."""


# --------------------------------------------------------------------------------------------
# 10 fps by timestamps


class FrameGrid(Generic[T]):
    """Incremental resampler of a timestamped frame sequence onto a ``fps`` grid.

    Push ``(pts_seconds, frame)`` in presentation order; each call returns the grid points that
    are now decided, as ``(k, frame)`` with ``k`` the grid index (time ``start + k/fps``). Grid
    point ``t`` shows the latest frame with ``pts <= t``; it is decided once a frame with
    ``pts > t`` arrives (or at ``flush``). Grid points before the first frame show the first
    frame. Only the latest frame is kept, so memory is O(1) and frames can be any object
    (e.g. ``av.VideoFrame``, converted only when emitted).
    """

    def __init__(self, fps: float = FPS, start: float = 0.0) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, not {fps}")
        self.fps = fps
        self.start = start
        self.next_index = 0  # first grid point not yet emitted
        self._last: tuple[float, T] | None = None

    def time_of(self, k: int) -> float:
        """Media time in seconds of grid point ``k``."""
        return self.start + k / self.fps

    def push(self, pts: float, frame: T) -> list[tuple[int, T]]:
        """Add one frame; returns the grid points it decides (possibly none), in order."""
        if self._last is not None and pts < self._last[0] - PTS_EPS:
            # Out-of-order or repeated timestamps (broken muxers): keep the newest frame for
            # the current time rather than rewinding the grid.
            pts = self._last[0]
        out: list[tuple[int, T]] = []
        while self.time_of(self.next_index) < pts - PTS_EPS:
            shown = frame if self._last is None else self._last[1]
            out.append((self.next_index, shown))
            self.next_index += 1
        self._last = (pts, frame)
        return out

    def flush(self, end: float | None = None, count: int | None = None) -> list[tuple[int, T]]:
        """Emit the remaining grid points with the last frame.

        ``count``: emit until exactly ``count`` points exist in total (padding by repetition).
        ``end``: emit points whose whole 1/fps interval lies before ``end`` seconds (the stream's
        end time), and at least one point if a frame was ever pushed.
        """
        if self._last is None:
            return []
        if count is None:
            stop = self._last[0] if end is None else end
            whole = math.floor((stop - self.start) * self.fps + 1e-3)
            count = max(whole, self.next_index, 1)
        out = [(k, self._last[1]) for k in range(self.next_index, count)]
        self.next_index = max(self.next_index, count)
        return out


# --------------------------------------------------------------------------------------------
# Streaming reader


@dataclass(frozen=True)
class VideoChunk:
    """One decoded video frame; ``pts`` in seconds (from ``start`` when aligned, else from the
    first frame)."""

    pts: float
    frame: av.VideoFrame


@dataclass(frozen=True)
class AudioChunk:
    """Resampled audio: ``samples`` (N,) float32 mono at 16 kHz, the first of which is sample
    ``offset`` of the stream (counted, not read from device clocks)."""

    offset: int
    samples: np.ndarray

    @property
    def pts(self) -> float:
        return self.offset / SAMPLE_RATE


def open_container(url: str, format: str | None = None, options: dict[str, str] | None = None,
                   timeout: float | tuple[float, float] | None = None) -> Any:
    """``av.open`` for reading with every failure turned into a one-line ``MediaError``."""
    if format is None and "://" not in url:
        if not os.path.exists(url):
            raise MediaError(f"{url}: no such file")
        if os.path.isdir(url):
            raise MediaError(f"{url}: is a directory, not a media file")
        if os.path.getsize(url) == 0:
            raise MediaError(f"{url}: empty file (0 bytes)")
    try:
        return av.open(url, format=format, options=options or {}, timeout=timeout)
    except av.error.FFmpegError as e:
        why = _network_failure(e, timeout) if "://" in url and format is None else _why_unopenable(url, format, e)
        raise MediaError(f"{url}: {why}") from None
    except (OSError, ValueError) as e:  # av.open can raise plain OSError/ValueError too
        raise MediaError(f"{url}: cannot open ({one_line(e)})") from None


def _why_unopenable(url: str, format: str | None, err: Exception) -> str:
    msg = one_line(err)
    if format is not None:
        return f"cannot open {format} input ({msg})"
    if "moov atom not found" in msg or _looks_like_mp4(url):
        return f"truncated or corrupt file ({msg})"
    return f"not a media file or corrupt ({msg})"


def _network_failure(err: Exception, timeout: float | tuple[float, float] | None) -> str:
    """What happened when a URL would not open, in the words a user can act on."""
    msg = one_line(err)
    if isinstance(err, ConnectionRefusedError):
        return f"connection refused: nothing is listening at that address ({msg})"
    if isinstance(err, (av.error.HTTPClientError, av.error.HTTPServerError, av.error.HTTPError)):
        return f"the server refused the request ({msg})"
    if isinstance(err, (av.error.ExitError, TimeoutError)):  # ExitError: our open timeout fired
        limit = timeout[0] if isinstance(timeout, tuple) else timeout
        return f"no answer from the server within {limit:g} s" if limit else f"no answer from the server ({msg})"
    if isinstance(err, OSError):
        return f"network error ({msg})"
    return f"not a media stream or corrupt ({msg})"


def _looks_like_mp4(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(12)[4:8] == b"ftyp"
    except OSError:
        return False


def one_line(err: BaseException) -> str:
    text = str(getattr(err, "strerror", None) or err) or type(err).__name__
    return " ".join(text.split())


def _resampler(rate: int = SAMPLE_RATE) -> av.AudioResampler:
    """Interleaved float at ``rate``, channels kept (one plane: PyAV reads planar frames of 8
    channels past their buffers): ``_resample`` mixes them to mono itself, because
    libswresample's own float downmix gives (L+R)/sqrt(2) (it normalises the mix only for
    integer output), 3 dB louder than the mean VGGSound's mono files and every author's loader
    use, and past +-1 where both channels are loud."""
    return av.AudioResampler(format="flt", layout=None, rate=rate)


def _resample(resampler: av.AudioResampler, frame: av.AudioFrame | None) -> np.ndarray:
    """Feed one frame (None = flush) and return what came out as mono, the mean of the
    channels, (N,) float32."""
    parts = [f.to_ndarray().reshape(-1, f.layout.nb_channels).mean(axis=1, dtype=np.float32)
             for f in resampler.resample(frame)]
    return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros(0, np.float32)


class _AudioCounter:
    """Decoded audio frames -> ``AudioChunk`` s with sample offsets counted from the origin.

    Tiny frames (ALSA can deliver one sample per frame) are coalesced first, so the resampler
    runs on blocks rather than per sample. With ``origin`` set, the first frame's pts places the
    stream on the clock: samples before ``origin`` are dropped and a late start is zero-padded.
    """

    def __init__(self, rate: int, origin: float | None) -> None:
        self.rate = rate
        self.origin = origin
        self.offset = 0  # next output sample index
        self._resampler = _resampler(rate)
        self._skip = 0
        self._started = False
        self._pending: list[av.AudioFrame] = []
        self._pending_samples = 0

    def push(self, frame: av.AudioFrame) -> AudioChunk | None:
        """Add one decoded frame; returns the samples that came out (None if none yet)."""
        if frame.samples < SMALL_AUDIO_FRAME:
            self._pending.append(frame)
            self._pending_samples += frame.samples
            if self._pending_samples < SMALL_AUDIO_FRAME * 16:
                return None
            return self._process(self._take_pending())
        head = self._process(self._take_pending()) if self._pending else None
        return _concat_chunks(head, self._process(frame))

    def flush(self) -> AudioChunk | None:
        """Everything still inside the coalescing buffer and the resampler."""
        head = self._process(self._take_pending()) if self._pending else None
        return _concat_chunks(head, self._process(None) if self._started else None)

    def _take_pending(self) -> av.AudioFrame:
        merged = _merge_frames(self._pending)
        self._pending, self._pending_samples = [], 0
        return merged

    def _process(self, frame: av.AudioFrame | None) -> AudioChunk | None:
        pad = 0
        if frame is not None and not self._started:
            self._started = True
            pad = self._place(frame)
        out = _resample(self._resampler, frame)
        if pad:
            out = np.concatenate([np.zeros(pad, np.float32), out])
        if self._skip:
            cut = min(self._skip, len(out))
            out, self._skip = out[cut:], self._skip - cut
        if len(out) == 0:
            return None
        chunk = AudioChunk(self.offset, out)
        self.offset += len(out)
        return chunk

    def _place(self, frame: av.AudioFrame) -> int:
        """Zero samples to prepend (audio starts after the origin); sets samples to skip."""
        if self.origin is None or frame.pts is None or frame.time_base is None:
            return 0
        lag = int(round((float(frame.pts * frame.time_base) - self.origin) * self.rate))
        if lag < 0:
            self._skip = -lag
            return 0
        return lag


def _merge_frames(frames: list[av.AudioFrame]) -> av.AudioFrame:
    """Concatenate same-format audio frames into one (keeps the first frame's pts)."""
    first = frames[0]
    arrays = [f.to_ndarray() for f in frames]
    merged = np.concatenate(arrays, axis=1)
    out = av.AudioFrame.from_ndarray(merged, format=first.format.name, layout=first.layout.name)
    out.sample_rate = first.sample_rate
    out.pts = first.pts
    if first.time_base is not None:
        out.time_base = first.time_base
    return out


def _concat_chunks(a: AudioChunk | None, b: AudioChunk | None) -> AudioChunk | None:
    if a is None or b is None:
        return a or b
    return AudioChunk(a.offset, np.concatenate([a.samples, b.samples]))


PCM_CODECS = {"pcm_s16le": ("s16", "<i2"), "pcm_s32le": ("s32", "<i4"), "pcm_f32le": ("flt", "<f4"),
              "pcm_u8": ("u8", "u1")}


class _PcmBlocks:
    """Raw PCM packets -> audio frames of >= 4096 samples, without the per-packet decoder.

    ALSA capture can deliver one sample per packet; decoding each costs more than the sample
    is worth, so the packet bytes are joined and turned into one frame per block.
    """

    def __init__(self, stream: Any) -> None:
        self.format, self.dtype = PCM_CODECS[stream.codec_context.name]
        self.layout = stream.codec_context.layout.name
        self.channels = stream.codec_context.channels
        self.rate = stream.codec_context.sample_rate
        self.block = 4096 * self.channels * np.dtype(self.dtype).itemsize
        self._parts: list[bytes] = []
        self._size = 0
        self._pts: tuple[int, Any] | None = None

    def push(self, packet: Any) -> av.AudioFrame | None:
        if self._pts is None and packet.pts is not None:
            self._pts = (packet.pts, packet.time_base)
        data = bytes(packet)
        self._parts.append(data)
        self._size += len(data)
        return self.flush() if self._size >= self.block else None

    def flush(self) -> av.AudioFrame | None:
        if not self._size:
            return None
        samples = np.frombuffer(b"".join(self._parts), self.dtype).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format=self.format, layout=self.layout)
        frame.sample_rate = self.rate
        if self._pts is not None:
            frame.pts, frame.time_base = self._pts
        self._parts, self._size, self._pts = [], 0, None
        return frame


def iter_av(path: str, *, start: float = 0.0, video: bool = True, audio: bool = True,
            sample_rate: int = SAMPLE_RATE, format: str | None = None,
            options: dict[str, str] | None = None, align: bool = True,
            container: Any = None) -> Iterator[VideoChunk | AudioChunk]:
    """Stream a file or device as ``VideoChunk`` / ``AudioChunk`` items in decode order.

    Holds one packet's worth of data at a time, so an hour-long file streams in constant memory.
    ``align=True`` (files): the clock starts at ``start`` (seeked to); video pts are media time
    minus ``start`` and audio sample 0 is at ``start``. ``align=False`` (devices, whose clocks
    are wall time and differ per device): video pts count from the first frame and audio
    samples from the first sample. Decoding errors after the first item end the iteration
    with ``MediaError("...: truncated or corrupt at X s ...")``.
    """
    own = container is None
    if own:
        container = open_container(path, format=format, options=options)
    try:
        yield from _demux(container, path, start, video, audio, sample_rate, align)
    finally:
        if own:
            container.close()


def _demux(container: Any, path: str, start: float, video: bool, audio: bool, rate: int,
           align: bool) -> Iterator[VideoChunk | AudioChunk]:
    vstream = container.streams.video[0] if video and container.streams.video else None
    astream = container.streams.audio[0] if audio and container.streams.audio else None
    streams = [s for s in (vstream, astream) if s is not None]
    if not streams:
        return
    if start > 0:
        _seek(container, path, start)
    counter = _AudioCounter(rate, start if align else None)
    pcm = _PcmBlocks(astream) if astream is not None and astream.codec_context.name in PCM_CODECS else None
    first_pts: float | None = None
    n_video = 0
    last_time = start
    try:
        for packet in container.demux(streams):
            if pcm is not None and packet.stream is astream:
                block = pcm.push(packet) if packet.size else None
                chunk = counter.push(block) if block is not None else None
                if chunk is not None:
                    yield chunk
                continue
            for frame in packet.decode():
                if isinstance(frame, av.VideoFrame):
                    pts = _frame_time(frame, n_video, vstream)
                    n_video += 1
                    if first_pts is None:
                        first_pts = pts if not align else start
                    last_time = pts
                    yield VideoChunk(pts - first_pts, frame)
                else:
                    chunk = counter.push(frame)
                    if chunk is not None:
                        yield chunk
    except av.error.FFmpegError as e:
        raise MediaError(f"{path}: truncated or corrupt at {last_time:.2f} s ({one_line(e)})") from None
    block = pcm.flush() if pcm is not None else None
    tail = _concat_chunks(counter.push(block) if block is not None else None, counter.flush())
    if tail is not None:
        yield tail


def _frame_time(frame: av.VideoFrame, index: int, stream: Any) -> float:
    """Presentation time in seconds; frames without pts are placed by counting at the stream's rate."""
    if frame.pts is not None and frame.time_base is not None:
        return float(frame.pts * frame.time_base)
    rate = float(stream.average_rate or stream.guessed_rate or 30)
    return index / rate


def _seek(container: Any, path: str, start: float) -> None:
    try:
        container.seek(int(start * av.time_base), backward=True, any_frame=False)
    except av.error.FFmpegError as e:
        raise MediaError(f"{path}: cannot seek to {start:.2f} s ({one_line(e)})") from None


# --------------------------------------------------------------------------------------------
# Whole clips (training, evaluation)


@dataclass(frozen=True)
class Clip:
    """A decoded clip on the model's grid.

    ``frames`` (T, size, size, 3) uint8 RGB at ``fps`` (frame k = time ``start + k/fps``);
    ``audio`` (N,) float32 mono at ``sample_rate`` Hz from ``start`` (zeros if the file has no
    audio and ``require_audio=False``; ``has_audio`` says which). ``source_fps`` is the stream's
    average rate (0.0 if unknown), ``source_size`` its (width, height), ``duration`` the
    container's length in seconds (0.0 if unknown).
    """

    frames: np.ndarray
    audio: np.ndarray
    fps: int
    sample_rate: int
    start: float
    source_fps: float
    source_size: tuple[int, int]
    duration: float
    has_audio: bool

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


def load_clip(path: str | os.PathLike, seconds: float | None = None, start: float = 0.0,
              fps: int = FPS, size: int = IMAGE_SIZE, sample_rate: int = SAMPLE_RATE,
              require_audio: bool = True) -> Clip:
    """Decode ``[start, start + seconds)`` of a file onto the model's grid.

    With ``seconds``: exactly ``round(seconds*fps)`` frames (the last repeated if the video is
    short) and ``round(seconds*sample_rate)`` samples (zero-padded). Without: every whole grid
    step of the video and all the audio from ``start``. Raises ``MediaError`` (one line) for a
    missing, empty, corrupt or truncated file, a missing video stream, a missing audio stream
    when ``require_audio``, or no decodable frame.
    """
    path = os.fspath(path)
    if start < 0 or (seconds is not None and seconds <= 0):
        raise ValueError(f"bad window: start={start}, seconds={seconds}")
    with open_container(path) as container:
        if not container.streams.video:
            kind = "audio-only file" if container.streams.audio else "no streams"
            raise MediaError(f"{path}: no video stream ({kind})")
        has_audio = bool(container.streams.audio)
        if require_audio and not has_audio:
            raise MediaError(f"{path}: no audio stream (video only)")
        vstream = container.streams.video[0]
        n_frames = None if seconds is None else int(round(seconds * fps))
        n_samples = None if seconds is None else int(round(seconds * sample_rate))
        frames, audio, end = _read_window(container, path, start, fps, size, sample_rate,
                                          n_frames, n_samples, has_audio)
        source_fps = float(vstream.average_rate or 0.0)
        duration = float(container.duration / av.time_base) if container.duration else 0.0
        source_size = (vstream.codec_context.width, vstream.codec_context.height)
    if not frames:
        raise MediaError(f"{path}: no decodable video frames at or after {start:.2f} s")
    audio_arr = np.concatenate(audio) if audio else np.zeros(0, np.float32)
    if n_samples is not None:
        audio_arr = _fit(audio_arr, n_samples)
    return Clip(np.stack(frames), audio_arr, fps, sample_rate, start, source_fps, source_size,
                duration, has_audio)


def _read_window(container: Any, path: str, start: float, fps: int, size: int, rate: int,
                 n_frames: int | None, n_samples: int | None, has_audio: bool
                 ) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """Decode until the window is full (or the file ends); frames converted only when emitted."""
    grid: FrameGrid[av.VideoFrame] = FrameGrid(fps, 0.0)
    frames: list[np.ndarray] = []
    audio: list[np.ndarray] = []
    got_samples = 0
    end = 0.0

    def take(points: list[tuple[int, av.VideoFrame]]) -> None:
        for _, f in points:
            if n_frames is None or len(frames) < n_frames:
                frames.append(video_rgb(f, size))

    for item in iter_av(path, start=start, audio=has_audio, sample_rate=rate, container=container):
        if isinstance(item, VideoChunk):
            take(grid.push(item.pts, item.frame))
            end = item.pts + frame_duration(item.frame, container.streams.video[0])
        else:
            audio.append(item.samples)
            got_samples += len(item.samples)
        video_done = n_frames is not None and len(frames) >= n_frames
        audio_done = n_samples is None or not has_audio or got_samples >= n_samples
        if video_done and audio_done:
            break
    else:
        take(grid.flush(count=n_frames) if n_frames is not None else grid.flush(end=end))
    return frames, audio, end


def video_rgb(frame: av.VideoFrame, size: int | None = None) -> np.ndarray:
    """A decoded frame as (H, W, 3) uint8 RGB the way a player shows it: turned by the
    stream's display matrix (a phone held upright records sideways pixels and a 90 degree
    rotation), optionally resized to ``size`` x ``size`` first (rotating a square changes nothing
    else). Mirroring in the matrix is ignored."""
    rgb = frame.to_ndarray(format="rgb24") if size is None else \
        frame.to_ndarray(format="rgb24", width=size, height=size)
    turns = round(frame.rotation / 90) % 4  # counter-clockwise, as np.rot90 turns
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def frame_duration(frame: av.VideoFrame, stream: Any) -> float:
    """How long ``frame`` is displayed, in seconds (from its duration, else the stream's rate)."""
    if frame.duration and frame.time_base is not None:
        return float(frame.duration * frame.time_base)
    rate = stream.average_rate or stream.guessed_rate
    return 1.0 / float(rate) if rate else 0.0


def _fit(audio: np.ndarray, n: int) -> np.ndarray:
    if len(audio) >= n:
        return audio[:n]
    return np.concatenate([audio, np.zeros(n - len(audio), np.float32)])
