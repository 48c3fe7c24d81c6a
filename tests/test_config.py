"""`Config.parse_overrides`: the typed KEY=VALUE overrides of `soundloc train --set` (torch-free)."""

from __future__ import annotations

import pytest

from soundloc.config import Config, ConfigError, preset


def test_overrides_are_typed_like_the_field_they_set() -> None:
    out = Config.parse_overrides(["width=0.5", "layers=1,2,1,1", "causal=true", "clip-seconds=4", "head=tied-fc"])
    assert out == {"width": 0.5, "layers": (1, 2, 1, 1), "causal": True, "clip_seconds": 4.0, "head": "tied-fc"}
    assert isinstance(out["clip_seconds"], float)
    assert preset("small", **out).layers == (1, 2, 1, 1)  # usable as they are
    assert Config.parse_overrides(["causal=0"]) == {"causal": False}


@pytest.mark.parametrize("item, message", [
    ("widht=1", "did you mean width?"),
    ("width", "expected KEY=VALUE"),
    ("class_names=a,b", "expected KEY=VALUE"),  # the class list comes from --classes, not --set
    ("width=wide", "'wide' is not a float"),
    ("causal=maybe", "'maybe' is not a bool"),
    ("layers=1,x,1,1", "is not a tuple"),
])
def test_a_bad_override_is_one_line_naming_it(item: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        Config.parse_overrides([item])
    assert message in str(e.value) and repr(item) in str(e.value) and "\n" not in str(e.value)
