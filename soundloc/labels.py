"""What is sounding: class posteriors over the 3 s window, from the step graph's logits.

The exported step gives, besides the map, each label head's per-step logits (``logits_vision``:
the vision head, what is seen; ``logits_audio``: the audio head, what is heard; ``logits_av``:
the audio-visual head, what is heard and seen; an ``av-only`` model has only the latter). Every head is affine in the pooled features, so
the window's mean of the per-step logits is exactly the head applied to the window's mean
features -- the class scores the model was trained to give for a clip of that length (Eq. 1)
-- and streaming stays exact: the runtime averages the logits over the same window as the
maps (``localize.StepWindow``) and takes the softmax here. numpy only (runtime side).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

import numpy as np

from .errors import UsageError

LOGIT_PREFIX = "logits_"  # step-graph output name = prefix + head name
DRAWN_HEADS = ("av", "audio")  # the head whose top-1 is drawn and filtered on: the first one present
TOP_K = 3  # classes each event lists, best first


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class posteriors of (..., C) logits, computed in float64."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def class_name(index: int, names: Sequence[str]) -> str:
    """The class's name, or ``class <index>`` for a model whose export carries no names."""
    return names[index] if index < len(names) else f"class {index}"


def top_classes(probs: np.ndarray, names: Sequence[str], k: int = TOP_K) -> list[tuple[str, float]]:
    """The k most probable classes, best first (ties: lower index first)."""
    order = np.argsort(-np.asarray(probs), kind="stable")[:k]
    return [(class_name(int(i), names), float(probs[i])) for i in order]


def drawn_head(heads: Sequence[str]) -> str | None:
    """The head whose top class is drawn beside the box and filtered by ``--classes``."""
    return next((h for h in DRAWN_HEADS if h in heads), None)


def window_classes(posteriors: Mapping[str, np.ndarray], names: Sequence[str],
                   k: int = TOP_K) -> dict[str, list[tuple[str, float]]]:
    """Per head, the top-k (name, probability) of a window's posteriors."""
    return {head: top_classes(p, names, k) for head, p in posteriors.items()}


def check_classes(wanted: Sequence[str], names: Sequence[str]) -> tuple[str, ...]:
    """``--classes``: each name must be one of the model's classes (one-line error otherwise)."""
    if wanted and not names:
        raise UsageError("--classes needs a model whose export carries class names (this one has none; "
                         "re-export it with this soundloc)")
    for name in wanted:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; e.g. {names[0]!r}"
            raise UsageError(f"--classes: {name!r} is not a class of this model{hint}")
    return tuple(wanted)


def split_classes(text: str | None) -> tuple[str, ...]:
    """``--classes A,B``: the names, stripped. A class name with a comma (VGGSound has some)
    is given in quotes inside the list: ``--classes '"dog barking",cat'``."""
    if not text:
        return ()
    import csv

    row = next(csv.reader([text], skipinitialspace=True), [])
    return tuple(n.strip() for n in row if n.strip())
