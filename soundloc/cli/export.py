"""`soundloc export`: a checkpoint -> an export directory of ONNX graphs or TensorRT engines."""

from __future__ import annotations

from rich.markup import escape

from pathlib import Path
from typing import Optional

import typer

from ..config import ConfigError
from ..errors import UsageError
from ..fileio import OutputError
from .app import app, check_paths, fail


@app.command("export")
def export(
    ckpt: Optional[Path] = typer.Argument(None, help="soundloc checkpoint (.pt) to export (or --preset)."),
    out: Path = typer.Option(..., "--out", "-o", help="Export directory to write."),
    format: str = typer.Option("onnx", "--format", "-f", help="onnx, engine (ONNX + TensorRT engines), or triton (ONNX + a Triton model repository in OUT/triton)."),
    precision: str = typer.Option("fp32", help="fp32, fp16 (fp16 weights and compute, fp32 I/O), or int8 (needs --calib)."),
    calib: Optional[Path] = typer.Option(None, help="int8: folder of videos (or a dataset dir) to calibrate on."),
    preset: Optional[str] = typer.Option(None, help="No checkpoint: this architecture (paper, small, tiny) with "
                                         "RANDOM weights, to benchmark before training."),
    seed: int = typer.Option(0, help="Seed of the random weights (--preset)."),
    max_batch: Optional[int] = typer.Option(None, help="Most streams one step call serves (engine profile max; "
                                            "default 16, or the static batch 1 with --dla-core)."),
    workspace_gib: float = typer.Option(2.0, help="TensorRT builder workspace limit, GiB."),
    timing_cache: Optional[Path] = typer.Option(None, help="TensorRT timing cache file, reused across builds."),
    dla_core: Optional[int] = typer.Option(None, help="Jetson: build for this DLA core (static batch, GPU for what the DLA lacks)."),
    verify: bool = typer.Option(False, "--verify", help="Compare onnxruntime with PyTorch (int8: with the fp32 export); exit 1 above tolerance."),
    clip: Optional[Path] = typer.Option(None, help="Video to verify on (default: a generated 100-step clip; int8: the first calibration clip)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write export and verify figures here."),
) -> None:
    """Export the step graph (exact streaming) and the offline video/audio graphs."""
    import logging

    from rich.console import Console

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    from ..export.pipeline import export_checkpoint

    check_paths([json_out, *([out / "soundloc.json"] if not out.is_file() else [])], [ckpt, clip], dirs=[out])
    console = Console(stderr=True)
    try:
        bundle = export_checkpoint(ckpt, out, format=format, precision=precision, max_batch=max_batch,
                                   workspace_gib=workspace_gib, timing_cache=timing_cache, dla_core=dla_core,
                                   preset=preset, seed=seed, calib=calib,
                                   verify_clip=(clip or True) if verify else False, progress=lambda s: console.print(s, markup=False, highlight=False))
    except (UsageError, ConfigError, OutputError) as e:  # not any ValueError: a failure mid-run is exit 1
        raise fail(str(e))
    from ..runtime.bundle import random_weights_note

    note = random_weights_note(bundle.manifest)
    if note:
        console.print(f"[bold yellow]{escape(note)}[/bold yellow]")
    files = [rec for g in bundle.manifest["graphs"].values() for rec in g["files"].values()]
    for rec in files:
        console.print(f"  {escape(rec['file'])}: {rec['bytes'] / 1e6:.1f} MB")
    figures = {"export": {"dir": str(out), "precision": precision, "format": format,
                          "seconds": bundle.manifest["export_seconds"],
                          "bytes": {r["file"]: r["bytes"] for r in files}, "weights": note or "checkpoint"}}
    if verify and precision == "int8":
        figures["verify"] = _print_int8(bundle.manifest["verify"], console)
    elif verify:
        figures["verify"] = _print_verify(bundle.manifest["verify"], console)
    if json_out:
        from ..fileio import write_json

        write_json(figures, json_out)
    console.print(f"wrote {escape(str(out))}")
    if verify and not figures["verify"]["ok"]:
        raise typer.Exit(1)


def _print_verify(report: dict, console) -> dict:
    """The fp32/fp16 export's comparison with PyTorch (recorded in its soundloc.json)."""
    console.print(f"verify ({report['precision']}, {report['steps']} steps): max abs error")
    for k, e in report["offline_vs_torch"].items():
        console.print(f"  offline {k:>5} vs PyTorch : {e:.2e}   (|ref| max {report['scale'][k]:.2e}, "
                      f"allowed {report['allowed'][k]:.2e})")
    for k, e in report["stream_vs_offline"].items():
        console.print(f"  stream  {k:>5} vs offline: {e:.2e}   (allowed {report['allowed'][k]:.2e})")
    if report["map_ciou_min"] is not None:
        console.print(f"  binarised maps vs fp32: min cIoU {report['map_ciou_min']:.3f}")
    for f in report["failures"]:
        console.print(f"[red]FAIL[/red] {escape(f)}")
    return report


def _print_int8(report: dict, console) -> dict:
    """The int8 export's comparison with the fp32 export (recorded in its soundloc.json)."""
    console.print(f"verify (int8 vs the fp32 export, {escape(report['clip'])}, {report['steps']} steps):")
    for key in ("stream", "offline", "stream_vs_offline_int8"):
        f = report[key]
        near = f", within {f['peak_reach_cells']} cell(s) on {f['peak_within_reach']:.1%}" if f["peak_reach_cells"] else ""
        if f["peak_tie"]:
            near += f", there or on an fp32 tie (within {f['peak_tie']:.0%}) on {f['peak_agrees']:.1%}"
        console.print(f"  {key:>22}: peak cell same on {f['peak_agreement']:.1%} of steps{near}, binarised-map cIoU "
                      f"median {f['ciou_median']:.3f} (min {f['ciou_min']:.3f})")
    m = report["moments"]
    console.print(f"  alpha max error {report['alpha_max_rel_error']:.2%} of max |alpha|; S_av {m['score_max_rel_error']:.2%}; "
                  f"top-1 moment {'same' if m['top1_same'] else 'differs'}")
    for head, f in (report.get("labels") or {}).items():
        console.print(f"  {head} classes: top-1 same as fp32 on {f['top1_agreement']:.1%} of windows "
                      f"(probabilities differ by at most {f['max_prob_diff']:.3f})")
    for f in report["failures"]:
        console.print(f"[red]FAIL[/red] {escape(f)}")
    return report
