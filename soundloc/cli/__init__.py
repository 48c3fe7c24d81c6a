"""Command-line entry points. Each command lives beside the others in this package and is a
thin shell over a library function; importing a command module must stay cheap (no torch at
import time), so `soundloc --help` answers at once on an edge box."""

from __future__ import annotations

from .app import app
from . import info  # noqa: F401  (registers commands)


def main() -> None:
    app()


def _run_one(command: str) -> None:
    import sys

    app(args=[command, *sys.argv[1:]], prog_name=f"soundloc-{command}")


def export_main() -> None:
    _run_one("export")


def stream_main() -> None:
    _run_one("stream")


def bench_main() -> None:
    _run_one("bench")
