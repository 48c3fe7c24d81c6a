"""An export directory: the graphs (or engines) plus ``soundloc.json``, the only thing the
runtime reads to know what it is running (config, tensor names and shapes, state layout,
lookahead, precision, checksums). numpy/json only: an edge box needs no torch to read it.
"""

from __future__ import annotations

import json
from importlib import resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import FORMAT_VERSION, Config, ConfigError
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
    _check_manifest(manifest, root, path)
    bundle = Bundle(root=root, manifest=manifest)
    if verify_files:
        check_files(bundle)
    return bundle


def _check_manifest(manifest: dict[str, Any], root: Path, path: Path) -> None:
    """Types and ranges of everything the runtime reads, so a hand-edited or foreign manifest
    is one line here, not an error deep inside a run; every file stays inside the export."""
    try:
        config = Config.from_dict(manifest["config"]) if isinstance(manifest["config"], dict) else None
    except (ConfigError, TypeError, ValueError) as e:
        raise BundleError(f"{path}: bad 'config' ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if config is None:
        raise BundleError(f"{path}: 'config' must be an object")
    window = round(config.fps * config.window_seconds)
    lookahead = manifest["lookahead_steps"]
    if not (isinstance(lookahead, int) and not isinstance(lookahead, bool) and 0 <= lookahead <= window):
        raise BundleError(f"{path}: 'lookahead_steps' must be a whole number of steps from 0 to {window}, "
                          f"not {lookahead!r}")
    if not isinstance(manifest["precision"], str):
        raise BundleError(f"{path}: 'precision' must be a string, not {manifest['precision']!r}")
    graphs = manifest["graphs"]
    if not isinstance(graphs, dict) or not graphs:
        raise BundleError(f"{path}: 'graphs' must be an object naming at least one graph")
    for name, graph in graphs.items():
        if not isinstance(graph, dict) or not isinstance(graph.get("files"), dict):
            raise BundleError(f"{path}: graph {name!r} must be an object with 'files'")
        if name == "step" and not isinstance(graph.get("state"), list):
            raise BundleError(f"{path}: the step graph lacks its 'state' list")
        for kind, rec in graph["files"].items():
            _check_record(rec, f"{name} {kind}", root, path)


def _check_record(rec: Any, what: str, root: Path, path: Path) -> None:
    if not (isinstance(rec, dict) and isinstance(rec.get("file"), str) and isinstance(rec.get("bytes"), int)
            and isinstance(rec.get("sha256"), str)):
        raise BundleError(f"{path}: the {what} file entry must have 'file', 'bytes' and 'sha256'")
    name = rec["file"]
    inside = (root / name).resolve().is_relative_to(root.resolve())
    if not name or Path(name).is_absolute() or ".." in Path(name).parts or not inside:
        raise BundleError(f"{path}: the {what} file {name!r} is not inside the export folder")


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


def describe_export(root: str | Path) -> dict[str, Any]:
    """What `soundloc info` says of an export directory (or the bundled demo model): family,
    precision, classes, graphs, and where the weights came from (random ones said loudly)."""
    from ..families import family_of

    bundle = read_bundle(root, verify_files=False)
    m, cfg = bundle.manifest, bundle.config
    ckpt = m.get("checkpoint") or {}
    return {"source": str(root), "family": cfg.family, "precision": bundle.precision,
            "head": cfg.head, "map_kind": cfg.map_kind, "width": cfg.width, "layers": list(cfg.layers),
            "num_classes": cfg.num_classes, "class_names": list(cfg.class_names),
            "graphs": sorted(m.get("graphs", {})), "lookahead_seconds": m.get("lookahead_seconds"),
            "created": m.get("created"), "soundloc_version": m.get("soundloc_version"),
            "checkpoint": ckpt, "random_weights": bool(ckpt.get("random_weights")),
            "gate_score": (m.get("gate") or {}).get("score"), "model": family_of(cfg).summary(cfg)}


def print_export(desc: dict[str, Any]) -> None:
    """``describe_export``'s dict as a few plain lines."""
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False)
    names = desc["class_names"]
    shown = "; ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
    ckpt = desc["checkpoint"]
    origin = (f"RANDOM WEIGHTS (preset {ckpt.get('preset')}, seed {ckpt.get('seed')}): timing only, its maps mean nothing"
              if desc["random_weights"] else
              f"checkpoint {ckpt.get('file', '?')}, epoch {ckpt.get('epoch', '?')}, sha256 {str(ckpt.get('sha256', '?'))[:12]}")
    lines = [f"[bold]{desc['source']}[/bold]",
             f"family     {desc['family']} (head {desc['head']}, {desc['map_kind']} maps, width {desc['width']}, "
             f"layers {desc['layers']})",
             f"precision  {desc['precision']}; graphs: {', '.join(desc['graphs'])}",
             f"classes    {desc['num_classes']}" + (f": {shown}" if names else " (no names recorded)"),
             f"model      {desc['model']}",
             f"weights    {origin}",
             f"made       {desc['created']} by soundloc {desc['soundloc_version']}; lookahead "
             f"{desc['lookahead_seconds']} s"]
    imported = ckpt.get("imported")
    if imported:
        lines.append(f"imported   {imported.get('file')} sha256 {imported.get('sha256')}")
    for line in lines:
        console.print(line if line.startswith("[bold]") else escape(line))
    if desc["random_weights"]:
        console.print("[bold red]warning:[/bold red] this export has random weights")


def demo_model_dir() -> Path:
    """The export directory of the model that ships inside the package."""
    path = Path(str(resources.files("soundloc") / "assets" / "demo"))
    if not (path / "soundloc.json").is_file():
        raise BundleError(f"{path}: the bundled demo model is missing; reinstall soundloc or run "
                          "benchmarks/train_demo.py to rebuild it")
    return path
