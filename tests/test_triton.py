"""Triton (issue 15): the model repository `soundloc export --format triton` writes, parsed against
Triton's own config schema (tritonclient's model_config_pb2), and the `--triton` client.

No Triton server runs here: the client is tested over real gRPC against a stand-in server in this
file that speaks Triton's protocol (tritonclient's own service definition: ServerLive,
ModelReady, ModelInfer with sequence_id / sequence_start / sequence_end) and keeps each
sequence's state as Triton's implicit state does, running the real step graph in onnxruntime.
It shows the client's requests and sequence handling are right; it is not Triton's batcher.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import types
from concurrent import futures
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime (the cpu extra) not installed")
pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] (the triton extra) not installed")

import grpc  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc  # noqa: E402

from soundloc.deploy.triton import model_config, write_repository  # noqa: E402
from soundloc.runtime.backend_spec import load_step_model  # noqa: E402
from soundloc.runtime.triton_client import MODEL_NAME, MODELS  # noqa: E402
from soundloc.errors import UsageError  # noqa: E402
from soundloc.runtime.backend import BackendError  # noqa: E402
from soundloc.runtime.engine import StepModel  # noqa: E402
from soundloc.runtime.run import run_stream  # noqa: E402
from soundloc.runtime.sources import StepSource  # noqa: E402
from soundloc.runtime.stream import StreamOptions, localize_stream  # noqa: E402
from soundloc.runtime.triton_client import TritonModel  # noqa: E402
from test_bad_inputs import assert_one_line_error, run_cli  # noqa: E402
from test_serve import clips, events, frames_in  # noqa: E402,F401  (clips: a fixture)

OPTIONS = StreamOptions(gate_db=-30.0)


def parse(text: str):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt", "python"])
def test_config_parses_against_tritons_schema(tiny, backend):
    config = parse(model_config(tiny.bundle, backend, max_batch=8, python_path="/opt/venv/site-packages"))
    specs = tiny.bundle.state_specs
    assert config.max_batch_size == 8
    assert [i.name for i in config.input] == ["frame", "mel", "valid"]  # the state is not sent
    assert list(config.input[0].dims) == [3, 1, tiny.bundle.config.image_size, tiny.bundle.config.image_size]
    assert {o.name for o in config.output} == {"alpha", "score", "zv", "za", "valid_out", "logits_vision", "logits_audio", "logits_av"}
    seq = config.sequence_batching
    assert seq.WhichOneof("strategy_choice") == "oldest" and seq.oldest.max_candidate_sequences == 32
    if backend == "python":  # the model keeps the state itself, per correlation id
        kinds = [(c.name, model_config_pb2.ModelSequenceBatching.Control.Kind.Name(c.control[0].kind))
                 for c in seq.control_input]
        assert kinds == [("START", "CONTROL_SEQUENCE_START"), ("END", "CONTROL_SEQUENCE_END"),
                         ("CORRID", "CONTROL_SEQUENCE_CORRID")] and not seq.state
        assert config.backend == "python" and config.parameters["python_path"].string_value == "/opt/venv/site-packages"
        return
    assert [(s.input_name, s.output_name, list(s.dims)) for s in seq.state] == \
        [(s["input"], s["output"], list(s["shape"])) for s in specs]
    assert all(s.initial_state[0].zero_data and list(s.initial_state[0].dims) == list(s.dims) for s in seq.state)
    assert not seq.control_input and "python_path" not in config.parameters
    if backend == "tensorrt":
        assert config.platform == "tensorrt_plan" and config.name == MODEL_NAME + "_trt"
    else:
        assert config.backend == "onnxruntime" and config.name == MODEL_NAME


def test_repository_holds_the_step_graph_and_its_config(tiny, tmp_path):
    """What `soundloc export --format triton` adds to the export (export_checkpoint calls this)."""
    written = write_repository(tiny.bundle, tmp_path / "triton", max_batch=4)
    model = tmp_path / "triton" / MODEL_NAME
    assert written == [model]  # no engine in this export: no TensorRT model
    assert (model / "1" / "model.onnx").read_bytes() == tiny.bundle.path("step", "onnx").read_bytes()
    assert parse((model / "config.pbtxt").read_text()).max_batch_size == 4
    py = write_repository(tiny.bundle, tmp_path / "py", python=True)[-1]
    assert py.name == MODEL_NAME + "_py" and json.loads((py / "1" / "state.json").read_text()) == tiny.bundle.state_specs
    assert "class TritonPythonModel" in (py / "1" / "model.py").read_text()


def test_python_backend_model_takes_the_inputs_its_config_declares_and_equals_local_steps(tiny, tmp_path):
    """The Python-backend model (run with a stand-in for Triton's stub module) reads its request
    inputs from the repository's config, keeps state per sequence, and equals the local step."""
    from triton_stub import python_model_vs_local

    assert python_model_vs_local(tiny.bundle, tmp_path / "repo") < 1e-4


# -- the client, against a stand-in server speaking Triton's gRPC protocol ------------------------
class StandIn(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Triton's protocol, one model, per-sequence state as implicit state keeps it (zero at START,
    dropped at END). ``forget_after``: drop a sequence after that many requests, as Triton does
    with a sequence it timed out."""

    def __init__(self, export: Path, model: str = MODEL_NAME, forget_after: int | None = None) -> None:
        self.step = StepModel.from_export(export, backend="onnxruntime-cpu")
        self.model, self.forget_after = model, forget_after
        self.states: dict[int, list[np.ndarray]] = {}
        self.requests: dict[int, int] = {}
        self.served: set[str] = set()  # the model names requests asked for
        self.lock = threading.Lock()

    def ServerLive(self, request, context):  # noqa: N802 - the protocol's names
        return service_pb2.ServerLiveResponse(live=True)

    def ModelReady(self, request, context):  # noqa: N802
        return service_pb2.ModelReadyResponse(ready=request.name == self.model)

    def ModelInfer(self, request, context):  # noqa: N802
        p = request.parameters
        seq, start, end = p["sequence_id"].int64_param, p["sequence_start"].bool_param, p["sequence_end"].bool_param
        with self.lock:
            if start:
                self.states[seq] = self.step.new_state(1)
            if seq not in self.states:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"inference request for sequence {seq} to model '{self.model}' must specify the "
                              "START flag on the first request of the sequence")
            self.requests[seq] = self.requests.get(seq, 0) + 1
            self.served.add(request.model_name)
            arrays = {i.name: np.frombuffer(raw, np.float32).reshape(list(i.shape))
                      for i, raw in zip(request.inputs, request.raw_input_contents)}
            feed = dict(arrays)
            for spec, value in zip(self.step.bundle.state_specs, self.states[seq]):
                feed[spec["input"]] = value
            out = self.step.backend.run(feed)
            self.states[seq] = [out[spec["output"]] for spec in self.step.bundle.state_specs]
            if end or (self.forget_after and self.requests[seq] >= self.forget_after):
                del self.states[seq]
        response = service_pb2.ModelInferResponse(model_name=self.model)
        for name in [n for n in out if not n.startswith("state_out.")]:  # Triton's default: every declared output
            value = np.ascontiguousarray(out[name], np.float32)
            response.outputs.add(name=name, datatype="FP32", shape=list(value.shape))
            response.raw_output_contents.append(value.tobytes())
        return response


@pytest.fixture
def stand_in(tiny, request):
    servicer = StandIn(tiny.export, **getattr(request, "param", {}))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.url = f"127.0.0.1:{port}"
    yield servicer
    server.stop(0)


def test_concurrent_sequences_equal_local_runs_and_end_frees_the_state(tiny, clips, stand_in):
    local = StepModel.from_export(tiny.export, backend="onnxruntime-cpu")
    results: dict[int, list] = {}

    def remote(k: int) -> None:
        model = TritonModel(tiny.bundle, stand_in.url)
        with StepSource(str(clips[k])) as source:
            results[k] = list(localize_stream(source, model, OPTIONS))
        model.close()

    workers = [threading.Thread(target=remote, args=(k,)) for k in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(300)
    assert stand_in.states == {}  # every sequence ended (END), its state freed
    assert len(stand_in.requests) == 3
    for k in range(3):
        with StepSource(str(clips[k])) as source:
            want = list(localize_stream(source, local, OPTIONS))
        assert [r.index for r in results[k]] == [r.index for r in want]
        for a, b in zip(results[k], want):
            assert a.gated == b.gated and a.box == b.box
            if a.heatmap is not None:
                np.testing.assert_allclose(a.heatmap, b.heatmap, atol=1e-5)


@pytest.mark.parametrize("stand_in", [{"model": name} for name in MODELS.values()], indirect=True,
                         ids=list(MODELS.values()))
def test_triton_reaches_each_model_the_export_writes(tiny, clips, stand_in, tmp_path):
    """soundloc_step, soundloc_step_trt and soundloc_step_py (every model `--format triton` may
    write) through `soundloc stream --triton HOST:PORT/MODEL` and the spec triton://HOST:PORT/MODEL;
    the stand-in serves that one name only, so a request to another model would fail."""
    assert {p.name for p in write_repository(tiny.bundle, tmp_path / "repo", python=True)} <= set(MODELS.values())
    ev = tmp_path / "e.jsonl"
    r = run_cli("stream", tiny.export, "--video", clips[0], "--triton", f"{stand_in.url}/{stand_in.model}",
                "--events", ev, "--gate-db", "-30")
    assert r.returncode == 0, r.stderr
    assert stand_in.served == {stand_in.model} and stand_in.states == {} and len(events(ev)) > 0
    model = load_step_model(tiny.export, f"triton://{stand_in.url}/{stand_in.model}")
    try:
        assert model.model == stand_in.model and model.name == f"triton ({stand_in.url}, {stand_in.model})"
    finally:
        model.close()


def test_triton_spec_without_a_model_is_soundloc_step_and_a_bad_one_is_usage(tiny, stand_in):
    model = load_step_model(tiny.bundle, f"triton://{stand_in.url}")  # what --triton HOST:PORT means
    try:
        assert model.model == MODEL_NAME
    finally:
        model.close()
    for bad in ("triton://nohost", "triton://:8001", "triton://host:port/x", "triton://h:1/a/b", "onnx"):
        with pytest.raises(UsageError):
            load_step_model(tiny.bundle, bad)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_one_line_and_writes_nothing(tiny, clips, tmp_path):
    out = tmp_path / "x.mp4"
    r = run_cli("stream", tiny.export, "--video", clips[2], "--triton", f"127.0.0.1:{_free_port()}", "--out", out)
    assert r.returncode == 1
    assert_one_line_error(r, "cannot reach Triton at 127.0.0.1")
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("stand_in", [{"model": "another_model"}], indirect=True)
def test_server_without_the_model_is_one_line(tiny, stand_in):
    with pytest.raises(BackendError, match="no ready model 'soundloc_step'") as e:
        TritonModel(tiny.bundle, stand_in.url)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("stand_in", [{"forget_after": 12}], indirect=True)
def test_sequence_timed_out_by_the_server_is_one_line_with_outputs_finalised(tiny, clips, stand_in, tmp_path):
    out, ev = tmp_path / "o.mp4", tmp_path / "o.jsonl"
    with pytest.raises(BackendError, match="must specify the START flag") as e:
        run_stream(tiny.export, str(clips[0]), out=out, events=ev, options=OPTIONS, status=False, triton=stand_in.url)
    assert "\n" not in str(e.value)
    steps = 12 - tiny.bundle.lookahead_steps  # what the 12 steps served described
    assert len(events(ev)) == steps and frames_in(out) == steps  # finalised, playable
    assert not list(tmp_path.glob("*.partial.*"))


def test_client_modules_never_import_torch():
    script = ("import sys; import soundloc.runtime.triton_client, soundloc.deploy.triton, soundloc.runtime.serve; "
              "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


# -- a real Triton server: the one bundled in PyPI's nvidia-pytriton, Python-backend variant ------
def _pytriton_root() -> Path | None:
    """The unpacked nvidia-pytriton wheel (holding ``pytriton/tritonserver``): $SOUNDLOC_PYTRITON,
    else an installed ``pytriton`` package. CI installs neither."""
    if os.environ.get("SOUNDLOC_PYTRITON"):
        return Path(os.environ["SOUNDLOC_PYTRITON"])
    spec = importlib.util.find_spec("pytriton")
    return Path(spec.origin).parent.parent if spec and spec.origin else None


@pytest.fixture(scope="module")
def triton_server(tiny, tmp_path_factory):
    """tritonserver on 127.0.0.1 (a free gRPC port, no HTTP or metrics) serving the Python-backend
    model; 3 sequence slots, each idle sequence held 60 s (so a slot is only free again by END).
    The stub embeds the system's libpython of this interpreter's version and finds numpy and
    onnxruntime through this venv's ``bin/`` first in PATH (the embedded interpreter reads its
    ``pyvenv.cfg``)."""
    root = _pytriton_root()
    server = root / "pytriton" / "tritonserver" if root else None
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server / "python_backend_stubs" / version / "triton_python_backend_stub" if server else None
    if not (server and (server / "bin" / "tritonserver").exists() and stub.exists()):
        pytest.skip("no Triton server: needs nvidia-pytriton's bundled tritonserver and its Python "
                    f"{version} stub (pip install nvidia-pytriton, or SOUNDLOC_PYTRITON=<unpacked wheel>); "
                    "CI does not install it")
    if not ctypes.util.find_library(f"python{version}"):
        pytest.skip(f"no shared libpython{version} for the bundled Python-backend stub to link")
    tmp = tmp_path_factory.mktemp("tritonserver")
    backend = tmp / "backends" / "python"
    backend.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy(server / "backends" / "python" / name, backend / name)
    shutil.copy(stub, backend / stub.name)
    shutil.copy(server / "bin" / "tritonserver", tmp / "tritonserver")
    for exe in (backend / stub.name, tmp / "tritonserver"):
        exe.chmod(0o755)  # the wheel's unpacked binaries lack their run bits
    write_repository(tiny.bundle, tmp / "repo", max_batch=4, python=True, max_sequences=3, idle_us=60_000_000)
    port = _free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "LD_LIBRARY_PATH": str(root / "nvidia_pytriton.libs")}
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen([tmp / "tritonserver", "--model-repository", tmp / "repo", "--backend-directory",
                             tmp / "backends", "--model-control-mode", "explicit", "--grpc-address", "127.0.0.1",
                             "--grpc-port", str(port), "--allow-http", "false", "--allow-metrics", "false"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        for _ in range(120):
            if proc.poll() is not None:
                pytest.skip(f"the bundled tritonserver did not start here (exit {proc.returncode}; "
                            f"log {tmp / 'server.log'})")
            try:
                if client.is_server_live():
                    break
            except Exception:
                pass  # not listening yet
            time.sleep(0.5)
        else:
            pytest.skip("the bundled tritonserver was not live after 60 s")
        client.load_model(MODEL_NAME + "_py")  # a failure here fails the test: the model must load
        yield types.SimpleNamespace(url=f"127.0.0.1:{port}", log=tmp / "server.log", client=client)
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_real_triton_server_concurrent_sequences_equal_local_runs(tiny, clips, triton_server):
    """Three concurrent sequences on a real Triton (sequence batcher, 3 slots, Python backend);
    the one that ends first (the short clip) frees its slot by END and a fourth sequence takes it:
    with idle sequences held 60 s and a 10 s request timeout it could not be served otherwise."""
    local = StepModel.from_export(tiny.export, backend="onnxruntime-cpu")
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def remote(k: int, clip: Path) -> None:
        try:
            model = TritonModel(tiny.bundle, triton_server.url, model=MODELS["python"])
            with StepSource(str(clip)) as source:
                results[k] = list(localize_stream(source, model, OPTIONS))
            model.close()  # END: the slot is free again
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def short_then_another() -> None:
        remote(2, clips[2])
        remote(3, clips[0])  # a new sequence in the freed slot, its state zero again

    workers = [threading.Thread(target=remote, args=(k, clips[k])) for k in range(2)]
    workers.append(threading.Thread(target=short_then_another))
    for w in workers:
        w.start()
    for w in workers:
        w.join(600)
    assert not errors, errors
    stats = triton_server.client.get_inference_statistics(MODEL_NAME + "_py").model_stats[0]
    assert stats.execution_count < stats.inference_count  # the batcher ran steps of several sequences at once
    for k, clip in enumerate([clips[0], clips[1], clips[2], clips[0]]):
        with StepSource(str(clip)) as source:
            want = list(localize_stream(source, local, OPTIONS))
        got = results[k]
        assert len(want) > 0 and [r.index for r in got] == [r.index for r in want]
        for a, b in zip(got, want):
            assert a.gated == b.gated and a.box == b.box
            assert (a.heatmap is None) == (b.heatmap is None)
            if a.heatmap is not None:
                np.testing.assert_allclose(a.heatmap, b.heatmap, atol=1e-5)
