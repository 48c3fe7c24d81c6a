"""`soundloc eval`: score localization maps on VGG-SS or Flickr-SoundNet (docs/design.md §2)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from .app import app, check_paths, fail

if TYPE_CHECKING:
    import numpy as np

    from ..data.annotations import Annotations
    from ..dependence import AudioDependence
    from ..evaluate import EvalResult


@app.command("eval")
def eval_command(
    ckpt: Optional[Path] = typer.Argument(None, help="Checkpoint to compute maps with (needs --videos and torch)."),
    annotations: Path = typer.Option(..., "--annotations", help="VGG-SS json file, or a Flickr-SoundNet folder of <id>.xml."),
    maps: Optional[Path] = typer.Option(None, "--maps", help="Precomputed maps: .npz with one 2-D array per clip id."),
    videos: Optional[Path] = typer.Option(None, "--videos", help="Folder of <clip_id>.mp4 (with a checkpoint), or "
                                          "the authors' layout: frames/<clip_id>.jpg + audio/<clip_id>.wav."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="center (a centred Gaussian), or shuffled (with CKPT: each clip's video with another clip's audio)."),
    protocol: str = typer.Option("lvs", "--protocol", help="lvs (OpenCV resize, P > median) or ezvsl (align_corners, P >= median)."),
    threshold: str = typer.Option("median", "--threshold", help="median (LVS, EZ-VSL and the others: half the "
                                  "frame) or adaptive (SSL-Align's cIoU_adap: as many pixels as the clip's box)."),
    ids: Optional[Path] = typer.Option(None, "--ids", help="CSV whose first column lists the clip ids to evaluate (e.g. flickr_test.csv)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the summary and per-clip results here."),
    curve: Optional[Path] = typer.Option(None, "--curve", help="Write the success curve as a PNG here."),
    preprocess: Optional[str] = typer.Option(None, "--preprocess", help="With a checkpoint: soundloc (the default "
                                             "path) or authors (a published family's own frame resize, audio loader "
                                             "and map upsampling); default: what the model recorded at import."),
    confidence: Optional[str] = typer.Option(None, "--confidence", help="Also the extended metrics (SLAVC: AP, max-F1, precision over clips with and without a visible source, those without a box), each clip scored by: top25 (mean of the map's top quarter), score (the window's S_av; with CKPT), heard_seen (the vision head's probability of the heard class; with CKPT), calibrated (an export's calibrated confidence, with CKPT and --calibration) or constant."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="With --confidence calibrated: the export whose `soundloc calibrate` fit scores each clip."),
) -> None:
    """Score maps with cIoU AP50, AUC, mean cIoU and the pointing game (and, with --confidence,
    the extended metrics and, with a checkpoint, the label accuracy on visible clips)."""
    from .. import evaluate, metrics
    from ..data.annotations import AnnotationError, read_annotations, read_id_list

    from .applications import check_preprocess

    check_paths([json_out, curve], [ckpt, annotations, maps, videos, ids, calibration])
    check_preprocess(preprocess)
    try:
        metrics.check_protocol(protocol)
        metrics.check_threshold(threshold)
        model_baseline = baseline == "shuffled"
        if sum(x is not None for x in (ckpt, maps, None if model_baseline else baseline)) != 1 or \
                (model_baseline and ckpt is None):
            raise evaluate.EvalError("give exactly one source of maps: a checkpoint (optionally --baseline shuffled), "
                                     "--maps FILE or --baseline center")
        if confidence is not None and confidence not in evaluate.CONFIDENCES:
            raise evaluate.EvalError(f"--confidence must be one of {', '.join(evaluate.CONFIDENCES)}, not {confidence!r}")
        gt = read_annotations(annotations, read_id_list(ids) if ids else None)
        dependence, windows = None, None
        if maps is not None:
            source, clip_maps = str(maps), evaluate.load_maps_npz(maps)
        elif baseline is not None and not model_baseline:
            source, clip_maps = f"baseline:{baseline}", evaluate.baseline_maps(baseline, gt)
        else:
            source = f"{ckpt}" + (" (shuffled audio)" if model_baseline else "")
            windows = {}
            clip_maps, dependence = _checkpoint_maps(ckpt, videos, gt, baseline, preprocess, windows)
        result = evaluate.score_maps(clip_maps, gt, protocol, source=source, threshold=threshold)
        if dependence is not None:
            result = dataclasses.replace(result, extra={**result.extra, "audio_dependence": dependence.to_dict()})
        if confidence is not None:
            conf = evaluate.clip_confidences(confidence, clip_maps, windows, _calibration(calibration))
            ext = {"confidence": confidence, **evaluate.extended_metrics(result, gt, conf)}
            result = dataclasses.replace(result, extra={**result.extra, "extended": ext})
        if windows:
            result = dataclasses.replace(result, extra={**result.extra,
                                                        "label_accuracy": evaluate.label_accuracy(gt, windows)})
        if json_out is not None:
            evaluate.write_json(result, json_out)
        if curve is not None:
            metrics.plot_success_curves({Path(source).name: result.cious}, curve,
                                        title=f"{gt.kind} success curve ({protocol} protocol)")
    except (AnnotationError, evaluate.EvalError, metrics.MetricError) as e:
        raise fail(str(e)) from None
    except OSError as e:
        raise fail(f"{e.filename or ''}: {e.strerror or e}") from None
    _print_result(result)
    if dependence is not None:
        typer.echo(f"audio dependence over {dependence.clips} clips: median map change {dependence.map_change:.3f} "
                   f"with another clip's audio, peak moved in {dependence.peak_moved:.0%} of clips")
        if dependence.warning():  # flagged, or too few clips to judge
            typer.echo(dependence.warning())


def _calibration(export: Optional[Path]):
    """The calibrated in-view confidence stored in an export's soundloc.json (None without --calibration)."""
    from .. import evaluate
    from ..visibility import Visibility

    if export is None:
        return None
    manifest = export / "soundloc.json" if export.is_dir() else export
    try:
        import json

        record = json.loads(manifest.read_text()).get("visibility")
    except (OSError, ValueError) as e:
        raise evaluate.EvalError(f"{manifest}: cannot read the calibration ({e})") from None
    if not record:
        raise evaluate.EvalError(f"{export}: not calibrated (run `soundloc calibrate` first)")
    return Visibility.from_dict(record)


def _checkpoint_maps(ckpt: Path, videos: Optional[Path], gt: "Annotations", baseline: Optional[str],
                     preprocess: Optional[str] = None, windows: Optional[dict] = None
                     ) -> tuple[dict[str, "np.ndarray"], "AudioDependence"]:
    """Maps from a checkpoint at each clip's middle frame (3 s centred window) and the
    audio-dependence check on them; needs torch."""
    from .. import evaluate

    if videos is None:
        raise evaluate.EvalError("a checkpoint needs --videos DIR (the <clip_id>.mp4 files)")
    try:
        from ..model.inference import maps_from_checkpoint
    except ImportError as e:
        raise evaluate.EvalError(f"evaluating a checkpoint needs torch: pip install 'soundloc[train]' ({e})") from None
    labels = {a.id: a.label for a in gt if a.label}
    maps, skipped, dependence = maps_from_checkpoint(ckpt, videos, gt.ids, baseline=baseline, labels=labels or None,
                                                     preprocess=preprocess, windows=windows)
    for clip_id, reason in skipped.items[:10]:
        typer.echo(f"skipped {clip_id}: {reason}", err=True)
    return maps, dependence


def _print_result(result: "EvalResult") -> None:
    from rich.console import Console
    from rich.table import Table

    s = result.summary
    table = Table(title=f"{result.dataset} · protocol {result.protocol} · {result.source}")
    for col in ("clips", "cIoU AP50", "AUC", "mean cIoU", "pointing"):
        table.add_column(col, justify="right")
    table.add_row(str(s["n"]), f"{s['ap50']:.4f}", f"{s['auc']:.4f}", f"{s['mean_ciou']:.4f}", f"{s['pointing']:.4f}")
    console = Console()
    console.print(table)
    ext, acc = result.extra.get("extended"), result.extra.get("label_accuracy")
    if ext:
        console.print(f"  extended ({ext['confidence']} confidence; {ext['n_visible']} visible, {ext['n_negative']} "
                      f"without a visible source): AP {ext['ap']:.4f}  max-F1 {ext['max_f1']:.4f}  "
                      f"precision {ext['precision']:.4f}", markup=False, highlight=False)
    if acc and acc.get("n"):
        heads = "  ".join(f"{h} {v:.4f}" for h, v in acc.items() if h != "n")
        console.print(f"  label top-1 on {acc['n']} visible clips: {heads}", markup=False, highlight=False)
    notes = [f"{n} {what}" for n, what in (
        (result.n_missing, "annotated clips without a map (not scored)"),
        (result.n_unannotated, "maps without annotation (ignored)"),
        (result.n_empty_gt, "empty GT (scored cIoU 0)"),
        (result.n_non_finite, "maps with NaN/inf (non-finite set to the map's minimum)"),
        (result.n_corrupt_boxes, "corrupt boxes (out of range: clipped; inverted: dropped)"),
        (result.n_no_annotation, "requested ids without annotation (not scored)"),
    ) if n]
    for note in notes:
        console.print(f"  note: {note}", markup=False, highlight=False)
