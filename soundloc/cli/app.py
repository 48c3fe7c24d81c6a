"""The `soundloc` typer app that every command module registers on, and the one place where
errors become one-line messages (tracebacks only with --debug)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

import typer

from ..errors import SoundlocError, UsageError

app = typer.Typer(
    name="soundloc",
    help="Real-time sound source localization: train, evaluate, export, stream, benchmark.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # help texts are plain text: "[frame indices]" or "[[stream]]" must print as written
    rich_markup_mode=None,
)


@app.callback()
def _global(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    if debug:
        os.environ["SOUNDLOC_DEBUG"] = "1"


def fail(message: str, code: int = 2) -> "typer.Exit":
    """Print a one-line error and return the Exit to raise (``raise fail(...)``)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def check_paths(outputs: list, inputs: list = (), dirs: list = (), updates: list = ()) -> None:
    """``fileio.check_outputs`` before a command does any work; a refusal is a usage error."""
    from ..fileio import OutputError, check_outputs

    try:
        check_outputs(outputs, inputs, dirs=dirs, updates=updates)
    except OutputError as e:
        raise fail(str(e)) from None


def check_range(option: str, value: float | None, low: float, high: float = float("inf")) -> None:
    """Refuse an option outside ``[low, high]`` (NaN included) as a one-line usage error."""
    if value is not None and not low <= value <= high:
        bounds = f"from {low:g} to {high:g}" if high != float("inf") else f"at least {low:g}"
        raise fail(f"{option} must be {bounds}, not {value:g}")


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def exit_cleanly_on_termination() -> dict[int, Any]:
    """SIGTERM and SIGHUP (a closed terminal) end a command the way Ctrl-C does: as an exception,
    so every ``finally`` runs and long jobs keep what they finished (annotate's json, a staged
    file's cleanup), exit code 128 + signal. ``soundloc stream`` installs its own handlers on top
    of these for the length of a stream. Returns the handlers replaced, for ``restore_handlers``
    (a program that runs a command in-process, a test, gets its own handlers back)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    from ..config import stop_signals

    previous = {}
    for s in stop_signals():
        if s != signal.SIGINT:  # Ctrl-C already raises KeyboardInterrupt
            previous[s] = signal.signal(s, _exit_on_signal)
    return previous


def restore_handlers(previous: dict[int, Any]) -> None:
    for s, handler in previous.items():
        signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def run_app(args: list[str] | None = None, prog_name: str = "soundloc") -> None:
    """Run the CLI; any exception becomes one line on stderr and exit code 1, unless --debug."""
    previous = exit_cleanly_on_termination()
    try:
        _run(args, prog_name)
    finally:
        restore_handlers(previous)


def _run(args: list[str] | None, prog_name: str) -> None:
    try:
        app(args=args, prog_name=prog_name)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # the CLI boundary: users get one line, developers use --debug
        if os.environ.get("SOUNDLOC_DEBUG") or "--debug" in (args if args is not None else sys.argv):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if isinstance(e, UsageError):  # a request that cannot be done as asked: like a bad option
            typer.echo(f"error: {msg}", err=True)
            sys.exit(2)
        ours = isinstance(e, SoundlocError)  # our errors say what to do; others are bugs
        typer.echo(f"error: {type(e).__name__}: {msg}" if msg else f"error: {type(e).__name__}", err=True)
        if not ours:
            typer.echo("(unexpected: run with --debug for the full traceback)", err=True)
        sys.exit(1)
