"""Training the second-stage localizer (the ezvsl family: per-frame ResNet-18 image and audio
nets, EZ-VSL's loss): the paper's two applications (§5) made into training inputs.

- ``frames``: ``mid`` (each clip's middle frame) or ``moments`` (the teacher's top-1 informative
  moment from ``soundloc moments``' json; a clip missing from it falls back to its middle frame
  and is counted);
- ``boxes``: a VGG-SS json (``soundloc annotate``'s pseudo boxes, or real boxes) adds the box
  term for the clips that have one (``config.box_weight``); the others train unsupervised;
- ``init``: a soundloc ezvsl checkpoint (e.g. `soundloc import ezvsl`'s) whose weights start the
  run: fine-tuning a published model on unlabeled footage (a folder of videos needs no CSV); or
  a soundloc classifier checkpoint (the teacher): the student, at the teacher's width, starts its
  image net from the teacher's video net (``model.deflate``; recorded as ``init.from_teacher``).

Every checkpoint records the run's provenance: the teacher checkpoint, the moments, boxes and
init files (name and sha256), how many training clips had a box and where the frames came from;
``soundloc export`` copies it into the manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Config, ConfigError
from ..data.annotations import AnnotationError, list_videos
from ..families import EZVSL_TAU, ezvsl_config
from ..model.checkpoint import CheckpointError, read_checkpoint
from .datasets import ClipDataset, ClipRecord, DatasetError, PathListDataset, VGGSoundDataset
from .frames import FRAME_MODES, FrameChoice, FrameDataset, collate_frames, file_record, read_boxes, read_moments
from .loop import fit
from .objectives import OBJECTIVES
from .types import TrainError, TrainOptions, TrainResult


def student_config(out: Path, preset: str | None, overrides: dict[str, Any], resume: bool,
                   init: str | Path | None) -> Config:
    """On resume without a preset, the checkpoint's config; from ``init``, the imported model's
    (its width and object prior) with EZ-VSL's training temperature; else the preset's
    (``families.EZVSL_PRESETS``, default ``small``); ``overrides`` on top."""
    if resume and preset is None and (out / "last.pt").is_file():
        return Config.from_dict(read_checkpoint(out / "last.pt")["config"]).replace(**overrides)
    if init is not None:
        saved = Config.from_dict(read_checkpoint(init).get("config") or {})
        if saved.family == "classifier":  # a teacher: its video net starts the image net (model.deflate)
            width = overrides.get("width", saved.width)
            if width != saved.width:
                raise TrainError(f"--init {init}: a teacher of width {saved.width} starts a student of its own width, "
                                 f"not {width}")
            return ezvsl_config(preset or "small", **{**overrides, "width": saved.width})
        if preset is not None:
            raise TrainError("--init brings its own architecture; leave out --preset")
        if saved.family != "ezvsl":
            raise TrainError(f"{init}: a {saved.family} checkpoint; --family ezvsl --init takes an ezvsl model "
                             f"(`soundloc import ezvsl`) or a soundloc classifier (the teacher)")
        return saved.replace(contrastive_temperature=EZVSL_TAU, **overrides)
    return ezvsl_config(preset or "small", **overrides)


def clip_records(data: Path, config: Config, csv_path: str | Path | None,
                 val_split: str | None) -> tuple[list[ClipRecord], list[ClipRecord], tuple[str, ...]]:
    """Training and validation clips: a VGGSound folder or path,label CSV (split as the classifier
    splits them; labels only pair clips for the audio-dependence check), or a plain folder of
    videos (unlabeled footage: every clip trains, none validates)."""
    if data.is_dir() and csv_path is None and not (data / "vggsound.csv").is_file():
        records = [ClipRecord(clip_id, path, 0) for clip_id, path in list_videos(data)]
        if not records:
            raise TrainError(f"{data}: no videos and no vggsound.csv")
        return records, [], ("unlabeled",)

    def make(split: str | None, names: tuple[str, ...] | None = None) -> ClipDataset:
        if data.is_file():
            return PathListDataset(data, split=split, config=config, class_names=names)
        return VGGSoundDataset(data, csv_path, split=split, config=config, class_names=names)

    train_set = make("train" if val_split is not None or not data.is_file() else None)
    try:
        val = make(val_split, train_set.class_names).records if val_split is not None else []
    except DatasetError as e:
        raise TrainError(f"{e} (choose the validation split with --val-split, or 'none')") from None
    return train_set.records, val, train_set.class_names


def frame_choice(frames: str | None, moments: str | Path | None) -> FrameChoice:
    """``frames`` None: ``moments`` when a moments file is given, else ``mid``."""
    mode = frames or ("moments" if moments is not None else "mid")
    if mode not in FRAME_MODES:
        raise TrainError(f"--frames must be one of {', '.join(FRAME_MODES)}, not {mode!r}")
    if (mode == "moments") != (moments is not None):
        raise TrainError("--frames moments needs --moments FILE (`soundloc moments`' json), and --moments needs "
                         "--frames moments")
    return FrameChoice(mode, read_moments(moments) if moments is not None else {})


def provenance(choice: FrameChoice, train_set: FrameDataset, teacher: str | Path | None, moments: str | Path | None,
               boxes: str | Path | None, init: str | Path | None) -> dict[str, Any]:
    """What a student was made from (see the module docstring)."""
    init_record = file_record(init)
    if init_record is not None:
        saved = read_checkpoint(init)
        init_record["imported"] = saved.get("imported")
        if (saved.get("config") or {}).get("family", "classifier") == "classifier":
            init_record["from_teacher"] = teacher_mapping(init)
    return {"frames": choice.mode, "teacher": file_record(teacher), "moments": file_record(moments),
            "boxes": file_record(boxes), "init": init_record, "clips": len(train_set),
            "clips_with_box": train_set.clips_with_box, "frames_from_moments": choice.from_moments,
            "frames_mid_fallback": choice.mid_fallback}


def teacher_mapping(path: str | Path) -> dict[str, Any]:
    """What ``model.deflate`` maps from a teacher checkpoint into a student of its width."""
    from ..model.checkpoint import load_checkpoint
    from ..model.deflate import start_from_teacher
    from ..model.ezvsl import EZVSL
    teacher, _ = load_checkpoint(path)
    return start_from_teacher(EZVSL(ezvsl_config("small", width=teacher.config.width)), teacher.state_dict(),
                              teacher.config)


def train_student(data_dir: str | Path, out_dir: str | Path, *, preset: str | None = None,
                  overrides: dict[str, Any] | None = None, csv_path: str | Path | None = None,
                  val_split: str | None = "test", resume: bool = False, frames: str | None = None,
                  moments: str | Path | None = None, boxes: str | Path | None = None,
                  teacher: str | Path | None = None, init: str | Path | None = None,
                  **options: Any) -> TrainResult:
    """`soundloc train DATA --family ezvsl`: see the module docstring; ``options`` are
    TrainOptions fields (``crop_seconds`` and ``zoom`` do not apply: one frame per clip)."""
    out, data = Path(out_dir), Path(data_dir)
    if options.get("crop_seconds") or options.get("zoom", 1.0) < 1:
        raise TrainError("--crop-seconds and --zoom apply to the classifier; the ezvsl family trains on one frame per clip")
    options = {k: v for k, v in options.items() if k not in ("crop_seconds", "zoom") and not (k == "lr" and v is None)}
    try:
        opts = TrainOptions(**{"schedule": "cosine", "lr": OBJECTIVES["ezvsl"].lr, **options})
    except TypeError as e:
        raise TrainError(f"unknown training option: {e}") from None
    try:
        config = student_config(out, preset, overrides or {}, resume, init)
        choice = frame_choice(frames, moments)
        box_map = read_boxes(boxes) if boxes is not None else None
        train_records, val_records, names = clip_records(data, config, csv_path, val_split)
        train_set = FrameDataset(train_records, names, config, choice, box_map, flip=opts.flip)
        val_set = FrameDataset(val_records, names, config, choice, box_map) if val_records else None
    except (ConfigError, AnnotationError, DatasetError, CheckpointError) as e:
        raise TrainError(str(e)) from None
    choice.count([r.clip_id for r in train_records])
    if opts.cache:
        for dataset in (train_set, val_set):
            if dataset is not None:
                dataset.keep_decoded()
    record = provenance(choice, train_set, teacher, moments, boxes, init)
    return fit(config, train_set, val_set, out, opts, resume=resume, init=init, collate_fn=collate_frames,
               provenance=record)
