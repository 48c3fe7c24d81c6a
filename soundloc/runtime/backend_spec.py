"""The one door from a backend spec to a loaded step model: stream, serve, bench and doctor all
come through ``load_step_model``.

A spec is one of ``BACKENDS`` (``auto``, ``onnxruntime[-cpu|-cuda|-tensorrt]``, ``tensorrt``,
``torch``) or ``triton://HOST:PORT[/MODEL]``: a Triton server runs the step of the repository
that `soundloc export --format triton` wrote (MODEL: one of ``triton_client.MODELS``' names,
default ``soundloc_step``). ``--triton HOST:PORT[/MODEL]`` is the same spec without the scheme.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from .backend import BACKENDS, check_backend
from .bundle import Bundle, read_bundle
from .engine import StepModel
from .triton_client import MODEL_NAME, TritonModel

TRITON = "triton://"


def triton_spec(address: str) -> str:
    """``--triton HOST:PORT[/MODEL]`` as a spec."""
    return address if address.startswith(TRITON) else TRITON + address


def parse_triton(spec: str) -> tuple[str, str]:
    """``triton://HOST:PORT[/MODEL]`` -> (HOST:PORT, MODEL)."""
    url, _, model = spec.removeprefix(TRITON).partition("/")
    host, _, port = url.rpartition(":")
    if not host or not port.isdigit() or "/" in model:
        raise UsageError(f"a Triton server is triton://HOST:PORT[/MODEL], not {spec!r}")
    return url, model or MODEL_NAME


def check_spec(spec: str) -> str:
    """``spec`` if it names a backend or a Triton server, else a one-line usage error."""
    if spec.startswith(TRITON):
        parse_triton(spec)
        return spec
    if spec not in BACKENDS:
        raise UsageError(f"backend must be one of {', '.join(BACKENDS)} or triton://HOST:PORT[/MODEL], "
                         f"not {spec!r}")
    return spec


def load_step_model(target: str | Path | Bundle, spec: str = "auto", threads: int | None = None,
                    device: int = 0) -> StepModel:
    """The step model ``spec`` names for ``target``: an export directory (or its ``Bundle``), or a
    ``.pt`` checkpoint (``auto``/``torch`` only). ``threads``: CPU threads of a local backend;
    ``device``: the CUDA device of a GPU backend."""
    if check_spec(spec).startswith(TRITON):
        url, model = parse_triton(spec)
        return TritonModel(target if isinstance(target, Bundle) else read_bundle(target), url, model=model)
    if not isinstance(target, Bundle) and Path(target).is_file():
        if spec not in ("auto", "torch"):
            raise UsageError(f"{target} is a checkpoint: it runs on the torch backend only; "
                             "export it (`soundloc export`) for onnxruntime or TensorRT")
        from .torch_backend import TorchBackend

        tb = TorchBackend(target, threads=threads)
        return StepModel(tb, tb.config, tb.lookahead, tb.state_specs, tb.gate_score, label_heads=tb.label_heads)
    if check_backend(spec) == "torch":
        raise UsageError("--backend torch needs a checkpoint (.pt), not an export directory")
    return StepModel.from_export(target, spec, threads, device)
