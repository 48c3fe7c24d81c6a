"""Command-line entry points. Each command lives beside the others in this package and is a
thin shell over a library function; importing a command module must stay cheap (no torch at
import time), so `soundloc --help` answers at once on an edge box."""

from __future__ import annotations

import sys

from .app import app, run_app  # noqa: F401  (app: the typer object, re-exported)
# Registration order is the order `soundloc --help` lists them: the runtime's jobs first.
from . import stream  # noqa: F401  (stream, demo)
from . import serve  # noqa: F401
from . import export  # noqa: F401
from . import calibrate  # noqa: F401
from . import bench  # noqa: F401
from . import train  # noqa: F401
from . import evaluate  # noqa: F401
from . import applications  # noqa: F401  (moments, annotate)
from . import synth  # noqa: F401
from . import devices  # noqa: F401
from . import doctor  # noqa: F401
from . import info  # noqa: F401
from . import importer  # noqa: F401  (import ezvsl)


def main() -> None:
    run_app()


def _run_one(command: str) -> None:
    run_app([command, *sys.argv[1:]], prog_name=f"soundloc-{command}")


def export_main() -> None:
    _run_one("export")


def stream_main() -> None:
    _run_one("stream")


def bench_main() -> None:
    _run_one("bench")
