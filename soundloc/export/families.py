"""Each model family's export parts: which ONNX graphs it exports and how its export is
verified against the PyTorch model (``soundloc.families`` holds the runtime's side)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..config import Config
from ..families import FAMILIES, family_of
from . import ezvsl, graphs, verify


@dataclass(frozen=True)
class ExportParts:
    """``graphs``: model -> its ``GraphSpec`` s; ``verify``: (bundle, model, file inputs or
    None) -> a ``VerifyReport``."""

    graphs: Callable[..., list[graphs.GraphSpec]]
    verify: Callable[..., verify.VerifyReport]


PARTS: dict[str, ExportParts] = {
    "classifier": ExportParts(graphs.graph_specs, verify.verify),
    "ezvsl": ExportParts(ezvsl.graph_specs, ezvsl.verify),
    "fnac": ExportParts(ezvsl.graph_specs, ezvsl.verify),
    "slavc": ExportParts(ezvsl.graph_specs, ezvsl.verify),
    "lvs": ExportParts(ezvsl.graph_specs, ezvsl.verify),
    "sslalign": ExportParts(ezvsl.graph_specs, ezvsl.verify),
}
assert set(PARTS) == set(FAMILIES), "every family has its export parts"


def export_parts(config: Config | dict) -> ExportParts:
    """The export parts of a config's family (unknown families refused by ``family_of``)."""
    return PARTS[family_of(config).name]
