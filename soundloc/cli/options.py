"""The options `soundloc stream` and `soundloc serve` share, each declared once, with its default
read from the library (``StreamOptions``, ``run_stream``'s signature), never restated here.

Each function returns a fresh ``typer.Option`` (typer keeps per-command state on them)."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import typer

from ..config import WINDOW_MODES
from ..runtime.backend import BACKENDS


def library_default(name: str) -> Any:
    """The default of ``name``: a ``StreamOptions`` field, else a ``run_stream`` parameter."""
    from ..runtime.run import run_stream
    from ..runtime.stream import StreamOptions

    fields = {f.name: f.default for f in dataclasses.fields(StreamOptions)}
    if name in fields:
        return fields[name]
    return inspect.signature(run_stream).parameters[name].default


def target_argument() -> Any:
    return typer.Argument(None, help="Export directory, .pt checkpoint (--backend torch), or 'demo'; "
                                     "default: the demo model bundled with soundloc.", show_default=False)


def host_option() -> Any:
    return typer.Option("127.0.0.1", help="Preview bind address (anything but loopback is visible on your network).")


def port_option() -> Any:
    return typer.Option(8080, help="Preview port (0: any free port).")


def backend_option() -> Any:
    return typer.Option(library_default("backend"), help=f"One of {', '.join(BACKENDS)} (torch: a .pt checkpoint).")


def window_option() -> Any:
    return typer.Option(library_default("window"),
                        help=f"{' or '.join(WINDOW_MODES)}: maps averaged over the last 3 s (live) or the 3 s "
                             "centred on each frame (the paper's Eq. 4; 1.5 s more delay).")


def gate_db_option() -> Any:
    span = library_default("gate_seconds")
    return typer.Option(library_default("gate_db"),
                        help=f"Hide the map when the audio's RMS level over the last {span:g} s is below this "
                             "(dBFS; speech at a metre is about -25, a quiet room -50 to -60).")


def gate_score_option() -> Any:
    return typer.Option(library_default("gate_score"),
                        help="Also hide the map when the window's mean score is below this (default: the "
                             "export's calibrated value, if it has one).")


def box_threshold_option() -> Any:
    return typer.Option(library_default("box_threshold"),
                        help="Pseudo-box binarisation level on the map normalised to [0, 1].")


def realtime_option() -> Any:
    return typer.Option(library_default("realtime"), "--realtime/--no-realtime",
                        help="Pace files at 1x (default: files run as fast as possible).")


def seconds_option() -> Any:
    return typer.Option(library_default("max_seconds"),
                        help="Stop after this many seconds: of media for a file, of wall time for a live source.")


def reconnect_option() -> Any:
    return typer.Option(library_default("reconnect"), help="Reopen a failed or stalled source up to N times.")


def stall_option() -> Any:
    return typer.Option(library_default("stall_seconds"), help="Seconds without input before a source counts as stalled.")


def threads_option() -> Any:
    return typer.Option(library_default("threads"), help="CPU threads for the model.")


def json_option() -> Any:
    return typer.Option(None, "--json", help="Write the run summary here.")


def decoder_option() -> Any:
    from ..decoders import DECODERS

    return typer.Option(library_default("decoder"),
                        help=f"Video decoder: {', '.join(DECODERS)} (auto: the platform's hardware decoder if "
                             "there is one, else FFmpeg's threads).")


def classes_option() -> Any:
    return typer.Option(library_default("classes") or None, "--classes",
                        help="Localize only these classes: NAME[,NAME] of the model's classes (a name with a "
                             "comma in double quotes); the others are reported in the events, not boxed. "
                             "Default: all.")
