"""The step on a Triton Inference Server (`soundloc stream ... --triton HOST:PORT`): the edge box
decodes, computes the mel, averages the window, gates and draws; the server runs the model.

A stream is one Triton sequence (``sequence_id``): START on its first step, END on a last
padding step when the stream (or a reconnect's connection) ends. The step graph's state lives on
the server (implicit state of the repository that `soundloc export --format triton` writes), so a
request carries only ``frame``, ``mel`` and ``valid``. Uses the official ``tritonclient`` (gRPC);
every failure (unreachable server, no such model, a sequence the server timed out) is a one-line
``BackendError``, and the stream's local outputs are finalised as on any other error.
"""

from __future__ import annotations

import itertools
import os

import numpy as np

from ..families import family_of
from .backend import BackendError
from .bundle import Bundle
from ..labels import LOGIT_PREFIX
from .engine import StepModel, StepOutput

MODEL_NAME = "soundloc_step"  # the ONNX Runtime model: what --triton HOST:PORT addresses
# Every model `soundloc export --format triton` may write, by the Triton backend that runs it
# (soundloc.deploy.triton names its folders from this table).
MODELS = {"onnxruntime": MODEL_NAME, "tensorrt": MODEL_NAME + "_trt", "python": MODEL_NAME + "_py"}

_IDS = itertools.count(1)


def _grpc():
    try:
        import tritonclient.grpc as grpcclient
    except ImportError:
        raise BackendError("--triton needs the Triton client: pip install 'soundloc[triton]'") from None
    return grpcclient


def _message(e: BaseException) -> str:
    text = (e.message() if hasattr(e, "message") and callable(e.message) else str(e)) or type(e).__name__
    return " ".join(str(text).split())


class TritonModel(StepModel):
    """``StepModel`` whose step runs on a Triton server, one sequence per stream state.

    ``url``: HOST:PORT of Triton's gRPC endpoint; ``model``: the step model's name there.
    ``timeout_s``: the most one request (or the connection check) may take.
    """

    def __init__(self, bundle: Bundle, url: str, model: str = MODEL_NAME, timeout_s: float = 10.0) -> None:
        gate = bundle.manifest.get("gate", {}).get("score")
        super().__init__(None, bundle.config, bundle.lookahead_steps, [], gate, bundle)
        self.grpc = _grpc()
        self.url, self.model, self.timeout_s = url, model, timeout_s
        self.sequence: int | None = None
        self.started = False
        try:
            self.client = self.grpc.InferenceServerClient(url)
            live = self.client.is_server_live(client_timeout=timeout_s)
            ready = live and self.client.is_model_ready(model, client_timeout=timeout_s)
        except Exception as e:  # tritonclient raises its own exception and grpc's
            raise BackendError(f"cannot reach Triton at {url}: {_message(e)}") from None
        if not ready:
            raise BackendError(f"Triton at {url} has no ready model {model!r}: load the repository "
                               "written by `soundloc export --format triton`")

    @property
    def name(self) -> str:
        return f"triton ({self.url}, {self.model})"

    def new_state(self, batch: int = 1) -> list[np.ndarray]:
        """A new stream: the previous sequence (a reconnect's) is ended, a new id taken."""
        if batch != 1:
            raise ValueError("a Triton sequence carries one stream; batching is the server's")
        self._end()
        self.sequence = (os.getpid() << 20) + next(_IDS)  # unique among this server's clients' streams
        return []

    def step(self, frames: np.ndarray, audio: np.ndarray, valid: np.ndarray,
             state: list[np.ndarray], end: bool = False) -> tuple[StepOutput, list[np.ndarray]]:
        if self.sequence is None:
            self.new_state(1)
        inputs = []
        for name, value in self.feed(frames, audio, valid, []).items():
            tensor = self.grpc.InferInput(name, list(value.shape), "FP32")
            tensor.set_data_from_numpy(np.ascontiguousarray(value, np.float32))
            inputs.append(tensor)
        try:
            r = self.client.infer(self.model, inputs, sequence_id=self.sequence, sequence_start=not self.started,
                                  sequence_end=end, client_timeout=self.timeout_s)
        except Exception as e:
            raise BackendError(f"Triton at {self.url}, sequence {self.sequence}: {_message(e)}") from None
        self.started = True
        b = frames.shape[0]
        heads = [t["name"] for t in self.bundle.graph("step")["outputs"] if t["name"].startswith(LOGIT_PREFIX)] \
            if self.bundle is not None else []
        out = StepOutput(alpha=r.as_numpy("alpha"), score=r.as_numpy("score").reshape(b), zv=r.as_numpy("zv"),
                         za=r.as_numpy("za"), valid=r.as_numpy("valid_out").reshape(b) > 0.5,
                         logits={n[len(LOGIT_PREFIX):]: v.reshape(b, -1) for n in heads
                                 if (v := r.as_numpy(n)) is not None})
        return out, []

    def _end(self) -> None:
        """Send END with a padding step (valid 0: describes nothing) so the server frees the slot."""
        if not self.started:
            return
        frames, audio = family_of(self.config).blank_step(self.config)  # the family's shapes (mel or spectrogram)
        try:
            self.step(frames, audio, np.zeros(1, np.float32), [], end=True)
        except BackendError:
            pass  # the server already dropped it (idle timeout): nothing left to free
        finally:
            self.started = False

    def close(self) -> None:
        self._end()
        self.client.close()
