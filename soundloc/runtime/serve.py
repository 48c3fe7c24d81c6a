"""`soundloc serve`: many cameras on one box, one model loaded once, one batched step call per tick.

Each source runs in its own thread through the loop of `soundloc stream` (``run.stream_source``:
capture, stall detection, reconnects, window, gate, its own mp4/JSONL sinks); its model is a
``SharedModel`` handle whose ``step`` hands the step to the ``Batcher`` and waits for its row.
The batcher thread opens a tick at the first step waiting and closes it when every running
stream has a step waiting or ``wait_s`` has passed; it stacks the steps and their states on
the batch axis and makes one call. A stream with no step ready then (stalled, reconnecting,
busy writing) is left out of that tick and counted (``behind``): a slow or dead source never
holds the others back, and a stream that ends or fails leaves the others running.

Each row of a batched call is the same step run alone (the step graph's batch axis is exact),
so every stream's output equals a separate ``soundloc stream`` run on the same input.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..config import SERVE_BATCH_WAIT_S
from ..fileio import check_outputs
from ..percentiles import summary_percentile
from ..errors import SoundlocError
from .backend_spec import load_step_model
from .engine import StepModel, StepOutput
from .run import StreamSummary, stop_on_signals, stream_source
from .sources import spec_inputs
from .stream import StreamOptions

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the 3.10 fallback, a dependency there
    import tomli as tomllib

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SOURCE_KEYS = ("name", "video", "audio", "out", "events", "video_only")


class ServeError(SoundlocError, ValueError):
    """A sources list that cannot be served; the message is one line for the user."""


@dataclass(frozen=True)
class ServeSource:
    """One named stream: its video (+ separate audio) spec and where its outputs go."""

    name: str
    video: str
    audio: str | None = None
    out: Path | None = None
    events: Path | None = None
    video_only: bool = False


def read_sources(path: str | Path) -> list[ServeSource]:
    """The sources of a TOML file: one ``[[stream]]`` table per source, with ``name`` and
    ``video`` and optionally ``audio``, ``out`` (mp4), ``events`` (JSONL), ``video_only``.
    Relative output paths are taken from the current directory, as on the command line."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ServeError(f"cannot read {path}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ServeError(f"{path}: not valid TOML: {str(e).splitlines()[0]}") from None
    tables = data.get("stream")
    if set(data) - {"stream"} or not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ServeError(f"{path}: expected only [[stream]] tables (keys: {', '.join(SOURCE_KEYS)})")
    return check_sources([_source(t, f"{path}: stream {i + 1}") for i, t in enumerate(tables)])


def _source(table: dict, where: str) -> ServeSource:
    unknown = set(table) - set(SOURCE_KEYS)
    if unknown:
        raise ServeError(f"{where}: unknown key {sorted(unknown)[0]!r} (keys: {', '.join(SOURCE_KEYS)})")
    for key in ("name", "video"):
        if not isinstance(table.get(key), str):
            raise ServeError(f"{where}: {key!r} must be given as a string")
    for key in ("audio", "out", "events"):
        if key in table and not isinstance(table[key], str):
            raise ServeError(f"{where}: {key!r} must be a string")
    if not isinstance(table.get("video_only", False), bool):
        raise ServeError(f"{where}: 'video_only' must be true or false")
    return ServeSource(table["name"], table["video"], table.get("audio"),
                       Path(table["out"]) if "out" in table else None,
                       Path(table["events"]) if "events" in table else None, table.get("video_only", False))


def pair_sources(videos: Sequence[str], audios: Sequence[str] = ()) -> list[ServeSource]:
    """Sources from repeated ``NAME=SPEC`` options: each ``--audio NAME=SPEC`` goes with the
    ``--video`` of that name (without one, a video uses its own audio track)."""
    def split(option: str, value: str) -> tuple[str, str]:
        name, sep, spec = value.partition("=")
        if not sep or not NAME.fullmatch(name) or not spec:
            raise ServeError(f"{option} {value!r}: give each source a name, as {option} NAME=SPEC")
        return name, spec

    pairs = [split("--video", v) for v in videos]
    sounds = dict(split("--audio", a) for a in audios)
    extra = set(sounds) - {name for name, _ in pairs}
    if extra:
        raise ServeError(f"--audio {sorted(extra)[0]}=...: no --video of that name")
    return check_sources([ServeSource(name, spec, sounds.get(name)) for name, spec in pairs])


def with_out_dir(sources: Sequence[ServeSource], out_dir: Path | None) -> list[ServeSource]:
    """Give every source without outputs ``out_dir/NAME.mp4`` and ``out_dir/NAME.jsonl``."""
    if out_dir is None:
        return list(sources)
    return [s if s.out or s.events else
            ServeSource(s.name, s.video, s.audio, out_dir / f"{s.name}.mp4", out_dir / f"{s.name}.jsonl", s.video_only)
            for s in sources]


def check_sources(sources: list[ServeSource]) -> list[ServeSource]:
    if not sources:
        raise ServeError("no sources: give --video NAME=SPEC (repeated) or a sources file")
    seen: set[str] = set()
    for s in sources:
        if not NAME.fullmatch(s.name):
            raise ServeError(f"stream name {s.name!r}: use letters, digits, '_', '-', '.' (at most 64)")
        if s.name in seen:
            raise ServeError(f"two streams are named {s.name!r}")
        seen.add(s.name)
    return sources


# --------------------------------------------------------------------------------------------
# Batching


@dataclass
class _Request:
    name: str
    frames: np.ndarray
    audio: np.ndarray
    valid: np.ndarray
    state: list[np.ndarray]
    done: threading.Event = field(default_factory=threading.Event)
    output: StepOutput | None = None
    error: BaseException | None = None


@dataclass
class BatchStats:
    """What the batcher did: calls, steps, and per stream the ticks it was left out of."""

    calls: int = 0
    steps: int = 0
    call_ms: list[float] = field(default_factory=list)
    behind: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"calls": self.calls, "steps": self.steps,
                "mean_batch": round(self.steps / self.calls, 3) if self.calls else 0.0,
                "call_ms_p50": summary_percentile(self.call_ms, 50),
                "behind": dict(self.behind)}


class Batcher:
    """One model call per tick for every stream with a step ready (see the module docstring).

    ``wait_s``: how long a tick waits for streams without a step ready; ``max_batch``: the
    most steps in one call (a TensorRT engine's profile; 1 with ``wait_s=0`` is no batching:
    one call per step, in arrival order). ``lanes``: calls in flight at once, each taking at
    most its share of the running streams (a tick then waits only for the streams not in
    flight); the model's backend must take concurrent calls.
    """

    def __init__(self, model: StepModel, wait_s: float = SERVE_BATCH_WAIT_S, max_batch: int | None = None,
                 lanes: int = 1) -> None:
        if wait_s < 0 or (max_batch is not None and max_batch < 1) or lanes < 1:
            raise ValueError(f"wait_s must be >= 0, max_batch and lanes >= 1, not {wait_s}, {max_batch}, {lanes}")
        self.model, self.wait_s, self.max_batch, self.lanes = model, wait_s, max_batch, lanes
        self.stats = BatchStats()
        self._cond = threading.Condition()
        self._waiting: list[_Request] = []
        self._running: set[str] = set()
        self._in_flight: set[str] = set()
        self._free_lanes = lanes
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="soundloc-batcher", daemon=True)
        self._thread.start()

    def handle(self, name: str) -> "SharedModel":
        """A stream's model: registers ``name`` as running until the handle is closed."""
        with self._cond:
            if name in self._running:
                raise ValueError(f"stream {name!r} is already running")
            self._running.add(name)
            self.stats.behind.setdefault(name, 0)
        return SharedModel(self, name)

    def release(self, name: str) -> None:
        with self._cond:
            self._running.discard(name)
            self._cond.notify_all()

    def submit(self, name: str, frames: np.ndarray, audio: np.ndarray, valid: np.ndarray,
               state: list[np.ndarray]) -> tuple[StepOutput, list[np.ndarray]]:
        """One stream's step (batch 1) through the next tick; blocks until its row is back."""
        req = _Request(name, frames, audio, valid, state)
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._waiting.append(req)
            self._cond.notify_all()
        req.done.wait()
        if req.error is not None:
            raise req.error
        return req.output, req.state

    def close(self) -> None:
        """Stop the batching thread once the steps waiting are served."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=30)
        with self._cond:
            self._cond.wait_for(lambda: not self._in_flight, timeout=30)

    def _share(self) -> int:
        """The most steps one call takes: with several lanes the running streams are split
        between them, so one group's call overlaps the others' capture and mel work."""
        share = -(-max(len(self._running), 1) // self.lanes)
        return min(share, self.max_batch) if self.max_batch else share

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: (self._waiting and self._free_lanes) or (self._closed and not self._waiting))
                if not self._waiting:
                    return
                share = self._share()
                self._cond.wait_for(lambda: self._closed or len({r.name for r in self._waiting})
                                    >= min(share, len(self._running - self._in_flight)), timeout=self.wait_s)
                batch = self._waiting[:share]
                del self._waiting[: len(batch)]
                ready = {r.name for r in batch} | {r.name for r in self._waiting} | self._in_flight
                late = self.wait_s > 0 and len(batch) < share  # a full share or no waiting: nobody is late
                for name in self._running - ready if late else ():
                    self.stats.behind[name] += 1
                self._in_flight |= {r.name for r in batch}
                self._free_lanes -= 1
            if self.lanes == 1:
                self._call(batch)
            else:
                threading.Thread(target=self._call, args=(batch,), name="soundloc-lane", daemon=True).start()

    def _call(self, batch: list[_Request]) -> None:
        try:
            n_state = len(batch[0].state)
            state = [np.concatenate([np.asarray(r.state[i]) for r in batch]) for i in range(n_state)]
            t0 = time.perf_counter()
            out, new = self.model.step(np.concatenate([r.frames for r in batch]),
                                       np.concatenate([r.audio for r in batch]),
                                       np.concatenate([r.valid for r in batch]), state)
            self.stats.call_ms.append((time.perf_counter() - t0) * 1000)
            new = [np.asarray(s) for s in new]  # a GPU-kept state comes back to the host to be split
            self.stats.calls += 1
            self.stats.steps += len(batch)
            for j, r in enumerate(batch):
                rows = slice(j, j + 1)
                r.output = StepOutput(alpha=out.alpha[rows], score=out.score[rows], zv=out.zv[rows],
                                      za=out.za[rows], valid=out.valid[rows],
                                      logits={k: v[rows] for k, v in out.logits.items()})
                r.state = [s[rows] for s in new]
        except BaseException as e:  # every waiting stream gets the error, none hangs
            for r in batch:
                r.error = e
        finally:
            with self._cond:
                self._in_flight -= {r.name for r in batch}
                self._free_lanes += 1
                self._cond.notify_all()
            for r in batch:
                r.done.set()


class SharedModel:
    """A stream's view of the shared model: what ``Localizer`` needs of a ``StepModel``, with
    ``step`` going through the batcher. ``close()`` ends the stream's registration."""

    def __init__(self, batcher: Batcher, name: str) -> None:
        self.batcher, self.stream = batcher, name
        model = batcher.model
        self.config, self.lookahead = model.config, model.lookahead
        self.bundle_gate_score = model.bundle_gate_score
        self.label_heads, self.visibility = model.label_heads, model.visibility
        self.name = model.name
        self.new_state = model.new_state

    @property
    def behind(self) -> int:
        return self.batcher.stats.behind.get(self.stream, 0)

    def step(self, frames: np.ndarray, audio: np.ndarray, valid: np.ndarray,
             state: list[np.ndarray]) -> tuple[StepOutput, list[np.ndarray]]:
        return self.batcher.submit(self.stream, frames, audio, valid, state)

    def close(self) -> None:
        self.batcher.release(self.stream)


# --------------------------------------------------------------------------------------------
# The job


@dataclass
class ServeSummary:
    backend: str
    batching: bool
    streams: dict[str, StreamSummary] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # streams that could not run or failed
    batch: BatchStats = field(default_factory=BatchStats)
    lanes: int = 1
    seconds: float = 0.0
    signal: int | None = None

    def as_dict(self) -> dict:
        return {"backend": self.backend, "batching": self.batching, "seconds": round(self.seconds, 3),
                "signal": self.signal, "errors": self.errors, "batch": self.batch.as_dict(), "lanes": self.lanes,
                "streams": {name: s.as_dict() for name, s in self.streams.items()}}


def run_serve(target: str | Path, sources: Sequence[ServeSource], *, backend: str = "auto",
              options: StreamOptions = StreamOptions(), preview: tuple[str, int] | None = None,
              batching: bool = True, wait_s: float = SERVE_BATCH_WAIT_S, max_batch: int | None = None,
              realtime: bool | None = None, max_seconds: float | None = None, stall_seconds: float = 10.0,
              reconnect: int = 0, threads: int | None = None, lanes: int = 1, status: bool = True) -> ServeSummary:
    """Serve every source through one model at ``target`` until all have ended or a stop
    signal arrives (every output is then finalised). A source that fails ends alone, with its
    reason in ``summary.errors``. ``batching=False``: one call per step (for comparison).
    ``lanes``: model calls in flight at once, each for its share of the streams (onnxruntime)."""
    sources = check_sources(list(sources))
    from .run import model_path

    target = model_path(target)
    check_outputs([p for s in sources for p in (s.out, s.events)],
                  [target, *(x for s in sources for spec in (s.video, s.audio) for x in spec_inputs(spec))])
    model = load_step_model(target, backend, threads)
    if lanes > 1 and not getattr(getattr(model, "backend", None), "concurrent", False):
        model.close()
        raise ServeError(f"--lanes {lanes} needs a backend that takes concurrent calls (onnxruntime); "
                         f"{model.name} runs one call at a time")
    batcher = Batcher(model, wait_s, max_batch, lanes) if batching else Batcher(model, 0.0, 1, lanes)
    summary = ServeSummary(backend=model.name, batching=batching, batch=batcher.stats, lanes=lanes)
    grid = None
    start = time.monotonic()
    try:
        if preview is not None:
            from .preview import PreviewGrid

            grid = PreviewGrid([s.name for s in sources], host=preview[0], port=preview[1],
                               extra=lambda: {"batch": batcher.stats.as_dict()})
            print(f"preview: {grid.url}", flush=True)
        if status:
            print(f"backend: {model.name}; {len(sources)} streams; batching "
                  f"{'on' if batching else 'off'}" + (f"; {lanes} lanes" if lanes > 1 else ""), flush=True)
        with stop_on_signals() as stop:
            workers = [threading.Thread(target=_serve_one, name=f"stream {s.name}", daemon=True,
                                        args=(batcher, s, stop, grid, summary),
                                        kwargs=dict(options=options, realtime=realtime, max_seconds=max_seconds,
                                                    stall_seconds=stall_seconds, reconnect=reconnect))
                       for s in sources]
            for w in workers:
                w.start()
            for w in workers:
                while w.is_alive():  # a timed join: the main thread stays free to take signals
                    w.join(0.2)
            summary.signal = stop.signum
        summary.streams = {s.name: summary.streams[s.name] for s in sources if s.name in summary.streams}
    finally:
        summary.seconds = time.monotonic() - start
        batcher.close()
        if grid is not None:
            grid.close()
        model.close()
    return summary


def _serve_one(batcher: Batcher, source: ServeSource, stop, grid, summary: ServeSummary, **kwargs) -> None:
    """Thread body: one source until it ends; its failure is recorded, never raised."""
    model = batcher.handle(source.name)
    tile = grid.tile(source.name, lambda: {"behind": model.behind}) if grid is not None else None
    try:
        from .run import plain_file  # a file's annotated copy keeps its rate, size and sound, as in `stream`

        summary.streams[source.name] = stream_source(
            model, source.video, source.audio, stop, out=source.out, events=source.events,
            sinks=[tile] if tile is not None else (), video_only=source.video_only, status=False,
            source_file=plain_file(source.video, source.audio, kwargs.get("reconnect", 0)), **kwargs)
        if summary.streams[source.name].error:
            summary.errors[source.name] = summary.streams[source.name].error
    except Exception as e:  # noqa: BLE001 - one stream's failure must not stop the others
        text = str(e).strip().splitlines()
        summary.errors[source.name] = text[0] if text else type(e).__name__
    finally:
        model.close()
        if tile is not None:
            tile.close()
