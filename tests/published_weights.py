"""Seeded random weights in the published localizers' own checkpoint layouts (EZ-VSL, FNAC-AVL,
SLAVC: torchvision resnet18 key names as their model.py wraps it), shared by the import tests and
the fidelity fixtures (tests/fixtures/published/README.md): the same seed gives the same
checkpoint, so the checkpoint behind a fixture need not be stored."""

from __future__ import annotations

import numpy as np
import torch
from test_ezvsl import ezvsl_state, random_state, resnet18_shapes  # noqa: F401  (re-exported)

PRIOR_SEED = 7  # torchvision-style ImageNet resnet18 weights for the object prior


def slavc_state(prefix: str = "", seed: int = 0, momentum_seed: int = 100) -> dict[str, torch.Tensor]:
    """SLAVC's model.state_dict(): two projection heads per side, and the momentum copies of
    every encoder (their training keeps both; test.py uses the momentum ones with --use_mom_eval)."""
    def side(seed: int, pre: str) -> dict[str, tuple]:
        shapes = {f"{pre}imgnet.{k}": s for k, s in resnet18_shapes(3).items()}
        shapes |= {f"{pre}audnet.{k}": s for k, s in resnet18_shapes(1).items()}
        for h in (1, 2):
            shapes |= {f"{pre}img_proj{h}.weight": (512, 512, 1, 1), f"{pre}img_proj{h}.bias": (512,),
                       f"{pre}aud_proj{h}.weight": (512, 512), f"{pre}aud_proj{h}.bias": (512,)}
        return random_state(shapes, seed)

    state = side(seed, "") | side(momentum_seed, "momentum_")
    return {prefix + k: v for k, v in state.items()}


def prior_state(seed: int = PRIOR_SEED) -> dict[str, torch.Tensor]:
    """torchvision's resnet18 .pth (a bare state dict, fc included)."""
    g = torch.Generator().manual_seed(seed + 1)
    return random_state(resnet18_shapes(3), seed) | {"fc.weight": torch.randn(1000, 512, generator=g) * 0.01,
                                                     "fc.bias": torch.zeros(1000)}


def save_authors(path, state: dict, name: str = "best.pth") -> None:
    """Saved the way their train.py saves checkpoints: {'model', 'optimizer', 'epoch', numpy scalars}."""
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
                "epoch": 20, "best_cIoU": np.float64(0.39), "best_Auc": np.float64(0.4)}, path)


def lvs_shapes() -> dict[str, tuple]:
    """One trunk of LVS's AVENet as its base_models.ResNet holds it: torchvision's resnet18 keys
    plus its two other stems (conv1_a: 1 channel, conv1_flow: 6) and its unused ImageNet fc
    (layer4's stride is 1 there, which no key's shape shows)."""
    return resnet18_shapes(3) | {"conv1_a.weight": (64, 1, 7, 7), "conv1_flow.weight": (64, 6, 7, 7),
                                 "fc.weight": (1000, 512), "fc.bias": (1000,)}


def lvs_state(prefix: str = "", seed: int = 0) -> dict[str, torch.Tensor]:
    """LVS's (and SSL-Align's) AVENet.state_dict(): imgnet and audnet, each a whole ResNet."""
    shapes = {f"{side}.{k}": s for side in ("imgnet", "audnet") for k, s in lvs_shapes().items()}
    return {prefix + k: v for k, v in random_state(shapes, seed).items()}


def save_lvs(path, state: dict) -> None:
    """Saved the way LVS's training saved its released checkpoint (its test.py reads
    checkpoint['model_state_dict']): with the optimizer's state and the epoch beside it."""
    torch.save({"model_state_dict": state, "optimizer_state_dict": {"state": {}, "param_groups": [
        {"lr": 1e-4, "params": [0, 1]}]}, "epoch": 80}, path)


DAMAGE_WORDS = {"drop": "missing", "shape": "shape", "extra": "unexpected", "nan": "NaN"}  # what import says


def damage(state: dict[str, torch.Tensor], key: str, change: str) -> None:
    """Break one key of an authors' state dict the way a bad checkpoint is broken: ``drop`` it,
    give it the wrong ``shape``, add it as an ``extra`` key, or put a ``nan`` in it."""
    if change == "drop":
        del state[key]
    elif change == "shape":
        state[key] = torch.zeros(7, *state[key].shape[1:])
    elif change == "extra":
        state[key] = torch.zeros(3, 3)
    else:
        state[key] = state[key].clone()
        state[key].view(-1)[0] = float("nan")
