"""Which video decoder runs: FFmpeg's threads, or the platform's hardware through PyAV's
hwaccel, with one line that says which (the stream's start line and events header carry it)."""

from __future__ import annotations

import os
import sys
from typing import Any

import av
import av.codec.hwaccel

from .media import MediaError, one_line, open_container

DECODERS = ("auto", "software", "cuda", "vaapi", "videotoolbox", "qsv", "d3d11va")
_HW_PRESENT = {  # what says the platform has the device behind each hardware decoder
    "cuda": lambda: os.path.exists("/dev/nvidiactl") or sys.platform.startswith("win"),
    "vaapi": lambda: os.path.exists("/dev/dri/renderD128"),
    "videotoolbox": lambda: sys.platform == "darwin",
}


def hardware_decoders() -> list[str]:
    """Hardware decoders this FFmpeg build has *and* this machine's devices suggest can run,
    in the order ``auto`` tries them."""
    built = set(av.codec.hwaccel.hwdevices_available())
    return [name for name, present in _HW_PRESENT.items() if name in built and present()]


def open_decoding(url: str, format: str | None = None, options: dict[str, str] | None = None,
                  timeout: float | tuple[float, float] | None = None, *, decoder: str = "auto",
                  live: bool = False) -> tuple[Any, str]:
    """``open_container`` with the cheapest video decoder the platform offers, and the words
    that say which runs (``h264 1920x1080 software, 2 cores (frame+slice threads)``).

    ``decoder``: ``auto`` takes the first of ``hardware_decoders()`` (none: software), a device
    type insists on trying it, ``software`` never tries. A hardware decoder that cannot be
    opened (not in this FFmpeg build, no device, no driver) falls back to software; the line
    then says what was asked and why it did not run. Software decoding gets FFmpeg's threads
    (``tune_decoder``)."""
    if decoder not in DECODERS:
        raise MediaError(f"decoder must be one of {', '.join(DECODERS)}, not {decoder!r}")
    tries = hardware_decoders()[:1] if decoder == "auto" else [] if decoder == "software" else [decoder]
    why = ""
    for device in tries:
        if device not in av.codec.hwaccel.hwdevices_available():
            why = f"{device} decoding is not in this FFmpeg build"
            continue
        try:
            hw = av.codec.hwaccel.HWAccel(device_type=device, allow_software_fallback=True)
            container = av.open(url, format=format, options=options or {}, timeout=timeout, hwaccel=hw)
        except (av.error.FFmpegError, OSError, RuntimeError, ValueError) as e:
            why = f"{device} decoding unavailable ({one_line(e)})"
            continue
        video = container.streams.video
        if not (video and getattr(video[0].codec_context, "is_hwaccel", False)):
            why = f"{device} cannot decode this stream"  # PyAV fell back to software itself
        return container, _decoder_line(container, live, why, device)
    container = open_container(url, format, options, timeout)
    return container, _decoder_line(container, live, why)


def tune_decoder(stream: Any, live: bool) -> str:
    """FFmpeg threads for a software video decoder; returns how it runs, in words.

    A file: frame and slice threads on every core (frame threads decode the next frames while
    the model works; it costs no more CPU per frame, measured). A live source: slice threads
    only, because frame threads hold back one frame per thread (33 ms each at 30 fps) of
    latency a camera's viewer would see, and one core decodes a 1080p30 camera stream anyway.
    """
    ctx = stream.codec_context
    ctx.thread_count = 0  # FFmpeg's choice: one per core
    ctx.thread_type = "SLICE" if live else "AUTO"
    return f"software, {os.cpu_count() or 1} cores ({'slice' if live else 'frame+slice'} threads)"


def _decoder_line(container: Any, live: bool, why: str, device: str | None = None) -> str:
    if not container.streams.video:
        return "none (no video stream)"
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if getattr(ctx, "is_hwaccel", False):
        how = f"hardware ({device})"
    else:
        how = tune_decoder(stream, live)
    line = f"{ctx.name} {ctx.width}x{ctx.height} {how}"
    return f"{line}; {why}, so software runs" if why and not getattr(ctx, "is_hwaccel", False) else line
