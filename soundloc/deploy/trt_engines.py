"""TensorRT engines for every graph of an export directory, recorded in its ``soundloc.json``.

The step graph gets a profile over the batch (1 .. ``max_batch`` streams, optimised for 1);
the offline graphs are built for one clip length (``config.clip_steps``) since TensorRT
profiles want static non-batch dims here. A DLA build is static: every graph is built for
exactly ``max_batch`` (the DLA runs no dynamic shapes).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..config import MELS_PER_STEP
from ..families import family_of
from ..runtime.bundle import Bundle, file_record, read_bundle, write_manifest
from .tensorrt import build_engine
from .trt_plan import engine_metadata


def build_engines(bundle: Bundle, *, precision: str, max_batch: int, workspace_gib: float,
                  timing_cache: str | Path | None, dla_core: int | None, device: int = 0) -> Bundle:
    cfg = bundle.config
    S, T = cfg.image_size, cfg.clip_steps
    fixed = {"step": None, "video": {"video": (3, T, S, S)}, "audio": {"mel": (1, MELS_PER_STEP * T, cfg.n_mels)}}
    if not family_of(cfg).clip_graphs:  # per-frame offline graphs (ezvsl): only the batch is dynamic
        fixed = {}
    cache = timing_cache or bundle.root / "timing.cache"
    manifest = dict(bundle.manifest)
    console = Console(stderr=True)
    batch = (max_batch,) * 3 if dla_core is not None else (1, 1, max_batch)
    for name in ("step", "video", "audio"):
        engine = bundle.root / f"{name}.engine"
        console.print(f"building TensorRT engine for the {name} graph ({precision}) ...")
        source = bundle.path(name, "onnx_trt" if precision == "int8" else "onnx")  # int8: the TensorRT flavour
        info = build_engine(source, engine, precision=precision, workspace_gib=workspace_gib,
                            timing_cache=cache, batch=batch, fixed_dims=fixed.get(name),
                            dla_core=dla_core, device=device)
        console.print(f"  {engine.name}: {info.engine_bytes / 1e6:.1f} MB in {info.build_seconds:.1f} s")
        manifest["graphs"][name]["files"]["engine"] = file_record(engine)
        manifest["graphs"][name]["tensorrt"] = engine_metadata(info)
        if name == "step":
            manifest["tensorrt"] = engine_metadata(info)
    write_manifest(bundle.root, manifest)
    return read_bundle(bundle.root)
