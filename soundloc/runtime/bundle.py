"""An export directory: the graphs (or engines) plus ``soundloc.json``, the only thing the
runtime reads to know what it is running (config, tensor names and shapes, state layout,
lookahead, precision, checksums). numpy/json only: an edge box needs no torch to read it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import FORMAT_VERSION, Config
from ..fileio import atomic_write_bytes, sha256_file
from ..errors import SoundlocError

MANIFEST = "soundloc.json"
MAGIC = "soundloc-export"
GRAPHS = ("step", "video", "audio")  # streaming step; offline video and audio


class BundleError(SoundlocError, RuntimeError):
    """An export directory that is missing, altered or of another format; one-line message."""


@dataclass(frozen=True)
class Bundle:
    """A checked export directory."""

    root: Path
    manifest: dict[str, Any]

    @property
    def config(self) -> Config:
        return Config.from_dict(self.manifest["config"])

    @property
    def lookahead_steps(self) -> int:
        return int(self.manifest["lookahead_steps"])

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    def graph(self, name: str) -> dict[str, Any]:
        if name not in self.manifest["graphs"]:
            raise BundleError(f"{self.root}: export has no '{name}' graph (has {', '.join(self.manifest['graphs'])})")
        return self.manifest["graphs"][name]

    def path(self, name: str, kind: str = "onnx") -> Path:
        """File of graph ``name``: its ONNX (``kind='onnx'``) or TensorRT engine (``'engine'``)."""
        entry = self.graph(name)
        if kind not in entry["files"]:
            raise BundleError(f"{self.root}: no {kind} file for graph '{name}'; "
                              f"export it with `soundloc export CKPT --format {kind}`")
        return self.root / entry["files"][kind]["file"]

    @property
    def state_specs(self) -> list[dict[str, Any]]:
        """The step graph's state tensors, in input order: name, input, output, shape (batch first)."""
        return self.graph("step")["state"]


def random_weights_note(manifest: dict[str, Any]) -> str | None:
    """The loud line every report prints for an export of random weights (`--preset`), else None."""
    record = manifest.get("checkpoint") or {}
    if not record.get("random_weights"):
        return None
    return (f"RANDOM WEIGHTS: this export is the '{record.get('preset')}' architecture with random weights "
            f"(seed {record.get('seed')}), for timing only; its maps and scores mean nothing")


def read_bundle(root: str | Path, verify_files: bool = True) -> Bundle:
    """Read and check ``root/soundloc.json``; with ``verify_files``, every listed file must
    exist with its recorded size and sha256 (an altered or truncated graph is refused)."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"{root}: not an export directory (no {MANIFEST}); create one with `soundloc export CKPT`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: corrupt manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MAGIC:
        raise BundleError(f"{path}: not a soundloc export manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: export format {manifest.get('format_version')}, this soundloc reads "
                          f"{FORMAT_VERSION}: re-export with this version")
    for key in ("config", "graphs", "lookahead_steps", "precision"):
        if key not in manifest:
            raise BundleError(f"{path}: manifest lacks '{key}'")
    bundle = Bundle(root=root, manifest=manifest)
    if verify_files:
        check_files(bundle)
    return bundle


def check_files(bundle: Bundle) -> None:
    for gname, graph in bundle.manifest["graphs"].items():
        for kind, rec in graph["files"].items():
            f = bundle.root / rec["file"]
            if not f.is_file():
                raise BundleError(f"{bundle.root}: {rec['file']} ({gname} {kind}) is missing")
            if f.stat().st_size != rec["bytes"] or sha256_file(f) != rec["sha256"]:
                raise BundleError(f"{bundle.root}: {rec['file']} does not match {MANIFEST} (altered or "
                                  "truncated): re-export")


def file_record(path: Path) -> dict[str, Any]:
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    """Write ``soundloc.json`` atomically."""
    return atomic_write_bytes(root / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
