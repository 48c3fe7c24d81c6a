"""The `soundloc` typer app that every command module registers on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="soundloc",
    help="Real-time sound source localization: train, evaluate, export, stream, benchmark.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
