"""The `soundloc stream` job as a library call: model + source + sinks, the loop, and a clean
end on Ctrl-C / SIGTERM / SIGHUP (capture stopped, pipeline flushed, mp4 finalised and playable), on a
stalled or vanished device (ended with its reason, or reopened with ``reconnect``)."""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Iterator, Sequence

import av
import numpy as np

from ..config import stop_signals
from ..fileio import check_outputs
from ..media import MediaError
from ..percentiles import summary_percentile
from .backend_spec import load_step_model, triton_spec
from .bundle import demo_model_dir
from .engine import StepModel
from .render import Labeler
from .results import StepResult
from .sinks import JsonlSink, MultiSink, Mp4Sink, Sink, SinkStopped, SourceMp4Sink, TerminalStatus
from .sources import StepInput, StepSource, parse_spec, spec_inputs
from .stream import Localizer, StreamOptions, localize_stream


class End(Enum):
    """Why one connection to the source ended: what the reconnect decision reads
    (``StreamSummary.end_reason`` is the same in words, for people)."""

    SIGNAL = "stopped by signal"
    TIME_LIMIT = "time limit reached"
    INPUT_END = "end of input"
    INPUT_FAILED = "input failed"
    STALLED = "source stalled"
    OPEN_FAILED = "open failed"

    def worth_reconnecting(self, live: bool) -> bool:
        """A stalled source or one that would not open, and a live one that hung up or failed:
        opening it again may help; a file that ended or broke part-way would only repeat."""
        return self in (End.STALLED, End.OPEN_FAILED) or (live and self in (End.INPUT_END, End.INPUT_FAILED))


@dataclass
class StreamSummary:
    backend: str
    steps: int = 0
    gated: int = 0
    dropped: int = 0
    reconnects: int = 0
    seconds: float = 0.0
    end_reason: str = ""
    end: End | None = None  # end_reason as a value
    error: str = ""  # why the input failed part-way (the run then did not process all of it)
    signal: int | None = None  # the signal that stopped the run
    outputs: list[str] = field(default_factory=list)
    model_ms: list[float] = field(default_factory=list)
    hit_rates: object = None  # the demo's hit rates against its ground truth (demo.HitRates)
    decoder: str = ""  # the source's one line saying which video decoder runs (decoders.open_decoding)
    latency_ms: list[float] = field(default_factory=list)  # capture -> output, lookahead included

    def as_dict(self) -> dict:
        return {"backend": self.backend, "steps": self.steps, "gated": self.gated, "dropped": self.dropped,
                "reconnects": self.reconnects, "seconds": round(self.seconds, 3), "end_reason": self.end_reason,
                "error": self.error, "signal": self.signal, "decoder": self.decoder,
                "outputs": self.outputs, "model_ms_p50": summary_percentile(self.model_ms, 50), "model_ms_p99": summary_percentile(self.model_ms, 99),
                "latency_ms_p50": summary_percentile(self.latency_ms, 50), "latency_ms_p99": summary_percentile(self.latency_ms, 99),
                "realtime_factor": round(float(np.mean(self.model_ms)) / 100.0, 4) if self.model_ms else 0.0,
                **({"hit_rates": dataclasses.asdict(self.hit_rates)} if self.hit_rates is not None else {})}


class StopRequest(threading.Event):
    """Set by a signal; ``signum`` says which one, for the exit code (128 + signum)."""

    signum: int | None = None

    def by_signal(self, signum: int, _frame: object = None) -> None:
        self.signum = signum
        self.set()


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """SIGINT/SIGTERM/SIGHUP (a closed terminal) set an event instead of raising, so the loop
    can end cleanly and the outputs are finalised."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    old = {s: signal.getsignal(s) for s in stop_signals()}
    for s in old:
        signal.signal(s, stop.by_signal)
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _steps(source: StepSource, stop: threading.Event, stall_s: float, deadline: float | None,
           max_steps: int | None, summary: StreamSummary) -> Iterator[StepInput]:
    """The source's steps until it ends, stalls for ``stall_s``, a signal arrives or time is up:
    wall time (``deadline``) for a live source, media time (``max_steps``) for a file, so the
    same command on the same file gives the same steps however fast the machine is."""
    last = time.monotonic()
    count = 0
    while True:
        if stop.is_set():
            summary.end, summary.end_reason = End.SIGNAL, End.SIGNAL.value
            return
        out_of_time = time.monotonic() >= deadline if source.live and deadline is not None else \
            max_steps is not None and count >= max_steps
        if out_of_time:
            summary.end, summary.end_reason = End.TIME_LIMIT, End.TIME_LIMIT.value
            return
        try:
            step = source.next_step(0.1)
        except StopIteration:
            summary.end = End.INPUT_FAILED if source.stats.failure else End.INPUT_END
            summary.end_reason = source.stats.end_reason or End.INPUT_END.value
            return
        if step is None:
            if time.monotonic() - last > stall_s:
                summary.end, summary.end_reason = End.STALLED, f"{End.STALLED.value}: no input for {stall_s:g} s"
                return
            continue
        last = time.monotonic()
        count += 1
        yield step


def _open_sinks(out: Path | None, events: Path | None, preview: tuple[str, int] | None, status: bool,
                more: Sequence[Sink] = (), stop: threading.Event | None = None,
                source_file: Path | None = None, size: int | None = None, source_audio: bool = True,
                labeler: Labeler | None = None) -> MultiSink:
    """The sinks named; if one cannot open (or a stop signal comes while one waits for a FIFO's
    reader), those already open are closed first (an mp4 with no step leaves no file)."""
    sinks: list[Sink] = []
    try:
        if out is not None:
            sinks.append(_mp4_sink(out, source_file, size, source_audio, labeler, stop))
        if events is not None:
            sinks.append(JsonlSink(events, stop=stop))
        if preview is not None:
            from .preview import PreviewServer

            server = PreviewServer(host=preview[0], port=preview[1])
            print(f"preview: {server.url}", flush=True)
            sinks.append(server)
    except BaseException:
        MultiSink(sinks).close()
        raise
    if status:
        sinks.append(TerminalStatus())
    return MultiSink([*sinks, *more])


def run_stream(target: str | Path, video: str, audio: str | None = None, *, out: Path | None = None,
               events: Path | None = None, preview: tuple[str, int] | None = None, backend: str = "auto",
               options: StreamOptions = StreamOptions(), realtime: bool | None = None, video_only: bool = False,
               max_seconds: float | None = None, stall_seconds: float = 10.0, reconnect: int = 0,
               status: bool = True, threads: int | None = None, triton: str | None = None,
               size: int | None = None, labeler: Labeler | None = None, decoder: str = "auto") -> StreamSummary:
    """Stream ``video`` (+ ``audio``) through the model at ``target`` into the chosen sinks.

    ``target``: an export directory, a checkpoint, or None / ``"demo"`` for the bundled demo
    model. ``out`` for a video *file* with its own audio keeps the file's frame rate, resolution
    (or ``size``: the output height in pixels) and audio (rate and channels), the latest map
    drawn on every original frame (``sinks.SourceMp4Sink``); for a live source or a separate
    ``audio`` it is the 10 fps, 16 kHz mono stream the model saw.

    ``decoder``: the video decoder asked for (``decoders.DECODERS``); the start lines say which runs.
    ``backend``: a spec (``runtime.backend_spec``). ``triton``: HOST:PORT[/MODEL] of a Triton
    server that runs the step (``target`` is then the export whose repository it serves, read
    for its config; see ``triton_client``).

    ``reconnect``: how many times to reopen a source that failed or stalled (live sources),
    or that could not be opened at all; each reopen starts a fresh model state, and the sinks
    carry on. ``max_seconds``: wall time for a live source, media time for a file.
    ``summary.error`` is set when the input failed part-way (a corrupt file): not all of it
    was processed. Outputs that are inputs (or each other) are refused before anything is
    opened.
    """
    target = model_path(target)
    check_outputs([out, events], [target, *spec_inputs(video), *spec_inputs(audio)])
    model = load_step_model(target, backend if triton is None else triton_spec(triton), threads)
    if status:  # the same delay events.jsonl's lookahead_s states: step graph, window and feeder
        print(f"backend: {model.name}; lookahead {Localizer(model, options).lookahead_s:.1f} s", flush=True)
    try:
        with stop_on_signals() as stop:
            return stream_source(model, video, audio, stop, out=out, events=events, preview=preview,
                                 options=options, realtime=realtime, video_only=video_only,
                                 max_seconds=max_seconds, stall_seconds=stall_seconds, reconnect=reconnect,
                                 status=status, source_file=plain_file(video, audio, reconnect), size=size,
                                 labeler=labeler, decoder=decoder)
    finally:
        model.close()


def stream_source(model: StepModel, video: str, audio: str | None, stop: StopRequest, *,
                  out: Path | None = None, events: Path | None = None, preview: tuple[str, int] | None = None,
                  sinks: Sequence[Sink] = (), options: StreamOptions = StreamOptions(),
                  realtime: bool | None = None, video_only: bool = False, max_seconds: float | None = None,
                  stall_seconds: float = 10.0, reconnect: int = 0, status: bool = True,
                  source_file: Path | None = None, size: int | None = None,
                  labeler: Labeler | None = None, decoder: str = "auto") -> StreamSummary:
    """One stream through an already loaded ``model`` until it ends or ``stop`` is set: what
    ``run_stream`` does once the model is loaded, and what ``soundloc serve`` runs per source
    (``model`` then a stream's handle on the shared batched model). ``sinks``: more sinks fed
    beside the ones named (closed with them). The first event names the video decoder
    (``decoder``), and with ``status`` its line is printed when the source opens."""
    summary = StreamSummary(backend=model.name)
    start = time.monotonic()
    deadline = start + max_seconds if max_seconds is not None else None
    try:
        with _open_sinks(out, events, preview, status, sinks, stop, source_file, size, not video_only,
                         labeler) as sink:
            attempts = 0
            while True:
                live = _run_once(model, video, audio, options, realtime, video_only, sink, summary, stop,
                                 stall_s=stall_seconds, deadline=deadline, max_seconds=max_seconds,
                                 can_retry=attempts < reconnect, decoder=decoder, status=status)
                retry = summary.end is not None and summary.end.worth_reconnecting(live)
                if not (reconnect and retry and attempts < reconnect and not stop.is_set()):
                    break
                attempts += 1
                summary.reconnects += 1
                stop.wait(min(2.0 ** attempts, 30.0))
            summary.signal = stop.signum
        summary.outputs = [str(p) for p in (out, events) if p is not None]
    except SinkStopped as e:  # a FIFO's reader never came (or stopped reading) before the signal
        summary.end, summary.end_reason = End.SIGNAL, f"{End.SIGNAL.value}: {e}"
        summary.signal = stop.signum
    finally:
        summary.seconds = time.monotonic() - start
    return summary


def iter_steps(video: str, target: str | Path | None = None, *, audio: str | None = None,
               backend: str = "auto", options: StreamOptions = StreamOptions(), video_only: bool = False,
               realtime: bool | None = None, threads: int | None = None) -> Iterator[StepResult]:
    """Per-step results of a file or a live source, in Python: one ``StepResult`` per 0.1 s
    (``pts`` its time in seconds, ``heatmap`` the map in [0, 1] or None when gated, ``box``,
    ``score``, ``gated``), the same steps `soundloc stream` writes to events.jsonl.

    ``target``: export directory, checkpoint, or None / ``"demo"`` for the bundled model.
    A live source runs until the loop stops (``break`` closes the capture and the model)::

        for r in iter_steps("clip.mp4"):
            print(r.pts, r.score, r.gated, r.box)
    """
    model = load_step_model(model_path(target), backend, threads)
    try:
        with StepSource(video, audio, realtime=realtime, video_only=video_only,
                        size=model.config.image_size) as source:
            yield from localize_stream(source, model, options)
    finally:
        model.close()


def _mp4_sink(out: Path, source_file: Path | None, size: int | None, audio: bool, labeler: Labeler | None,
              stop: threading.Event | None = None) -> Sink:
    """The file's own-rate annotated copy when it can be re-read, else the 10 fps stream the
    model saw (a file PyAV cannot open here fails in the source, with its own message)."""
    if source_file is not None:
        try:
            return SourceMp4Sink(out, source_file, height=size, audio=audio, labeler=labeler, stop=stop)
        except (OSError, av.error.FFmpegError, IndexError):
            pass
    return Mp4Sink(out, labeler=labeler, stop=stop)


def model_path(target: str | Path | None) -> Path:
    """What a user names as the model: an export directory or checkpoint, or None / ``"demo"``
    for the demo model bundled with the package (when no file of that name exists here)."""
    if target is None or (str(target) == "demo" and not Path("demo").exists()):
        return demo_model_dir()
    return Path(target)


def plain_file(video: str, audio: str | None, reconnect: int) -> Path | None:
    """``video`` as a local file with its own audio (what ``SourceMp4Sink`` re-reads), else None."""
    try:
        spec = parse_spec(video)
    except MediaError:
        return None
    path = Path(spec.url)
    if audio is None and spec.format is None and not spec.live and not reconnect and path.is_file():
        return path
    return None


def _run_once(model: StepModel, video: str, audio: str | None, options: StreamOptions, realtime, video_only: bool,
              sink: MultiSink, summary: StreamSummary, stop: threading.Event, stall_s: float,
              deadline: float | None, max_seconds: float | None, can_retry: bool, decoder: str = "auto",
              status: bool = False) -> bool:
    """One connection to the source; returns whether it was a live source. A source that
    cannot be opened raises if nothing was streamed yet and no attempt follows (``can_retry``);
    after some steps, the failure becomes ``summary.error``."""
    try:
        source = StepSource(video, audio, realtime=realtime, video_only=video_only, size=model.config.image_size,
                            decoder=decoder)
    except MediaError as e:
        if not can_retry and summary.steps == 0:
            raise
        summary.end, summary.end_reason = End.OPEN_FAILED, f"{End.OPEN_FAILED.value} (error): {e}"
        summary.error = "" if can_retry else str(e)
        return True
    if status and source.decoder != summary.decoder:
        print(f"decoder: {source.decoder}", flush=True)
    summary.decoder = source.decoder
    loc = Localizer(model, options)
    max_steps = None if max_seconds is None else round(max_seconds * model.config.fps)
    with source:
        for inp in _steps(source, stop, stall_s, deadline, max_steps, summary):
            for result in loc.push(inp):
                _emit(result, source, sink, summary)
        for result in loc.flush():
            _emit(result, source, sink, summary)
        summary.dropped += source.stats.dropped
    summary.error = source.stats.failure or ""
    return source.live


def _emit(result, source: StepSource, sink: MultiSink, summary: StreamSummary) -> None:
    result.stats["drops"] = summary.dropped + source.stats.dropped
    if summary.steps == 0:  # the events file's first line says how its video was decoded
        result.stats["decoder"] = source.decoder
    sink.write(result)
    summary.steps += 1
    summary.gated += result.gated
    summary.model_ms.append(result.stats["model_ms"])
    summary.latency_ms.append((result.output_time - result.capture_time) * 1000)
