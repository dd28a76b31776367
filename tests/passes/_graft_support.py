"""Shared by the graft, widen and head-swap tests: load a bundled model, apply one pass spec the
way `graphsurg apply` does (IR verify + onnx full checker), and run models with onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from graphsurg.passes.graft import Graft
from graphsurg.passes.head_swap import HeadSwap
from graphsurg.passes.widen import Widen

from graphsurg import serde
from graphsurg.ir import Model
from graphsurg.pipeline import Pass, PassResult, parse_spec, run_passes

MODELS = Path(__file__).resolve().parents[2] / "models"
BUNDLED = ["digits_mlp", "digits_cnn", "digits_vit"]
TOLERANCE = 1e-5  # the bound on |output - original output|


def load(name: str) -> Model:
    return serde.load(MODELS / f"{name}.onnx")


def digits_inputs() -> np.ndarray:
    """The whole bundled test split (360 digits), so every position is checked on real data."""
    with np.load(MODELS / "digits_test.npz") as data:
        return data["input"]


def run(model: Model, x: np.ndarray, extra_outputs: tuple[str, ...] = ()) -> list[np.ndarray]:
    proto = serde.to_proto(model)
    for name in extra_outputs:  # expose intermediate float tensors
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the machine is shared; these models are tiny
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def make(spec: str) -> Pass:
    """Builds one of these three passes from its spec without importing every pass module
    (the CLI tests cover registration); parameters are parsed exactly as the registry does."""
    parsed = parse_spec(spec)
    return {"graft": Graft, "widen": Widen, "head-swap": HeadSwap}[parsed.name].from_raw(dict(parsed.params))


def apply(model: Model, spec: str) -> PassResult:
    return run_passes(model, [make(spec)]).results[0]


def max_diff(before: np.ndarray, after: np.ndarray) -> float:
    assert before.shape == after.shape
    return float(np.abs(before.astype(np.float64) - after).max())
