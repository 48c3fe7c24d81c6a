"""Capture sources for ``soundloc stream``: files, URLs, cameras, microphones and lavfi graphs,
synchronised into one ``StepInput`` per model step (10 fps).

Spec strings (``?key=value&...`` appends FFmpeg input options, e.g. ``v4l2:/dev/video0?video_size=640x480``):

=================================  ====================================================
``clip.mp4``, ``rtsp://...``       file or URL, video and its own audio track
``v4l2:/dev/video0``               Linux camera
``alsa:default``, ``alsa:hw:1``    Linux microphone (``ALSA_CONFIG_DIR`` set, docs/design.md §4)
``avfoundation:0`` / ``:0``        macOS camera / microphone (framerate set explicitly)
``dshow:video=NAME``               Windows camera (``dshow:audio=NAME`` for a microphone)
``lavfi:testsrc=size=320x240:rate=30``, ``lavfi:sine=frequency=440``   no hardware needed
=================================  ====================================================

Threads and clocks: one capture thread per opened input (a file supplies both streams from
one thread). Every captured item is stamped with ``time.monotonic()``; media time comes from
counting (video pts relative to the first frame, audio by counting resampled samples), because
device clocks are wall time and differ between devices. Captured items go straight through
the synchroniser (``_Assembler``, cheap: a 10 fps grid decision, a resize and a copy) into one
bounded queue of ready steps. A **live** source drops the oldest queued step when the consumer
falls behind (counted in ``stats``), so the model always works on recent input and a camera's
driver buffers are drained continuously; a **file** never drops: the reader blocks.
"""

from __future__ import annotations

import os
import queue
import threading
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterator
from urllib.parse import parse_qsl

import av
import numpy as np

from ..config import END_GRACE_S, FPS, IMAGE_SIZE, SAMPLES_PER_STEP
from ..decoders import open_decoding
from ..media import (AudioChunk, FrameGrid, MediaError, VideoChunk, frame_duration, iter_av,
                     open_container, video_rgb)

DEVICE_FORMATS = {"v4l2": "v4l2", "alsa": "alsa", "avfoundation": "avfoundation", "dshow": "dshow",
                  "lavfi": "lavfi"}
LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "udp://", "srt://", "tcp://")
MAX_LAG_STEPS = 50  # 5 s: one modality this far ahead of the other means the other has stalled
STOP_POLL_S = 0.1


@dataclass(frozen=True)
class SourceSpec:
    """A parsed spec string: what ``av.open`` gets."""

    url: str
    format: str | None
    options: dict[str, str]
    live: bool

    @property
    def name(self) -> str:
        return f"{self.format}:{self.url}" if self.format else self.url


def parse_spec(spec: str, *, audio: bool = False) -> SourceSpec:
    """Spec string -> ``SourceSpec`` (see the module docstring); ``audio`` marks a microphone."""
    if not spec:
        raise MediaError("empty source spec")
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in DEVICE_FORMATS and not rest.startswith("//"):
        url, _, query = rest.partition("?")
        options = dict(parse_qsl(query, keep_blank_values=True))
        fmt = DEVICE_FORMATS[prefix]
        if fmt == "alsa":
            os.environ.setdefault("ALSA_CONFIG_DIR", "/usr/share/alsa")
        if fmt == "avfoundation" and not audio:
            options.setdefault("framerate", "30")  # avfoundation refuses its own default rate
        return SourceSpec(url, fmt, options, live=True)
    return SourceSpec(spec, None, {}, live=spec.startswith(LIVE_SCHEMES))


_LAVFI_FILE = re.compile(r"(?:^|[,;\]\s])a?movie=(?:filename=)?('[^']*'|[^:,;\[\]\s]+)")


def spec_inputs(spec: str | os.PathLike | None) -> list[str]:
    """What a source spec reads from disk: the spec itself (a file) and the files a lavfi graph
    names (``lavfi:movie=c.mp4``, ``amovie=filename=c.wav``), so an output can be refused when
    it would replace one of them."""
    if spec is None:
        return []
    text = str(spec)
    prefix, sep, rest = text.partition(":")
    if not (sep and prefix == "lavfi"):
        return [text]
    return [text, *(m.group(1).strip("'") for m in _LAVFI_FILE.finditer(rest.partition("?")[0]))]


@dataclass(frozen=True)
class StepInput:
    """Everything one model step needs.

    ``frame`` (H, W, 3) uint8 RGB at the source resolution (for rendering); ``small``
    (size, size, 3) uint8 RGB (for the model); ``audio`` (1600,) float32 16 kHz mono, samples
    ``[1600*index, 1600*(index+1))`` of the stream. ``pts`` = index / 10 s. ``capture_time`` is
    the ``time.monotonic()`` at which the later of the step's frame and its last audio arrived.
    ``has_audio`` is False when the audio is zeros (video-only mode, or padding at the end).
    """

    index: int
    pts: float
    frame: np.ndarray
    small: np.ndarray
    audio: np.ndarray
    capture_time: float
    has_audio: bool = True


@dataclass
class SourceStats:
    frames_captured: int = 0
    audio_samples: int = 0
    steps_emitted: int = 0
    dropped: int = 0  # steps discarded because the consumer fell behind (live only)
    skipped: int = 0  # steps discarded because one modality stalled for > MAX_LAG_STEPS
    queue_depth: int = 0
    max_queue_depth: int = 0
    end_reason: str | None = None
    errors: list[str] = field(default_factory=list)
    failure: str | None = None  # the first input that failed (not ended): steps after it are missing


class _Assembler:
    """Joins the 10 fps frame grid and the counted audio into ``StepInput`` s, in index order.

    Called from the capture threads (under one condition lock); puts finished steps into
    ``out``. ``separate``: video and audio come from two threads (a file read at its own pace
    from each), so a **file** input that runs ahead waits for the other instead of skipping
    steps; a **live** input never waits: a modality more than ``MAX_LAG_STEPS`` ahead means the
    other stalled, and its steps are skipped.
    """

    def __init__(self, out: queue.Queue, stats: SourceStats, live: bool, video_only: bool,
                 size: int, stop: threading.Event, separate: bool = False) -> None:
        self.out, self.stats, self.live, self.video_only = out, stats, live, video_only
        self.size, self.stop, self.separate = size, stop, separate
        self.grid: FrameGrid[tuple[av.VideoFrame, float]] = FrameGrid(FPS)
        self.frames: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}
        self.audio = np.zeros(0, np.float32)  # samples from 1600 * self.next on
        self.audio_time = 0.0
        self.next = 0  # index of the next step to emit
        self.video_ended = self.audio_ended = False
        self.cond = threading.Condition()

    def add_video(self, pts: float, frame: av.VideoFrame, t: float) -> None:
        with self.cond:
            self._wait_while(lambda: len(self.frames) >= MAX_LAG_STEPS and not self.audio_ended)
            self.stats.frames_captured += 1
            self._add_points(self.grid.push(pts, (frame, t)))
            self._emit()

    def add_audio(self, chunk: AudioChunk, t: float) -> None:
        with self.cond:
            self._wait_while(lambda: len(self.audio) >= SAMPLES_PER_STEP * MAX_LAG_STEPS
                             and not self.video_ended)
            self.stats.audio_samples += len(chunk.samples)
            have = SAMPLES_PER_STEP * self.next + len(self.audio)
            samples = chunk.samples[max(0, have - chunk.offset):]  # after skips, keep only new
            self.audio = np.concatenate([self.audio, samples])
            self.audio_time = t
            while self.live and not self.video_ended and len(self.audio) > SAMPLES_PER_STEP * MAX_LAG_STEPS:
                # the video stalled (once it has ended, the audio only completes its last frames)
                self._skip_step()
            self._emit()

    def end_audio(self) -> None:
        """The audio input ended: frames without audio from now on get zeros."""
        with self.cond:
            self.audio_ended = True
            self._emit()

    def end_video(self, end: float | None, wait_s: float | None) -> None:
        """The video input ended: flush the grid's last points, wait up to ``wait_s`` seconds
        (None: until the audio input ends) for the audio of every frame captured so far, then
        emit what is still missing with zero audio. A frame captured is a frame delivered."""
        with self.cond:
            self.video_ended = True
            self._add_points(self.grid.flush(end=end))
            self._emit()
            self._wait_while(lambda: bool(self.frames) and not self.audio_ended, wait_s)
            self._emit(pad=True)

    def _wait_while(self, busy: Any, timeout: float | None = None) -> None:
        """Block (lock released) while ``busy()``, for a file read from two threads only; ends
        early on ``stop`` or after ``timeout`` seconds."""
        if not (self.separate and (not self.live or timeout is not None)):
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        while busy() and not self.stop.is_set():
            left = STOP_POLL_S if deadline is None else min(STOP_POLL_S, deadline - time.monotonic())
            if left <= 0:
                return
            self.cond.wait(left)

    def _add_points(self, points: list[tuple[int, tuple[av.VideoFrame, float]]]) -> None:
        for k, (frame, t) in points:
            if k < self.next:
                continue
            rgb, small = video_rgb(frame), video_rgb(frame, self.size)
            self.frames[k] = (rgb, small, t)
        while self.live and len(self.frames) > MAX_LAG_STEPS:  # audio stalled
            self._skip_step()

    def _skip_step(self) -> None:
        self.frames.pop(self.next, None)
        self.audio = self.audio[SAMPLES_PER_STEP:]
        self.next += 1
        self.stats.skipped += 1

    def _emit(self, pad: bool = False) -> None:
        pad = pad or self.audio_ended
        while self.next in self.frames and not self.stop.is_set():
            enough = len(self.audio) >= SAMPLES_PER_STEP
            if not (enough or self.video_only or pad):
                break
            rgb, small, t = self.frames.pop(self.next)
            audio = self.audio[:SAMPLES_PER_STEP]
            has_audio = len(audio) == SAMPLES_PER_STEP and not self.video_only
            if len(audio) < SAMPLES_PER_STEP:
                audio = np.concatenate([audio, np.zeros(SAMPLES_PER_STEP - len(audio), np.float32)])
            self.audio = self.audio[SAMPLES_PER_STEP:]
            capture = t if self.video_only else max(t, self.audio_time)
            self._put(StepInput(self.next, self.next / FPS, rgb, small, audio, capture, has_audio))
            self.next += 1
        self.cond.notify_all()

    def _put(self, step: StepInput) -> None:
        if self.live:
            while True:
                try:
                    self.out.put_nowait(step)
                    break
                except queue.Full:
                    try:
                        self.out.get_nowait()  # drop the oldest: the model wants recent input
                        self.stats.dropped += 1
                    except queue.Empty:
                        pass
        else:
            while not self.stop.is_set():
                try:
                    self.out.put(step, timeout=STOP_POLL_S)
                    break
                except queue.Full:
                    continue
        self.stats.steps_emitted += 1
        depth = self.out.qsize()
        self.stats.queue_depth = depth
        self.stats.max_queue_depth = max(self.stats.max_queue_depth, depth)


class StepSource:
    """Steps from a video spec and an optional separate audio spec; iterate, then ``close()``.

    ``video_only=False`` (default): an input without audio raises ``MediaError`` at open.
    ``video_only=True``: audio is ignored, every step's ``audio`` is zeros and ``has_audio``
    False. ``realtime`` paces delivery at 1x media time (default: on for lavfi graphs, which
    would otherwise run as fast as the CPU allows, off for files and devices). ``live``
    overrides whether the source drops steps (default: devices, lavfi and rtsp/udp/... URLs).
    Iteration ends when the video ends (once its frames have their audio), when a live input
    ends, or when an input fails; ``stats.end_reason`` says why. Every frame captured before
    the end comes out; an audio file shorter than the video leaves zeros (``has_audio`` False).
    ``decoder``: the video decoder to ask for (``decoders.DECODERS``; ``auto``: the platform's
    hardware decoder if it has one, else FFmpeg's threaded software decoder);
    ``self.decoder`` is the one line saying which runs.
    """

    def __init__(self, video: str, audio: str | None = None, *, video_only: bool = False,
                 realtime: bool | None = None, live: bool | None = None, queue_size: int = 8,
                 size: int = IMAGE_SIZE, decoder: str = "auto") -> None:
        vspec = parse_spec(video)
        aspec = parse_spec(audio, audio=True) if audio else None
        self.live = live if live is not None else (vspec.live or bool(aspec and aspec.live))
        self.stats = SourceStats()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self._asm = _Assembler(self._queue, self.stats, self.live, video_only, size, self._stop,
                               separate=bool(aspec) and not video_only)
        self._threads: list[threading.Thread] = []
        self._containers: list[Any] = []
        self._pending = 0
        self._decoder = decoder
        self.decoder = ""
        try:
            self._open(vspec, aspec, video_only, realtime)
        except BaseException:
            self.close()
            raise

    def _open(self, vspec: SourceSpec, aspec: SourceSpec | None, video_only: bool,
              realtime: bool | None) -> None:
        vc = self._open_container(vspec, video=True)
        if not vc.streams.video:
            raise MediaError(f"{vspec.name}: no video stream")
        want_audio = not video_only
        own_audio = want_audio and aspec is None
        if own_audio and not vc.streams.audio:
            raise MediaError(f"{vspec.name}: no audio stream (give an audio source with --audio, "
                             "or use --video-only)")
        jobs = [(vspec, vc, True, own_audio)]
        if want_audio and aspec is not None:
            ac = self._open_container(aspec)
            if not ac.streams.audio:
                raise MediaError(f"{aspec.name}: no audio stream")
            jobs.append((aspec, ac, False, True))
        for spec, container, vid, aud in jobs:
            pace = realtime if realtime is not None else spec.format == "lavfi"
            t = threading.Thread(target=self._capture, args=(spec, container, vid, aud, pace),
                                 name=f"capture {spec.name}", daemon=True)
            self._threads.append(t)
        self._pending = len(self._threads)
        for t in self._threads:
            t.start()
        # From here each capture thread owns (and closes) its container: closing it from another
        # thread while a read is blocked in it (a stalled network camera) frees the demuxer
        # under that read, a segfault once the read returns.
        self._containers = []

    def _open_container(self, spec: SourceSpec, video: bool = False) -> Any:
        timeout = (10.0, 10.0) if "://" in spec.url and spec.format is None else None
        if video:
            container, self.decoder = open_decoding(spec.url, spec.format, spec.options, timeout,
                                                    decoder=self._decoder, live=self.live)
        else:
            container = open_container(spec.url, spec.format, spec.options, timeout=timeout)
        self._containers.append(container)
        return container

    def _capture(self, spec: SourceSpec, container: Any, video: bool, audio: bool, pace: bool) -> None:
        """Thread body: read one input until it ends, fails or ``close()`` is called."""
        reason = f"{spec.name}: end of stream"
        end: float | None = None  # media time at which the video ends
        failed = False
        t0 = time.monotonic()
        try:
            for item in iter_av(spec.url, video=video, audio=audio, align=not spec.live,
                                container=container):
                if self._stop.is_set():
                    reason = "closed"
                    break
                if pace:
                    _sleep_until(t0 + item.pts, self._stop)
                now = time.monotonic()
                if isinstance(item, VideoChunk):
                    end = item.pts + frame_duration(item.frame, container.streams.video[0])
                    self._asm.add_video(item.pts, item.frame, now)
                else:
                    self._asm.add_audio(item, now)
        except MediaError as e:  # names the input already
            reason, failed = str(e), True
            self.stats.errors.append(reason)
        except (av.error.FFmpegError, OSError) as e:
            reason, failed = f"{spec.name}: {' '.join(str(e).split())}", True
            self.stats.errors.append(reason)
        except Exception as e:  # a bug must still end the stream with its reason, not hang it
            reason, failed = f"{spec.name}: internal error {type(e).__name__}: {e}", True
            self.stats.errors.append(reason)
        finally:
            self._input_ended(reason, end, video, audio, failed)
            self._close_container(container)

    def _close_container(self, container: Any) -> None:
        try:
            container.close()
        except av.error.FFmpegError as e:
            self.stats.errors.append(f"close: {e}")

    def _input_ended(self, reason: str, end: float | None, video: bool, audio: bool, failed: bool) -> None:
        """One input ended. The video's end ends the stream once the audio of its last frames
        is in; an audio file that ends first leaves the video to run on with zero audio; a live
        audio input or any failure ends the stream at once (frames already captured still come out)."""
        if audio:
            self._asm.end_audio()
        if video:
            self._asm.end_video(end, wait_s=END_GRACE_S if self.live else None)
        if failed and self.stats.failure is None and not self._stop.is_set():  # not a read cut by close()
            self.stats.failure = reason
        if not (video or failed or self.live):
            return
        if self.stats.end_reason is None:
            self.stats.end_reason = reason
        self._stop.set()  # the other input must not run on alone
        with self._asm.cond:
            self._asm.cond.notify_all()
        self._done.set()

    def next_step(self, timeout: float) -> StepInput | None:
        """The next step, or None when none arrived within ``timeout`` seconds (so a caller can
        notice a stalled device or a stop request); raises StopIteration once the stream ended."""
        try:
            step = self._queue.get(timeout=timeout)
        except queue.Empty:
            if self._done.is_set() and self._queue.empty():
                raise StopIteration from None
            return None
        self.stats.queue_depth = self._queue.qsize()
        return step

    def __iter__(self) -> Iterator[StepInput]:
        while True:
            try:
                step = self._queue.get(timeout=STOP_POLL_S)
            except queue.Empty:
                if self._done.is_set() and self._queue.empty():
                    return
                continue
            self.stats.queue_depth = self._queue.qsize()
            yield step

    def close(self) -> None:
        """Stop the capture threads (within about a second; a thread blocked in a stalled read
        is left to end at the read timeout and close its input then) and close the inputs."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2.0)
        for c in self._containers:  # opened but never handed to a thread (a failed open)
            self._close_container(c)
        self._containers = []
        if self.stats.end_reason is None:
            self.stats.end_reason = "closed"

    def __enter__(self) -> "StepSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_source(video: str, audio: str | None = None, **kwargs: Any) -> StepSource:
    """Open a step source from spec strings; see ``StepSource`` for the options."""
    return StepSource(video, audio, **kwargs)


def _sleep_until(deadline: float, stop: threading.Event) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        stop.wait(delay)


# --------------------------------------------------------------------------------------------
# Device listing


def list_devices() -> list[dict[str, str]]:
    """Cameras and microphones on this machine, as ``{"kind", "spec", "name"}`` dicts.

    Linux: ``/dev/video*`` and ALSA capture PCMs from ``/proc/asound/pcm``. macOS and Windows
    have no listing API in PyAV: one ``{"kind": "hint"}`` entry says which ffmpeg command lists
    them. Empty on a machine without any.
    """
    import sys

    if sys.platform == "darwin":
        return [{"kind": "hint", "spec": "avfoundation:0",
                 "name": 'list with: ffmpeg -f avfoundation -list_devices true -i ""'}]
    if sys.platform.startswith("win"):
        return [{"kind": "hint", "spec": "dshow:video=NAME",
                 "name": "list with: ffmpeg -list_devices true -f dshow -i dummy"}]
    return _linux_cameras() + _alsa_capture_devices()


def _linux_cameras(root: str = "/dev") -> list[dict[str, str]]:
    out = []
    try:
        names = [n for n in os.listdir(root) if n.startswith("video") and n[5:].isdigit()]
    except OSError:
        return []
    for n in sorted(names, key=lambda n: int(n[5:])):
        label = _read_text(f"/sys/class/video4linux/{n}/name") or n
        out.append({"kind": "camera", "spec": f"v4l2:{root}/{n}", "name": label})
    return out


def _alsa_capture_devices(pcm_file: str = "/proc/asound/pcm") -> list[dict[str, str]]:
    """Parse lines like ``00-00: ALC3246 Analog : ALC3246 Analog : playback 1 : capture 1``."""
    text = _read_text(pcm_file)
    out = []
    for line in (text or "").splitlines():
        ids, _, rest = line.partition(":")
        parts = [p.strip() for p in rest.split(" : ")]
        if "-" not in ids or not any(p.startswith("capture") for p in parts):
            continue
        card, dev = (int(x) for x in ids.strip().split("-"))
        out.append({"kind": "microphone", "spec": f"alsa:hw:{card},{dev}", "name": parts[0]})
    return out


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None
