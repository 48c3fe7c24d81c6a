"""`soundloc export` end to end: a checkpoint (or a preset's random weights) -> the ONNX graphs
(``onnx``), int8 quantization (``quantize``), TensorRT engines or a Triton repository
(``soundloc.deploy``), and the verify the user asked for. Sits above ``onnx`` and ``quantize``
so neither imports the other back."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..families import family_of
from ..fileio import sha256_file
from ..model.checkpoint import load_checkpoint
from ..runtime.bundle import Bundle, read_bundle, write_manifest
from ..errors import UsageError
from .families import export_parts
from .onnx import OPSET, export_model, random_model, random_weights_record

# What `--format` takes: ONNX graphs; + TensorRT engines beside them (--workspace-gib,
# --timing-cache, --dla-core apply); + a Triton model repository in OUT/triton (deploy/triton.py).
FORMATS = ("onnx", "engine", "triton")


def export_checkpoint(ckpt: str | Path | None, out_dir: str | Path, *, format: str = "onnx",
                      precision: str = "fp32", opset: int = OPSET, max_batch: int | None = None,
                      workspace_gib: float = 2.0, timing_cache: str | Path | None = None,
                      dla_core: int | None = None, preset: str | None = None, seed: int = 0,
                      calib: str | Path | None = None, verify_clip: str | Path | bool = False,
                      progress: Callable[[str], None] | None = None) -> Bundle:
    """`soundloc export`: ONNX graphs, and for ``format='engine'`` TensorRT engines beside them.

    ``preset`` instead of ``ckpt``: a model of that architecture with random weights (seed
    ``seed``, BatchNorm statistics randomised too), to benchmark before anything is trained;
    the manifest says so (``checkpoint.random_weights``) and every report repeats it.
    ``max_batch``: the engine profile's max, default 16; with ``dla_core`` the static batch
    (default 1), as the DLA runs static shapes only.
    ``precision='int8'`` quantizes the fp32 graphs on the clips of the folder ``calib``
    (``soundloc.export.quantize``). ``verify_clip`` (a video, or True: the first calibration clip
    for int8, a generated clip otherwise) checks the export and records the report in the
    manifest's ``verify``: int8 against the fp32 export, fp32/fp16 against PyTorch.
    """
    if precision == "int8":
        if calib is None:
            raise UsageError("--precision int8 needs --calib: a folder of videos to calibrate on")
    elif calib is not None:
        raise UsageError("--calib applies to --precision int8 only")
    if format not in FORMATS:
        raise UsageError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
    max_batch = (1 if dla_core is not None else 16) if max_batch is None else max_batch
    if max_batch < 1:
        raise UsageError(f"max_batch must be >= 1, not {max_batch}")
    if format != "engine" and (dla_core is not None or timing_cache is not None):
        raise UsageError("--dla-core and --timing-cache apply to --format engine only")
    if (ckpt is None) == (preset is None):
        raise UsageError("give a checkpoint to export, or --preset NAME for random weights (not both)")
    if format == "engine":
        from ..deploy.tensorrt import _import_trt

        _import_trt()  # no TensorRT here: say so before minutes of ONNX export, not after
    if preset is not None:
        model, record, gate = random_model(preset, seed), random_weights_record(preset, seed), None
    else:
        model, data = load_checkpoint(ckpt)
        record, gate = {"file": Path(ckpt).name, "sha256": sha256_file(ckpt)}, data.get("gate")
    if precision == "int8":
        if not family_of(model.config).quantizable:
            raise UsageError(f"--precision int8 is not available for the {model.config.family} family yet (fp32, fp16)")
        from .quantize import export_int8

        bundle = export_int8(model, out_dir, calib, opset=opset, checkpoint=record, gate=gate,
                             verify_clip=verify_clip, progress=progress or (lambda s: None))
    else:
        bundle = export_model(model, out_dir, precision=precision, opset=opset, checkpoint=record,
                              gate=gate, progress=progress)
    if format == "engine":
        from ..deploy.trt_engines import build_engines

        bundle = build_engines(bundle, precision=precision, max_batch=max_batch, workspace_gib=workspace_gib,
                               timing_cache=timing_cache, dla_core=dla_core)
    if format == "triton":
        from ..deploy.triton import write_repository

        write_repository(bundle, Path(out_dir) / "triton", max_batch)
    if verify_clip and precision != "int8":  # int8 verified against the fp32 export inside export_int8
        # a fresh copy: an fp16 export casts the model's modules in place
        fresh = random_model(preset, seed) if preset is not None else load_checkpoint(ckpt)[0]
        bundle = verify_export(bundle, fresh, None if verify_clip is True else verify_clip)
    return bundle


def verify_export(bundle: Bundle, model: Any, clip: str | Path | None = None) -> Bundle:
    """fp32/fp16 ``--verify``: the export against the PyTorch model it came from (on ``clip``, or
    a generated 100-step clip), recorded in the manifest's ``verify`` as the int8 comparison is."""
    data = None if clip is None else family_of(model.config).file_inputs(clip, model.config)
    report = export_parts(model.config).verify(bundle, model, data)
    write_manifest(bundle.root, {**bundle.manifest, "verify": report.as_dict()})
    return read_bundle(bundle.root)
