"""Where torch stops, as the README's package picture draws it, and the stream's typed end reason."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import soundloc
from soundloc.runtime.run import End

# The torch side of the package is whole folders (README "Package layout"); every other folder and
# every top-level module is the deployable side and imports without torch.
TORCH_FOLDERS = ("model", "train", "export")
# Layers, bottom first: a module imports its own layer or one below, never one above. "" is the
# top-level modules (config, fileio, families, mel, media, ...), one layer with data/.
LAYERS = (("", "data"), ("model",), ("runtime",), ("deploy",), ("train", "export"), ("bench",), ("cli",))
# Runs inside Triton's Python backend (which provides triton_python_backend_utils), never imported here.
SERVER_SIDE = ("soundloc.deploy.triton_python_model",)
ROOT = Path(soundloc.__file__).parent


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(soundloc.__path__, "soundloc.")
                  if m.name != "soundloc.__main__" and m.name not in SERVER_SIDE)


def _folder(module: str) -> str:
    """The folder a module lives in ("" for a top-level module)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (ROOT / parts[1]).is_dir()) else ""


def deployable_modules() -> list[str]:
    """Every module outside the torch folders (the layout test imports each without torch)."""
    return [m for m in _modules() if _folder(m) not in TORCH_FOLDERS]


def torch_imports(root: Path) -> list[str]:
    """Deployable modules under ``root`` (a copy of the package) that import torch when imported."""
    light = deployable_modules()
    script = ("import importlib, sys\n"
              f"bad = []\n"
              f"for m in {light!r}:\n"
              "    importlib.import_module(m)\n"
              "    if 'torch' in sys.modules:\n"
              "        bad.append(m); break\n"
              "print(','.join(bad))\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       cwd=root.parent, env={"PYTHONPATH": str(root.parent), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr.strip().splitlines()[-1]
    return [m for m in r.stdout.strip().split(",") if m]


def import_edges(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the soundloc modules it imports (at the top or inside a function)."""
    files = {".".join(("soundloc", *p.relative_to(root).with_suffix("").parts)).removesuffix(".__init__"): p
             for p in root.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                names = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in files] or [target]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in files:
                    name = name.rpartition(".")[0]
                if name.startswith("soundloc") and name != mod:
                    edges.setdefault(mod, set()).add(name)
    return edges


def _layer(module: str) -> int:
    return next(i for i, folders in enumerate(LAYERS) if _folder(module) in folders)


def test_every_deployable_module_imports_without_torch() -> None:
    light = deployable_modules()
    assert {"soundloc.data.annotations", "soundloc.runtime.run", "soundloc.deploy.tensorrt"} <= set(light)
    assert len(light) > 40
    assert torch_imports(ROOT) == []


def test_every_folder_has_a_layer_and_the_torch_side_is_whole_folders() -> None:
    folders = {_folder(m) for m in _modules()}
    assert folders == {f for layer in LAYERS for f in layer}
    assert all(any(_folder(m) == f for m in _modules()) for f in TORCH_FOLDERS)


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [f"{a} -> {b}" for a, bs in import_edges().items() if a != "soundloc.__main__"
              for b in bs if _layer(b) > _layer(a)]
    assert upward == []


def test_no_import_circle_between_modules() -> None:
    edges = import_edges()
    done: set[str] = set()
    circles = []

    def visit(mod: str, path: list[str]) -> None:
        if mod in path:
            circles.append(path[path.index(mod):] + [mod])
            return
        if mod in done:
            return
        for nxt in sorted(edges.get(mod, ())):
            visit(nxt, path + [mod])
        done.add(mod)

    for mod in sorted(edges):
        visit(mod, [])
    assert circles == []


def test_no_module_resolves_code_from_strings() -> None:
    """Dependencies are imports the circle and layer tests can see: no string registry."""
    hidden = [f"{p.relative_to(ROOT)}:{n.lineno}" for p in ROOT.rglob("*.py")
              for n in ast.walk(ast.parse(p.read_text()))
              if isinstance(n, ast.Call) and ast.unparse(n.func) in ("importlib.import_module", "__import__", "import_module")]
    assert hidden == []


def test_every_family_has_its_model_and_export_parts() -> None:
    from soundloc.export.families import PARTS as EXPORT_PARTS
    from soundloc.families import FAMILIES
    from soundloc.model.families import PARTS as MODEL_PARTS

    assert set(FAMILIES) == set(MODEL_PARTS) == set(EXPORT_PARTS) == {"classifier", "ezvsl", "fnac", "slavc", "lvs", "sslalign"}
    assert MODEL_PARTS["ezvsl"].model.__name__ == "EZVSL" and EXPORT_PARTS["classifier"].graphs.__module__ == "soundloc.export.graphs"


@pytest.mark.parametrize("end, live, again", [
    (End.STALLED, False, True), (End.OPEN_FAILED, False, True),  # a file that stalled or would not open
    (End.INPUT_END, True, True), (End.INPUT_FAILED, True, True),  # a camera or stream that hung up
    (End.INPUT_END, False, False), (End.INPUT_FAILED, False, False),  # a file: reopening would repeat it
    (End.SIGNAL, True, False), (End.TIME_LIMIT, True, False),  # the user's decision, never undone
])
def test_the_reconnect_decision_reads_the_end_as_a_value(end: End, live: bool, again: bool) -> None:
    assert end.worth_reconnecting(live) is again


def test_every_error_class_of_the_package_derives_from_the_one_base() -> None:
    """The CLI recognises the package's errors by class (SoundlocError: one line, exit 1;
    UsageError: exit 2), so every exception class defined here must derive from the base."""
    from soundloc.errors import SoundlocError

    script = ("import importlib, inspect, json\n"
              f"mods = {deployable_modules()!r} + {[m for m in _modules() if _folder(m) in TORCH_FOLDERS]!r}\n"
              "found = {}\n"
              "for m in mods:\n"
              "    mod = importlib.import_module(m)\n"
              "    for name, obj in vars(mod).items():\n"
              "        if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == m:\n"
              "            found[f'{m}.{name}'] = [c.__module__ + '.' + c.__name__ for c in obj.__mro__]\n"
              "print(json.dumps(found))\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr.strip().splitlines()[-1]
    found = json.loads(r.stdout)
    assert len(found) >= 17
    base = f"{SoundlocError.__module__}.{SoundlocError.__name__}"
    assert [name for name, mro in found.items() if base not in mro and name != base] == []
