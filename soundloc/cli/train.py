"""`soundloc train DATA_DIR`: the paper's training recipe (soundloc.train) from the command line.

Multi-GPU / multi-node: run the same command under torchrun, e.g.
``torchrun --nproc_per_node 4 "$(which soundloc)" train DATA --out runs/x`` (``--batch-size`` is
per GPU; for several nodes add torchrun's ``--nnodes``/``--rdzv-endpoint``, and put ``--out`` on a
shared disk so every node can ``--resume``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional

import typer

from .app import app, check_paths, fail


@app.command("train")
def train_command(
    data_dir: Path = typer.Argument(..., help="VGGSound-format folder (vggsound.csv + videos/) or a path,label,split CSV."),
    out: Path = typer.Option(Path("runs/train"), "--out", help="Folder for last.pt, best.pt and log.jsonl."),
    family: Optional[str] = typer.Option(None, "--family", help="classifier (the paper's, default) or ezvsl (the second-stage localizer: per-frame ResNet-18s, EZ-VSL's loss); on --resume the checkpoint's."),
    preset: Optional[str] = typer.Option(None, "--preset", help="paper, small or tiny (default small; on --resume the checkpoint's). For ezvsl the ResNet-18s' width: paper 1, small 1/8, tiny 1/16."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="default (tied-fc head, salient maps, cosine LR) or paper (the paper's heads, loss and plateau LR exactly); default: default, on --resume the checkpoint's."),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="LR schedule: cosine or plateau (default: the recipe's)."),
    overrides: List[str] = typer.Option([], "--set", help="Config override KEY=VALUE, e.g. clip_seconds=5 (repeatable)."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Annotation CSV (default DATA_DIR/vggsound.csv)."),
    classes: Optional[Path] = typer.Option(None, "--classes", help="Class list in index order, e.g. VGGSound's stat.csv (default: sorted labels)."),
    val_split: str = typer.Option("test", "--val-split", help="Split validated after each epoch; 'none' for no validation."),
    epochs: int = typer.Option(30, "--epochs", help="Total epochs (on --resume: the new total)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Clips per step per process."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Initial learning rate (default: SGD 1e-2 for the classifier, Adam 1e-4 for ezvsl; see --schedule)."),
    workers: int = typer.Option(2, "--workers", help="DataLoader worker processes."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/last.pt."),
    init_video: Optional[Path] = typer.Option(None, "--init-video", help="torchvision mc3_18 .pth to initialise the video net."),
    init: Optional[Path] = typer.Option(None, "--init", help="ezvsl: a soundloc ezvsl checkpoint (e.g. from `soundloc import ezvsl`) to fine-tune (DATA may then be a plain folder of videos, no labels); or a soundloc classifier (the teacher), whose video net starts the image net at its width."),
    frames: Optional[str] = typer.Option(None, "--frames", help="ezvsl: the frame each clip trains on: mid, or moments (the teacher's top-1 moment from --moments; default when --moments is given)."),
    moments: Optional[Path] = typer.Option(None, "--moments", help="ezvsl: `soundloc moments` json; clips missing from it use their middle frame (counted)."),
    boxes: Optional[Path] = typer.Option(None, "--boxes", help="ezvsl: VGG-SS json of boxes (`soundloc annotate`'s pseudo boxes, or real ones): a box term for the clips that have one (weight: --set box_weight=W)."),
    teacher: Optional[Path] = typer.Option(None, "--teacher", help="ezvsl: the checkpoint that made --moments/--boxes, recorded (sha256) in the student's provenance."),
    amp: str = typer.Option("auto", "--amp", help="Mixed precision: auto (on for CUDA), on, off."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initialisation and data order."),
    keep_epochs: bool = typer.Option(False, "--keep-epochs", help="Also keep epoch_XXX.pt for every epoch."),
    crop_seconds: Optional[float] = typer.Option(None, "--crop-seconds", help="Train on random windows of this length (cheaper steps; validation uses whole clips)."),
    flip: bool = typer.Option(False, "--flip", help="Random horizontal flips while training."),
    zoom: Optional[float] = typer.Option(None, "--zoom", help="Below 1: shrink training frames by a random factor in [ZOOM, 1] (smaller, further sources; 0.75 pointed best, see docs/guide.md). Default: 1, or on --resume the run's own."),
    cache: bool = typer.Option(False, "--cache", help="Keep decoded clips in memory after the first epoch (small collections; ~1.5 MB per 10 s clip per worker)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the run summary here."),
) -> None:
    """Train the audio-visual classifier whose maps localize sound sources (or, with --family ezvsl,
    a second-stage per-frame localizer on its informative moments and pseudo boxes)."""
    from ..config import Config, ConfigError
    from ..model.checkpoint import CheckpointError
    from ..train.distributed import DistributedError
    from ..train import TrainError, train

    # the run's own files are outputs too (and, on --resume, last.pt an input): --json may not be one
    own = [out / "last.pt", out / "best.pt", out / "log.jsonl"] if not out.is_file() else []
    check_paths([json_out, *own], [data_dir, csv_path, classes, init_video, init, moments, boxes, teacher], dirs=[out])
    try:
        extra = {k: v for k, v in {"schedule": schedule, "zoom": zoom}.items() if v is not None}
        student = {k: v for k, v in {"init": init, "frames": frames, "moments": moments, "boxes": boxes,
                                     "teacher": teacher}.items() if v is not None}
        result = train(data_dir, out, preset=preset, recipe=recipe, overrides=Config.parse_overrides(overrides), csv_path=csv_path,
                       classes=classes, val_split=None if val_split.lower() == "none" else val_split,
                       resume=resume, init_video=init_video, family=family, **student, epochs=epochs,
                       batch_size=batch_size, lr=lr,
                       workers=workers, amp=amp, device=device, seed=seed, keep_epochs=keep_epochs,
                       crop_seconds=crop_seconds, flip=flip, cache=cache, **extra)
    except (TrainError, DistributedError, ConfigError, CheckpointError) as e:
        raise fail(str(e)) from None
    except OSError as e:  # full disk, unwritable --out: the previous checkpoint is intact
        raise fail(f"{e.filename or out}: {e.strerror or e}") from None
    if result.world_size > 1 and not _is_main():
        return
    acc = "  ".join(f"{k} {v:.3f}" for k, v in result.accuracy.items())
    typer.echo(f"trained {result.epochs} epochs (from {result.resumed_from}) in {result.seconds:.0f} s: "
               + (f"accuracy {acc}; " if acc else f"final training loss {result.train_loss:.4f}; ")
               + f"{_best(result)} at epoch {result.best_epoch}; {result.skipped} clips skipped")
    if result.provenance:
        p = result.provenance
        frames_from = (f"{p['frames_from_moments']} at the teacher's top-1 moment, {p['frames_mid_fallback']} "
                       f"missing from --moments at their middle frame" if p["frames"] == "moments" else "middle frames")
        typer.echo(f"{p['clips']} training clips ({frames_from}); {p['clips_with_box']} with a box")
    typer.echo(f"best epoch: {result.best_checkpoint} (use this one); latest epoch: {result.last_checkpoint} (--resume)")
    if json_out is not None:
        from ..fileio import write_json

        write_json(result.to_dict(), json_out)


def _best(result: Any) -> str:
    """The best epoch's monitored value in words (the schedule decides what is monitored)."""
    if result.monitor.endswith("minus_loss"):
        return f"best {result.monitor.split('_')[0]} loss {-result.best_monitored:.3f}"
    return f"best av {result.best_monitored:.3f}"


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"
