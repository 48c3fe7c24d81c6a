"""A model's description for `soundloc info`: config, parameter counts, GMAC per step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..config import DEFAULT_PRESET, DEFAULT_RECIPE, RECIPES, preset
from ..families import family_of
from .checkpoint import load_checkpoint
from .classifier import AVClassifier, count_parameters
from .cost import macs_per_step
from .families import model_parts


def describe(ckpt: Path | None = None, preset_name: str = DEFAULT_PRESET, recipe: str = DEFAULT_RECIPE) -> dict[str, Any]:
    """A checkpoint's description, or (without one) that of the model `soundloc train --preset
    preset_name --recipe recipe` starts from (untrained)."""
    if ckpt is not None:
        model, data = load_checkpoint(ckpt)
        source = str(ckpt)
        epoch = data.get("epoch")
        training = {k: data[k] for k in ("schedule", "zoom") if k in data}
    else:
        cfg = preset(preset_name, **RECIPES[recipe][0])
        model, epoch = AVClassifier(cfg).eval(), None
        source = f"what `soundloc train --preset {preset_name} --recipe {recipe}` trains (untrained here)"
        training = {}  # a recipe's training options: the caller's to add (they live in soundloc.train)
    cfg = model.config
    macs = macs_per_step(model, cfg)
    nets = model_parts(cfg).networks(model, cfg)
    heads = sum(count_parameters(m) for n, m in model.named_children() if n.startswith("fc"))
    return {
        "source": source,
        "epoch": epoch,
        "config": {k: v for k, v in cfg.to_dict().items() if k != "class_names"},
        "num_class_names": len(cfg.class_names),
        "lookahead_steps": family_of(cfg).lookahead_steps(cfg),
        "lookahead_seconds": family_of(cfg).lookahead_steps(cfg) / cfg.fps,
        "parameters": {**{name: count_parameters(net) for name, (net, _, _) in nets.items()},
                       "heads": heads, "total": count_parameters(model)},
        "gmac_per_frame": {k: round(v / 1e9, 4) for k, v in macs.items()},
        "model": family_of(cfg).summary(cfg),
        "imported": data.get("imported") if ckpt is not None else None,
        "training": training,  # a checkpoint's schedule and scale augmentation (what its run trained with)
    }


def print_description(desc: dict[str, Any]) -> None:
    console = Console()
    console.print(f"[bold]{escape(desc['source'])}[/bold]" + (f", epoch {desc['epoch']}" if desc["epoch"] is not None else ""))
    console.print(f"model: {escape(desc['model'])}", highlight=False, soft_wrap=True)
    if desc.get("imported"):
        console.print(f"imported: {escape(str(desc['imported'].get('file')))} sha256 {desc['imported'].get('sha256')}",
                      highlight=False, soft_wrap=True)
    if desc.get("training"):
        console.print("training: " + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                                               for k, v in sorted(desc["training"].items())), highlight=False)
    table = Table("setting", "value", box=None)
    for k, v in desc["config"].items():
        table.add_row(k, escape(str(v)))
    table.add_row("lookahead", f"{desc['lookahead_steps']} steps ({desc['lookahead_seconds']:.1f} s)")
    console.print(table)
    cost = Table("network", "parameters", "GMAC / frame", box=None)
    for net in ("video", "audio"):
        cost.add_row(net, f"{desc['parameters'][net]:,}", f"{desc['gmac_per_frame'][net]:.3f}")
    cost.add_row("heads", f"{desc['parameters']['heads']:,}", "-")
    cost.add_row("total", f"{desc['parameters']['total']:,}", f"{sum(desc['gmac_per_frame'].values()):.3f}")
    console.print(cost)

