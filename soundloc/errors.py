"""The package's errors: every one says in one line what went wrong and what to do.

``SoundlocError`` is the base the CLI recognises (one line, exit 1, no "unexpected" note);
``UsageError`` is a request that cannot be done as asked (a bad option, a missing input):
one line, exit 2. Each concept's own error (``BundleError``, ``MediaError``, ...) derives from
one of these and keeps its builtin base (``ValueError``, ``RuntimeError``) for callers that
catch those.
"""

from __future__ import annotations


class SoundlocError(Exception):
    """An error of the package whose message is meant for the user (exit 1)."""


class UsageError(SoundlocError, ValueError):
    """What the user asked for cannot be done as asked (exit 2, like a bad option)."""


class ExportError(SoundlocError, RuntimeError):
    """An export that cannot be done as asked; the message says what to do instead."""
