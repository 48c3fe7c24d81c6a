"""Each model family's PyTorch parts (``soundloc.families`` holds what the runtime needs of a
family; this is the training and export side of the same line-up, imported only where torch is)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..config import Config
from ..families import FAMILIES, family_of
from . import classifier, ezvsl, lvs
from .streaming import StreamingModel


@dataclass(frozen=True)
class ModelParts:
    """``model``: built from a Config (its checkpoint's weights load into it); ``step``: the
    streaming step module around a model (what the step graph and the torch backend run);
    ``networks``: the networks ``soundloc info`` counts, each with zero inputs for some steps."""

    model: Callable[[Config], nn.Module]
    step: Callable[[nn.Module], nn.Module]
    networks: Callable[..., dict[str, tuple[nn.Module, tuple, int]]]


PARTS: dict[str, ModelParts] = {
    "classifier": ModelParts(classifier.AVClassifier, StreamingModel, classifier.networks),
    "ezvsl": ModelParts(ezvsl.EZVSL, ezvsl.EZVSLStep, ezvsl.networks),
    "fnac": ModelParts(ezvsl.EZVSL, ezvsl.EZVSLStep, ezvsl.networks),  # EZ-VSL's networks, its own maps' rule
    "slavc": ModelParts(ezvsl.SLAVC, ezvsl.EZVSLStep, ezvsl.networks),
    "lvs": ModelParts(lvs.LVS, ezvsl.EZVSLStep, ezvsl.networks),
    "sslalign": ModelParts(lvs.LVS, ezvsl.EZVSLStep, ezvsl.networks),  # LVS's network, its own inputs
}
assert set(PARTS) == set(FAMILIES), "every family has its PyTorch parts"


def model_parts(config: Config | dict) -> ModelParts:
    """The PyTorch parts of a config's family (unknown families refused by ``family_of``)."""
    return PARTS[family_of(config).name]
