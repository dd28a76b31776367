"""onnxruntime sessions for the evaluator: providers, threads, batched runs, exposed intermediates.

The only module (with the rest of graphsurg/eval) that imports onnxruntime. A session is built
from the exported bytes of the IR (`serde.to_bytes`) or straight from a model file; models whose
weights exceed what one protobuf holds go through a temporary file with external data.
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from graphsurg.errors import BadInputError, UsageError
from graphsurg.eval.data import Batch, Dataset, InputSpec, Signature
from graphsurg.eval.progress import Progress
from graphsurg.ir import Model, all_graphs

log = logging.getLogger(__name__)

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
_INLINE_LIMIT = 1_500_000_000  # above this many weight bytes, hand onnxruntime a file, not bytes
_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
    "tensor(int8)": "int8", "tensor(int16)": "int16", "tensor(int32)": "int32", "tensor(int64)": "int64",
    "tensor(uint8)": "uint8", "tensor(uint16)": "uint16", "tensor(uint32)": "uint32", "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}


@dataclass(frozen=True)
class ProviderChoice:
    """The onnxruntime providers to ask for, the short name, and a note when `auto` fell back."""

    requested: str
    name: str
    providers: tuple[str, ...]
    note: str | None = None


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def choose_provider(requested: str, available: Sequence[str] | None = None) -> ProviderChoice:
    """`cpu`, `cuda` (an error when this onnxruntime has no CUDA provider) or `auto` (CUDA, else CPU)."""
    available = list(available if available is not None else available_providers())
    requested = (requested or "cpu").lower()
    if requested not in ("cpu", "cuda", "auto"):
        raise UsageError(f"--provider {requested!r}: choose cpu, cuda or auto")
    has_cuda = PROVIDERS["cuda"] in available
    if requested == "cuda" and not has_cuda:
        raise BadInputError(f"--provider cuda: this onnxruntime {ort.__version__} has no CUDA provider "
                            f"(available: {', '.join(available)}); install onnxruntime-gpu "
                            "(pip install 'graphsurg[gpu]') or use --provider cpu")
    if requested == "cpu" or (requested == "auto" and not has_cuda):
        note = None if requested == "cpu" else (
            f"provider auto: CUDA is not available (onnxruntime {ort.__version__} offers "
            f"{', '.join(available)}); using CPU")
        return ProviderChoice(requested, "cpu", (PROVIDERS["cpu"],), note)
    return ProviderChoice(requested, "cuda", (PROVIDERS["cuda"], PROVIDERS["cpu"]))


def intermediate_names(model: Model) -> list[str]:
    """Every op output of the main graph that is not already a graph output, in topological order."""
    graph = model.graph
    outputs = {v.name for v in graph.outputs}
    return [v.name for op in graph.topological_order() for v in op.outputs
            if v is not None and v.name not in outputs]


def model_bytes(model: Model, extra_outputs: Sequence[str] = ()) -> bytes:
    """The model serialized for onnxruntime, with `extra_outputs` (intermediate values) appended as
    graph outputs. The IR is restored before returning, so the caller's model is unchanged."""
    from graphsurg import serde

    graph = model.graph
    original = list(graph.outputs)
    try:
        graph.outputs = original + [graph.value(name) for name in extra_outputs]
        return serde.to_bytes(model)
    finally:
        graph.outputs = original


def _weight_bytes(model: Model) -> int:
    return sum(v.const.nbytes for g in all_graphs(model.graph) for v in g.initializers.values())


class Runner:
    """One onnxruntime session over a model, with its signature and the provider actually used.

    `expose=True` adds every intermediate tensor of the main graph as an output (for per-layer
    comparison); a list exposes just those names. Outputs come back as {name: array}.
    """

    def __init__(self, model: Model | str | os.PathLike, provider: str = "cpu", threads: int | None = None,
                 expose: bool | Sequence[str] = False):
        self.choice = choose_provider(provider)
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.serialized_size: int | None = None
        self.label = str(model) if not isinstance(model, Model) else "<model>"
        if expose and not isinstance(model, Model):
            from graphsurg import serde

            model = serde.load(model)
        self.model: Model | None = model if isinstance(model, Model) else None
        self.exposed: list[str] = [] if not expose else (
            intermediate_names(model) if expose is True else list(expose))
        self.session = self._session(model, threads)
        self.note = self.choice.note
        self.provider = self._actual_provider()
        outputs = [o.name for o in self.session.get_outputs()]
        exposed = set(self.exposed)
        self.output_names = [name for name in outputs if name not in exposed]
        self.signature = Signature(tuple(_spec(i) for i in self.session.get_inputs()), tuple(self.output_names))
        self._all_outputs = outputs

    def _session(self, model: Model | str | os.PathLike, threads: int | None) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.log_severity_level = 4  # load errors come back as exceptions (one line); warnings are noise
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        source = self._source(model)
        try:
            return ort.InferenceSession(source, sess_options=options, providers=list(self.choice.providers))
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own pybind error types
            raise BadInputError(f"onnxruntime cannot load {self.label}: {_first_line(exc)}") from None

    def _source(self, model: Model | str | os.PathLike) -> bytes | str:
        if not isinstance(model, Model):
            if not Path(model).is_file():
                raise BadInputError(f"{model}: no such file")
            return str(model)
        if _weight_bytes(model) <= _INLINE_LIMIT:
            data = model_bytes(model, self.exposed)
            if not self.exposed:
                self.serialized_size = len(data)  # the model's inline size, for size_bytes
            return data
        return self._via_file(model)

    def _via_file(self, model: Model) -> str:
        """Large weights: a temporary model file with external data (kept until the runner goes)."""
        from graphsurg import serde

        self._tmp = tempfile.TemporaryDirectory(prefix="graphsurg-eval-")
        path = Path(self._tmp.name) / "model.onnx"
        graph = model.graph
        original = list(graph.outputs)
        try:
            graph.outputs = original + [graph.value(name) for name in self.exposed]
            serde.save(model, path, external_data=True)
        finally:
            graph.outputs = original
        return str(path)

    def _actual_provider(self) -> str:
        """The provider the session really runs on; CUDA that did not start is an error or a fallback."""
        if self.choice.name == "cuda" and PROVIDERS["cuda"] not in self.session.get_providers():
            if self.choice.requested == "cuda":
                raise BadInputError("--provider cuda: onnxruntime has a CUDA provider but could not start it "
                                    "(no GPU or CUDA libraries); use --provider cpu or auto")
            self.note = "provider auto: onnxruntime has CUDA but could not start it (no GPU?); using CPU"
            return "cpu"
        if self.choice.requested == "auto" and self.choice.name == "cuda":
            self.note = "provider auto: using CUDA"
        return self.choice.name

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One session run; returns every output (exposed intermediates included) by name."""
        try:
            values = self.session.run(None, inputs)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own pybind error types
            raise BadInputError(f"onnxruntime failed to run {self.label}: {_first_line(exc)}") from None
        return dict(zip(self._all_outputs, values, strict=True))

    def iterate(self, data: Dataset, batch_size: int, progress: bool = False,
                label: str = "eval") -> Iterator[tuple[Batch, dict[str, np.ndarray]]]:
        """Runs every batch of `data`; yields (batch, outputs)."""
        with Progress(data.num_batches(batch_size), label, enabled=progress) as bar:
            for batch in data.batches(batch_size):
                yield batch, self.run(batch.inputs)
                bar.advance()

    def latency(self, inputs: dict[str, np.ndarray], runs: int = 20, warmup: int = 3) -> dict[str, float | int]:
        """Milliseconds per run on one batch: median and 90th percentile over `runs`, warm-up excluded."""
        for _ in range(warmup):
            self.session.run(None, inputs)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self.session.run(None, inputs)
            times.append((time.perf_counter() - start) * 1000.0)
        batch = next(iter(inputs.values())).shape[0] if inputs and next(iter(inputs.values())).ndim else 1
        return {"median": statistics.median(times), "p90": float(np.percentile(times, 90)), "batch": int(batch),
                "runs": runs, "warmup": warmup}


def _spec(node) -> InputSpec:
    name = _ORT_TYPES.get(node.type)
    shape = None if node.shape is None else tuple(d if isinstance(d, int | str) else None for d in node.shape)
    return InputSpec(node.name, np.dtype(name) if name else None, shape)


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:400] or type(exc).__name__
