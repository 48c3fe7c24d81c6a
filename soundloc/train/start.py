"""The front door from a dataset folder: the recipe, the config (preset, overrides, or a
resumed checkpoint's), the class list and the datasets, then ``fit``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..config import DEFAULT_PRESET, DEFAULT_RECIPE, RECIPES, Config, ConfigError
from ..config import preset as config_preset
from ..data.annotations import AnnotationError, read_class_names
from .datasets import collate
from ..model.checkpoint import CheckpointError, read_checkpoint
from .loop import fit
from .types import TrainError, TrainOptions, TrainResult


STUDENT_OPTIONS = ("frames", "moments", "boxes", "teacher", "init")  # train.student's own arguments


def saved_family(out: Path, resume: bool) -> str:
    """The family of the run being resumed (``classifier`` for a new run)."""
    if resume and (out / "last.pt").is_file():
        try:
            config = read_checkpoint(out / "last.pt").get("config")
        except CheckpointError as e:
            raise TrainError(str(e)) from None
        return config.get("family", "classifier") if isinstance(config, dict) else "classifier"
    return "classifier"


def base_config(out: Path, preset_name: str | None, overrides: dict[str, Any], resume: bool) -> Config:
    """The preset with overrides; when resuming without a preset, the checkpoint's own config."""
    if resume and preset_name is None and (out / "last.pt").is_file():
        try:
            return Config.from_dict(read_checkpoint(out / "last.pt")["config"]).replace(**overrides)
        except (KeyError, TypeError):
            raise TrainError(f"{out / 'last.pt'}: not a soundloc training checkpoint") from None
    return config_preset(preset_name or DEFAULT_PRESET, **overrides)


def load_datasets(data: Path, config: Config, *, csv_path: str | Path | None, classes: Sequence[str] | None,
                  val_split: str | None, augment: Any = None) -> tuple[Config, Dataset, Dataset | None]:
    """Training and validation sets from a VGGSound folder or a ``path,label[,split]`` CSV;
    the config gets the class list (sorted labels of the CSV unless ``classes`` is given) and
    a matching ``num_classes``, so every checkpoint carries its class names."""
    from .datasets import DatasetError, PathListDataset, VGGSoundDataset

    def make(split: str | None, names: Sequence[str] | None, aug: Any = None) -> Dataset:
        if data.is_file():
            return PathListDataset(data, split=split, config=config, class_names=names, augment=aug)
        return VGGSoundDataset(data, csv_path, split=split, config=config, class_names=names, augment=aug)

    train_split = "train" if val_split is not None or not data.is_file() else None
    train_set = make(train_split, classes or config.class_names or None, augment)
    names = tuple(train_set.class_names)  # type: ignore[attr-defined]
    if config.num_classes != len(names) and config.class_names:
        raise TrainError(f"the config has {config.num_classes} classes, the class list {len(names)}")
    config = config.replace(num_classes=len(names), class_names=names)
    try:
        val_set = make(val_split, names) if val_split is not None else None
    except DatasetError as e:
        raise TrainError(f"{e} (choose the validation split with --val-split, or 'none')") from None
    return config, train_set, val_set


def recipe_settings(name: str | None, out: Path, preset: str | None,
                    resume: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Config fields and TrainOptions a recipe (``None``: ``default``) starts from. Resuming
    without a preset keeps the checkpoint's own config and schedule; a recipe named there must
    be the one the run was trained with (a resume cannot change it: refused, not ignored)."""
    if name is not None and name not in RECIPES:
        raise TrainError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    if resume and preset is None and (out / "last.pt").is_file():
        try:
            saved = read_checkpoint(out / "last.pt")
        except CheckpointError as e:
            raise TrainError(str(e)) from None
        if name is not None and not _trained_with(saved, name):
            raise TrainError(f"{out / 'last.pt'} was not trained with the {name} recipe and --resume cannot "
                             f"change it; resume without --recipe, or train afresh into another --out")
        return {}, {"schedule": saved.get("schedule", "plateau"), "zoom": saved.get("zoom", 1.0)}
    config_fields, option_fields = RECIPES[name or DEFAULT_RECIPE]
    return dict(config_fields), dict(option_fields)


def _trained_with(saved: dict, name: str) -> bool:
    config = saved.get("config") if isinstance(saved.get("config"), dict) else {}
    config_fields, option_fields = RECIPES[name]
    return (all(config.get(k) == v for k, v in config_fields.items())
            and saved.get("schedule", "plateau") == option_fields.get("schedule", saved.get("schedule", "plateau")))


def train(data_dir: str | Path, out_dir: str | Path, *, preset: str | None = None, recipe: str | None = None,
          overrides: dict[str, Any] | None = None, csv_path: str | Path | None = None,
          classes: str | Path | None = None, val_split: str | None = "test", resume: bool = False,
          init_video: str | Path | None = None, family: str | None = None, **options: Any) -> TrainResult:
    """Train on a VGGSound-format folder (``vggsound.csv`` + ``videos/``) or a
    ``path,label,split`` CSV. ``preset``: ``paper``/``small``/``tiny`` (default ``small``; on
    resume, the checkpoint's); ``recipe``: ``default`` or ``paper`` (``config.RECIPES``: head,
    map, loss and schedule; the package docstring says why; ``None``: ``default``, or on resume
    the checkpoint's); ``overrides``: Config fields, over
    the recipe's; ``classes``: a stat.csv-style class list; ``val_split``: the split validated
    on each epoch (None: none); ``options``: TrainOptions fields (epochs, batch_size, lr,
    workers, amp, seed, device, schedule, ...), over the recipe's. ``family``: ``classifier`` or
    ``ezvsl`` (``train.student``, which takes ``frames``, ``moments``, ``boxes``, ``teacher`` and
    ``init``); None: the classifier, or on resume the checkpoint's family.
    """
    from .datasets import DatasetError

    out = Path(out_dir)
    family = family or saved_family(out, resume)
    if family == "ezvsl":
        from .student import train_student

        if recipe is not None or init_video is not None:
            raise TrainError("--recipe and --init-video apply to the classifier; the ezvsl family has its own loss")
        return train_student(data_dir, out, preset=preset, overrides=overrides, csv_path=csv_path,
                             val_split=val_split, resume=resume, **options)
    if family != "classifier":
        raise TrainError(f"soundloc trains the classifier and ezvsl families, not {family!r}")
    student_only = [k for k in STUDENT_OPTIONS if options.get(k) is not None]
    if student_only:
        raise TrainError(f"--{student_only[0]} applies to --family ezvsl (a second-stage student)")
    options = {k: v for k, v in options.items() if k not in STUDENT_OPTIONS and not (k == "lr" and v is None)}
    recipe_config, recipe_options = recipe_settings(recipe, out, preset, resume)
    try:
        opts = TrainOptions(**{**recipe_options, **options})
    except TypeError as e:
        raise TrainError(f"unknown training option: {e}") from None
    try:
        config = base_config(out, preset, {**recipe_config, **(overrides or {})}, resume)
        names = read_class_names(classes) if classes is not None else None
        augment = None
        if opts.crop_seconds or opts.flip or opts.zoom < 1:
            from .datasets import Augment

            augment = Augment(flip=opts.flip, crop_seconds=opts.crop_seconds, zoom=opts.zoom)
        config, train_set, val_set = load_datasets(Path(data_dir), config, csv_path=csv_path, classes=names,
                                                   val_split=val_split, augment=augment)
        if opts.cache:
            for dataset in (train_set, val_set):
                if dataset is not None:
                    dataset.keep_decoded()  # type: ignore[attr-defined]
    except (ConfigError, AnnotationError, DatasetError, CheckpointError) as e:
        raise TrainError(str(e)) from None
    return fit(config, train_set, val_set, out, opts, resume=resume, init_video=init_video, collate_fn=collate)
