"""Where streaming results go: annotated mp4, JSON lines, a terminal status line, or several.

Every sink takes ``StepResult`` records one at a time and is finalised by ``close()``
(idempotent; also a context manager). Errors a user can act on (full disk, unwritable
directory) are raised as ``SinkError`` with a one-line message.

Both files follow ``fileio``'s rule: they are written to a temporary file beside the output
(``<stem>.<random>.partial<suffix>``) and renamed into place only when the run ends, so a
failed run never leaves a half file under the final name and an existing output stays intact
until the new one is ready; a run that produced no step publishes nothing. A FIFO or a
character device (``/dev/null``) is written into directly. The mp4 is fragmented (a fragment
per keyframe, one a second, flushed to disk as written) so even a SIGKILLed run leaves a
temporary file that players and PyAV can read up to its last fragment.

A FIFO is opened without blocking and polled (``FIFO_POLL_S``) until a reader comes or the
run's stop event is set (a stop signal): ``SinkStopped`` then ends the run the way the signal
does. The events file keeps polling while the reader does not read, so a stalled reader never
holds the stop signal off.
"""

from __future__ import annotations

import errno
import json
import math
import os
import select
import signal
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Protocol, TextIO, runtime_checkable

import av
import numpy as np
from PIL import Image

from ..config import SAMPLE_RATE, stop_signals
from ..fileio import Staged
from ..errors import SoundlocError
from ..encode import add_aac, add_h264, encode_pcm, encode_rgb, flush_encoders
from ..media import video_rgb
from .render import Labeler, render_on, render_step
from .results import StepResult

AAC_PRIMING = 1024  # samples the AAC encoder emits before the signal (its initial padding)
KEPT = "any previous file of that name is unchanged"
MP4_OPTIONS = {
    # empty_moov + a fragment per keyframe: the file is readable after every fragment;
    # flush_packets pushes each fragment to the OS at once instead of a 32 KB buffer later.
    "movflags": "frag_keyframe+empty_moov+default_base_moof",
    "flush_packets": "1",
}


FIFO_POLL_S = 0.1  # how often a FIFO without a reader (or a full one) checks the stop event


class SinkError(SoundlocError, RuntimeError):
    """A sink cannot go on; the message is one line meant for the user."""


class SinkStopped(SinkError):
    """A stop signal came while a sink waited for a FIFO's reader: the run ends as signalled."""


@runtime_checkable
class Sink(Protocol):
    """Consumes one ``StepResult`` per step; ``close()`` finalises (idempotent)."""

    def write(self, result: StepResult) -> None: ...

    def close(self) -> None: ...


class Mp4Sink:
    """Annotated H.264 video of the original-resolution frames with the steps' audio as AAC.

    ``fps``: step rate (10). Odd frame sizes are padded by one edge pixel (yuv420p needs
    even sizes). Each step's audio is padded or trimmed to ``SAMPLE_RATE / fps`` samples
    so picture and sound never drift. Audio and video both run on a 1/16000 s clock
    offset by the AAC priming, so every timestamp is non-negative and sample 0 of the
    audio plays with frame 0. ``close()`` may be called from a signal handler: if it
    interrupts ``write()`` in the same thread, finalising waits until that write ends.
    A run that wrote no step leaves no file (and an existing output untouched).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: int = 10,
        *,
        crf: int = 23,
        preset: str = "veryfast",
        keyframe_s: float = 1.0,
        alpha: float = 0.45,
        labeler: Labeler | None = None,
        audio: bool = True,
        stop: threading.Event | None = None,
    ) -> None:
        if fps <= 0 or keyframe_s <= 0:
            raise ValueError(f"fps and keyframe_s must be positive, got {fps} and {keyframe_s}")
        self.path = Path(path)
        self.fps, self.crf, self.preset = fps, crf, preset
        self.gop = max(1, round(keyframe_s * fps))
        self.alpha, self.labeler, self.with_audio = alpha, labeler, audio
        self.frames_written = 0
        self._samples_written = 0
        self._video: av.VideoStream | None = None
        self._audio: av.AudioStream | None = None
        self._size: tuple[int, int] | None = None
        self._lock = threading.RLock()
        self._writer: int | None = None  # thread id inside write(), to detect signal re-entry
        self._close_requested = False
        self._state = "open"  # open -> closing -> closed | failed
        self._staged = _stage(self.path, self.path.suffix or ".mp4")
        self.temp_path = self._staged.temp
        # A FIFO: wait for its reader here (FFmpeg's own open, at the first write, would block
        # beyond a stop signal's reach) and hold it open until the end, so the reader does not
        # see an end of file before FFmpeg opens it.
        self._fifo = _wait_for_reader(self.temp_path, stop)
        # FFmpeg writes a FIFO through a non-blocking writer of ours: a reader that stops reading
        # cannot hold a stop signal off (FFmpeg's own blocking write could).
        target = str(self.temp_path) if self._fifo is None else _FifoWriter(self._fifo, stop, self.path)
        try:
            self._container = av.open(target, "w", format="mp4", options=MP4_OPTIONS)
        except (OSError, av.error.FFmpegError) as exc:
            self._release_fifo()
            self._staged.discard()
            raise SinkError(f"cannot write {self.path}: {_reason(exc)}") from exc

    def __enter__(self) -> Mp4Sink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()  # also on errors upstream: what was streamed so far is a valid video

    def write(self, result: StepResult) -> None:
        """Encode one step: overlay on ``result.frame`` (H, W, 3) and its audio (n,) at 16 kHz."""
        with self._lock:
            if self._state != "open":
                raise SinkError(f"mp4 sink for {self.path} is {self._state}")
            self._writer = threading.get_ident()
            try:
                self._encode_step(result)
            except SinkStopped:  # a FIFO's reader stopped reading and a stop signal came: what it
                self._abort()    # read is all it gets (no trailer can reach it); the run ends as signalled
                raise
            except (OSError, av.error.FFmpegError) as exc:
                self._abort()
                raise SinkError(_failure_message(self.path, exc, KEPT)) from exc
            finally:
                self._writer = None
                if self._close_requested and self._state == "open":
                    self._finalise()

    def close(self) -> None:
        """Flush the encoders, finish the file and move it into place (idempotent)."""
        if self._writer == threading.get_ident():
            self._close_requested = True  # a signal handler interrupted write(): it finalises
            return
        with self._lock:
            if self._state == "open":
                self._finalise()

    def abort(self) -> None:
        """Stop without publishing: the temporary file is deleted, any old output kept."""
        with self._lock:
            if self._state == "open":
                self._abort()

    def _encode_step(self, result: StepResult) -> None:
        image = render_step(result, alpha=self.alpha, labeler=self.labeler)
        if self._video is None:
            self._open_streams(image.shape[1], image.shape[0])
        encode_rgb(self._container, self._video, _fit(image, self._size), AAC_PRIMING + self._clock(self.frames_written),
                   Fraction(1, SAMPLE_RATE))
        self.frames_written += 1
        if self._audio is not None:
            self._encode_audio(result.audio)

    def _open_streams(self, width: int, height: int) -> None:
        self._size = (width + width % 2, height + height % 2)
        options = {"crf": str(self.crf), "preset": self.preset, "tune": "zerolatency", "g": str(self.gop)}
        self._video = add_h264(self._container, self.fps, *self._size, options, time_base=Fraction(1, SAMPLE_RATE))
        if self.with_audio:
            self._audio = add_aac(self._container, SAMPLE_RATE, bit_rate=64000)

    def _encode_audio(self, samples: np.ndarray | None) -> None:
        """Pad or trim to this step's share of the clock, then encode as 16 kHz mono."""
        need = self._clock(self.frames_written) - self._samples_written
        chunk = np.zeros(need, np.float32)
        if samples is not None:
            flat = np.nan_to_num(np.asarray(samples, np.float32).ravel()[:need])
            chunk[: flat.size] = np.clip(flat, -1.0, 1.0)
        encode_pcm(self._container, self._audio, chunk, AAC_PRIMING + self._samples_written, SAMPLE_RATE)
        self._samples_written += need

    def _clock(self, steps: int) -> int:
        """Samples at 16 kHz from the start to the start of step ``steps``."""
        return round(steps * SAMPLE_RATE / self.fps)

    def _finalise(self) -> None:
        """Flush, write the trailer, fsync, rename. SIGINT/SIGTERM/SIGHUP wait until it is done, so
        a handler that exits the process cannot cut the file short."""
        self._state = "closing"
        if self.frames_written == 0:
            self._abort()
            self._state = "closed"
            return
        with _signals_deferred():
            try:
                flush_encoders(self._container, self._video, self._audio)
                self._container.close()
                self._release_fifo()
                self._staged.commit()
            except (OSError, av.error.FFmpegError) as exc:
                self._abort()
                raise SinkError(_failure_message(self.path, exc, KEPT)) from exc
            self._state = "closed"

    def _release_fifo(self) -> None:
        if self._fifo is not None:
            fd, self._fifo = self._fifo, None
            os.close(fd)

    def _abort(self) -> None:
        """Release the container and delete the temp file; errors here are expected (the
        disk may be full), so the first error, already being raised, is the one reported."""
        self._state = "failed"
        try:
            self._container.close()
        except (OSError, av.error.FFmpegError) as exc:
            print(f"soundloc: discarding unfinished {self.temp_path.name}: {_reason(exc)}", file=sys.stderr)
        self._release_fifo()
        self._staged.discard()


class JsonlSink:
    """One JSON object per step (``StepResult.event()``), one line each, written with one
    unbuffered ``os.write`` so a reader tailing ``temp_path`` (the path itself for a FIFO,
    or with ``append``) sees every step at once; ``close()`` publishes the file.

    A line is either written whole or not at all: if a write fails (full disk) a regular
    file is truncated back to its last complete line and ``SinkError`` is raised; ``close()``
    still publishes those lines. ``append`` adds to an existing file in place (nothing in
    it is rewritten). Non-finite floats become null (strict JSON).
    """

    def __init__(self, path: str | os.PathLike, *, append: bool = False,
                 stop: threading.Event | None = None) -> None:
        self.path = Path(path)
        self._stop = stop
        self._staged = None if append else _stage(self.path, self.path.suffix or ".jsonl")
        self.temp_path = self.path if self._staged is None else self._staged.temp
        flags = os.O_WRONLY | (os.O_APPEND | os.O_CREAT if append else 0)
        try:
            fifo = _wait_for_reader(self.temp_path, stop)
            self._fd: int | None = fifo if fifo is not None else os.open(self.temp_path, flags, 0o666)
            self._regular = stat.S_ISREG(os.fstat(self._fd).st_mode)
            self._size = os.lseek(self._fd, 0, os.SEEK_END) if self._regular else 0
        except OSError as exc:
            if self._staged is not None:
                self._staged.discard()
            raise SinkError(f"cannot write {self.path}: {_reason(exc)}") from exc
        self.lines_written = 0

    def __enter__(self) -> JsonlSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def write(self, result: StepResult) -> None:
        if self._fd is None:
            raise SinkError(f"events sink for {self.path} is closed")
        line = json.dumps(json_safe(result.event()), allow_nan=False, separators=(",", ":")) + "\n"
        data = line.encode()
        try:
            written = 0
            while written < len(data):
                written += self._write_some(data[written:])
        except OSError as exc:
            if self._regular:  # a pipe or a device cannot be taken back
                os.ftruncate(self._fd, self._size)
            kept = "it ends at the last whole line" if self._regular else "the lines before it went through"
            raise SinkError(_failure_message(self.path, exc, kept)) from exc
        self._size += len(data)
        self.lines_written += 1

    def _write_some(self, data: bytes) -> int:
        return _write_polled(self._fd, data, self._stop, self.path)

    def close(self) -> None:
        """Publish the lines written (none written: any previous file is left as it was)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.close(fd)
        if self._staged is None:
            return
        try:
            if self.lines_written:
                self._staged.commit()
            else:
                self._staged.discard()
        except OSError as exc:
            self._staged.discard()
            raise SinkError(_failure_message(self.path, exc, KEPT)) from exc


class TerminalStatus:
    """A one-line status: steps/s, step latency p50, drops, gated share.

    On a TTY the line is redrawn in place (at most every ``refresh_s``); otherwise (logs,
    pipes) a full line is printed every ``interval_s`` so logs stay readable. Latency is
    ``output_time - capture_time`` of the last 100 steps; fps counts steps whose output
    came in the last 2 s; ``drops`` is the stream's own counter in ``result.stats``.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        interval_s: float = 5.0,
        refresh_s: float = 0.1,
        tty: bool | None = None,
        clock=time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.period = refresh_s if self.tty else interval_s
        self.clock = clock
        self.steps = 0
        self.gated = 0
        self.drops = 0
        self._latencies: deque[float] = deque(maxlen=100)
        self._outputs: deque[float] = deque()
        self._last_print = -math.inf
        self._printed_steps = 0
        self._closed = False

    def write(self, result: StepResult) -> None:
        self.steps += 1
        self.gated += bool(result.gated)
        self.drops = int(result.stats.get("drops", self.drops))
        self._latencies.append(result.output_time - result.capture_time)
        self._outputs.append(result.output_time)
        while self._outputs and self._outputs[0] < result.output_time - 2.0:
            self._outputs.popleft()
        now = self.clock()
        if now - self._last_print >= self.period:
            self._last_print = now
            self._emit()

    def line(self) -> str:
        """The status text, e.g. ``10.0 fps | latency p50 31 ms | drops 0 | gated 12%``."""
        span = self._outputs[-1] - self._outputs[0] if len(self._outputs) > 1 else 0.0
        fps = (len(self._outputs) - 1) / span if span > 0 else 0.0
        p50 = float(np.median(self._latencies)) * 1000 if self._latencies else 0.0
        gated = 100.0 * self.gated / self.steps if self.steps else 0.0
        return (f"step {self.steps} | {fps:.1f} fps | latency p50 {p50:.0f} ms | "
                f"drops {self.drops} | gated {gated:.0f}%")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.steps > self._printed_steps:
            self._emit()
        if self.tty and self.steps:
            self.stream.write("\n")  # leave the last status on screen
            self.stream.flush()

    def _emit(self) -> None:
        self._printed_steps = self.steps
        if self.tty:
            self.stream.write("\r" + self.line() + "\x1b[K")
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()


class MultiSink:
    """Fans each step out to several sinks; ``close()`` closes every one even if some raise.

    A failing ``write`` does not stop the others from getting the step; the first error
    is raised afterwards (the stream then stops and closes everything).
    """

    def __init__(self, sinks: Iterable[Sink]) -> None:
        self.sinks = list(sinks)

    def __enter__(self) -> MultiSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def write(self, result: StepResult) -> None:
        _each(self.sinks, lambda sink: sink.write(result))

    def close(self) -> None:
        _each(self.sinks, lambda sink: sink.close())


def _each(sinks: list[Sink], call) -> None:
    """Call ``call(sink)`` on every sink, then re-raise the first failure (if any)."""
    first: BaseException | None = None
    for sink in sinks:
        try:
            call(sink)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the others ran
            first = first or exc
    if first is not None:
        raise first


def _write_polled(fd: int, data: bytes, stop: threading.Event | None, path: Path) -> int:
    """``os.write``; a FIFO (non-blocking) whose reader does not read is polled, so a stop
    signal still ends the run (``SinkStopped``)."""
    while True:
        try:
            return os.write(fd, data)
        except BlockingIOError:
            if stop is not None and stop.is_set():
                raise SinkStopped(f"stopped while {path}'s reader was not reading") from None
            select.select([], [fd], [], FIFO_POLL_S)


class _FifoWriter:
    """The file object PyAV writes an mp4 into when the output is a FIFO: whole writes on the
    non-blocking descriptor, polled against the stop event."""

    def __init__(self, fd: int, stop: threading.Event | None, path: Path) -> None:
        self.fd, self.stop, self.path = fd, stop, path

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        written = 0
        while written < len(view):
            written += _write_polled(self.fd, view[written:], self.stop, self.path)
        return written


def _wait_for_reader(path: Path, stop: threading.Event | None) -> int | None:
    """For a FIFO: a non-blocking write descriptor, once a reader has opened it; ``None`` for
    anything else. Polls instead of blocking in ``open`` (which a stop signal cannot end);
    ``SinkStopped`` when ``stop`` is set first."""
    try:
        if not stat.S_ISFIFO(os.stat(path).st_mode):
            return None
    except OSError:
        return None
    while True:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise SinkError(f"cannot write {path}: {_reason(exc)}") from exc
        if stop is not None and stop.is_set():
            raise SinkStopped(f"stopped while waiting for a reader of the FIFO {path}; nothing was written")
        time.sleep(FIFO_POLL_S)


def _stage(path: Path, suffix: str) -> Staged:
    """``path``'s temporary file ``<stem>.<random>.partial<suffix>`` (or the node itself)."""
    try:
        return Staged(path, prefix=f"{path.stem}.", suffix=f".partial{suffix}", make_parent=False)
    except OSError as exc:
        raise SinkError(f"cannot write {path}: {_reason(exc)}") from exc


def _fit(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pad (edge pixels) or crop ``image`` to ``size`` = (width, height)."""
    width, height = size
    image = image[:height, :width]
    pad_h, pad_w = height - image.shape[0], width - image.shape[1]
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return image


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc).splitlines()[0]


def _failure_message(path: Path, exc: BaseException, kept: str) -> str:
    if getattr(exc, "errno", None) == errno.ENOSPC:
        return f"disk full while writing {path}; {kept}"
    return f"writing {path} failed: {_reason(exc)}; {kept}"


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold the stop signals in this thread (delivered on exit) where the OS allows it."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = set(stop_signals())
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def json_safe(value):
    """``value`` with numpy scalars made plain and NaN/inf replaced by None, recursively
    (strict JSON has no NaN, and browsers' JSON.parse rejects it)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class SourceMp4Sink(Mp4Sink):
    """The annotated copy of a video *file* at its own frame rate, resolution and audio.

    The model runs at 10 steps a second on 16 kHz mono; this sink reads the original file a
    second time beside the stream and draws, on every original frame, the map of the step
    whose 0.1 s that frame falls in (the latest map at that time), with a status bar (time,
    score, gate state). The original audio is re-encoded as AAC at its own sample rate and
    channel layout. ``height``: scale the frames to this height (width follows, even), else
    the input's size. Like ``Mp4Sink``, the file is staged and published by ``close()`` with
    what was processed so far (Ctrl-C leaves a playable file).
    """

    def __init__(self, path: str | os.PathLike, source: str | os.PathLike, *, height: int | None = None,
                 alpha: float = 0.45, labeler: Labeler | None = None, audio: bool = True,
                 stop: threading.Event | None = None) -> None:
        self._in_video = av.open(str(source))
        vin = self._in_video.streams.video[0]
        self._rate = vin.average_rate or vin.guessed_rate or Fraction(10)
        self._in_tb = vin.time_base or Fraction(1, 90000)
        self._height = height
        self._frames = self._in_video.decode(video=0)
        self._in_audio = av.open(str(source)) if audio else None
        if self._in_audio is not None and not self._in_audio.streams.audio:
            self._in_audio.close()
            self._in_audio = None
        self._sounds = self._in_audio.decode(audio=0) if self._in_audio is not None else iter(())
        self._pending: av.VideoFrame | None = None
        self._first_pts: int | None = None
        self._audio_pts = 0
        self._resampler: av.AudioResampler | None = None
        self._last_result: StepResult | None = None
        super().__init__(path, fps=10, alpha=alpha, labeler=labeler, audio=audio and self._in_audio is not None,
                         stop=stop)

    def _encode_step(self, result: StepResult) -> None:
        until = (result.index + 1) / 10
        self._last_result = result
        self._encode_frames_until(result, until)
        if self._audio is not None:
            self._encode_audio_until(until)

    def _open_streams(self, width: int, height: int) -> None:
        self._size = (width + width % 2, height + height % 2)
        options = {"crf": str(self.crf), "preset": self.preset, "tune": "zerolatency",
                   "g": str(max(1, round(float(self._rate))))}
        self._video = add_h264(self._container, self._rate, *self._size, options, time_base=self._in_tb)
        if self.with_audio:
            ain = self._in_audio.streams.audio[0]
            self._audio = self._container.add_stream("aac", rate=ain.rate, layout=ain.layout.name)
            self._audio.codec_context.bit_rate = 64000 * ain.channels
            self._resampler = av.AudioResampler(format="fltp", layout=ain.layout.name, rate=ain.rate,
                                                frame_size=self._audio.codec_context.frame_size or 1024)

    def _next_frame(self) -> av.VideoFrame | None:
        if self._pending is None:
            try:
                self._pending = next(self._frames, None)
            except av.error.FFmpegError:  # a file corrupt part-way: the stream says so; stop here
                self._frames = iter(())
        return self._pending

    def _encode_frames_until(self, result: StepResult, until: float) -> None:
        """Every original frame before ``until`` seconds, drawn with ``result``'s map."""
        while (frame := self._next_frame()) is not None:
            if self._first_pts is None:
                self._first_pts = frame.pts or 0
            pts = (frame.pts or 0) - self._first_pts
            t = float(pts * self._in_tb)
            if t >= until - 1e-6:
                return
            self._pending = None
            image = video_rgb(frame)  # as a player shows it (a phone's rotation applied)
            if self._video is None:
                h, w = image.shape[:2]
                self._open_streams(*((w, h) if self._height is None else
                                     (max(2, round(w * self._height / h / 2) * 2), self._height)))
            if image.shape[1::-1] != self._size:
                image = np.asarray(Image.fromarray(image).resize(self._size, Image.BILINEAR))
            drawn = render_on(image, result, alpha=self.alpha, labeler=self.labeler, time_s=t)
            # video from 0, audio after the AAC priming (so no packet is negative): a fragmented mp4
            # would pin a later first frame to 0 and stretch it, changing the frame rate
            encode_rgb(self._container, self._video, drawn, pts, self._in_tb)
            self.frames_written += 1

    def _encode_audio_until(self, until: float) -> None:
        """The original audio up to ``until`` seconds, re-encoded at its own rate and layout."""
        rate = self._audio.codec_context.sample_rate
        while self._audio_pts < until * rate:
            try:
                frame = next(self._sounds, None)
            except av.error.FFmpegError:
                frame = None
            if frame is None:
                return
            frame.pts = None
            for out in self._resampler.resample(frame):
                out.pts, out.time_base = AAC_PRIMING + self._audio_pts, Fraction(1, rate)
                self._audio_pts += out.samples
                self._container.mux(self._audio.encode(out))

    def _finalise(self) -> None:
        if self.frames_written and self._resampler is not None:
            try:  # the resampler's last partial frame
                for out in self._resampler.resample(None):
                    out.pts = AAC_PRIMING + self._audio_pts
                    out.time_base = Fraction(1, self._audio.codec_context.sample_rate)
                    self._audio_pts += out.samples
                    self._container.mux(self._audio.encode(out))
            except (OSError, av.error.FFmpegError, ValueError):
                pass  # a partial frame the encoder will not take is a few ms of sound
        try:
            super()._finalise()
        finally:
            self._close_inputs()

    def _abort(self) -> None:
        super()._abort()
        self._close_inputs()

    def _close_inputs(self) -> None:
        for c in (self._in_video, self._in_audio):
            if c is not None:
                c.close()
