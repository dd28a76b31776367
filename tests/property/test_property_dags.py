"""Property tests: random valid DAGs of elementwise, MatMul and Concat ops (built with
onnx.helper, with dead branches, unused initializers and Identity ops mixed in) survive the
round trip and `cleanup` with `verify()` holding and onnxruntime's outputs unchanged (bit-exact).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from graphsurg import serde
from graphsurg.pipeline import make_pass, run_passes

UNARY = ("Relu", "Neg", "Abs", "Tanh", "Sigmoid")
BINARY = ("Add", "Sub", "Mul", "Max")
COLS = (2, 3, 4)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Builder:
    seed: int
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    shapes: dict = field(default_factory=dict)  # value name -> (rows, cols)
    inputs: list = field(default_factory=list)

    def name(self, base: str) -> str:
        return f"{base}{len(self.shapes) + len(self.initializers)}"

    def value(self, name: str, shape: tuple[int, int]) -> str:
        self.shapes[name] = shape
        return name

    def weight(self, shape: tuple[int, int]) -> str:
        rng = np.random.default_rng(self.seed + len(self.initializers))
        name = self.name("w")
        self.initializers.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
        return name


@st.composite
def dags(draw) -> tuple[onnx.ModelProto, dict]:
    b = Builder(seed=draw(st.integers(0, 2**16)))
    for _ in range(draw(st.integers(1, 3))):
        name = b.value(f"in{len(b.inputs)}", (draw(st.sampled_from((1, 2))), draw(st.sampled_from(COLS))))
        b.inputs.append(name)
    produced = []
    for _ in range(draw(st.integers(1, 14))):
        produced.append(_add_op(draw, b))
    outputs = draw(st.lists(st.sampled_from(produced), min_size=1, max_size=3, unique=True))
    for i, out in enumerate(list(outputs)):
        if draw(st.booleans()):  # an Identity feeding the graph output
            outputs[i] = b.value(b.name("out"), b.shapes[out])
            b.nodes.append(helper.make_node("Identity", [out], [outputs[i]]))
    if draw(st.booleans()):
        b.weight((2, 2))  # an initializer nothing reads
    model = _model(b, outputs)
    rng = np.random.default_rng(b.seed)
    feeds = {name: rng.standard_normal(b.shapes[name]).astype(np.float32) for name in b.inputs}
    return model, feeds


def _add_op(draw, b: Builder) -> str:
    kind = draw(st.sampled_from(("unary", "binary", "matmul", "concat", "identity")))
    pool = list(b.shapes)
    x = draw(st.sampled_from(pool))
    rows, cols = b.shapes[x]
    out = b.name("v")
    if kind == "unary":
        b.nodes.append(helper.make_node(draw(st.sampled_from(UNARY)), [x], [out]))
        return b.value(out, (rows, cols))
    if kind == "identity":
        b.nodes.append(helper.make_node("Identity", [x], [out]))
        return b.value(out, (rows, cols))
    if kind == "matmul":
        new_cols = draw(st.sampled_from(COLS))
        b.nodes.append(helper.make_node("MatMul", [x, b.weight((cols, new_cols))], [out]))
        return b.value(out, (rows, new_cols))
    if kind == "binary":
        y = draw(st.sampled_from([v for v in pool if b.shapes[v] == (rows, cols)]))
        b.nodes.append(helper.make_node(draw(st.sampled_from(BINARY)), [x, y], [out]))
        return b.value(out, (rows, cols))
    axis = draw(st.sampled_from((0, 1)))
    same = [v for v in pool if b.shapes[v][1 - axis] == b.shapes[x][1 - axis]]
    parts = [x, *draw(st.lists(st.sampled_from(same), min_size=1, max_size=2))]
    b.nodes.append(helper.make_node("Concat", parts, [out], axis=axis))
    total = sum(b.shapes[p][axis] for p in parts)
    return b.value(out, (total, cols) if axis == 0 else (rows, total))


def _model(b: Builder, outputs: list[str]) -> onnx.ModelProto:
    info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(b.shapes[n])) for n in b.inputs]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(b.shapes[n])) for n in outputs]
    graph = helper.make_graph(b.nodes, "random_dag", info, outs, b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


@SETTINGS
@given(case=dags())
def test_random_dag_round_trips(case, run_ort, same_outputs):
    model, feeds = case
    data = model.SerializeToString(deterministic=True)
    loaded = serde.load(data)
    loaded.graph.verify()
    saved = serde.to_bytes(loaded)
    assert saved == data
    assert same_outputs(run_ort(saved, feeds), run_ort(data, feeds))


@SETTINGS
@given(case=dags())
def test_random_dag_survives_cleanup(case, run_ort, same_outputs):
    model, feeds = case
    data = model.SerializeToString(deterministic=True)
    loaded = serde.load(data)
    record = run_passes(loaded, [make_pass("cleanup")])  # validates with onnx's checker when modified
    graph = loaded.graph
    graph.verify()
    assert [v.name for v in graph.outputs] == [o.name for o in model.graph.output]
    assert all(any(v is not None and graph.is_used(v) for v in op.outputs) for op in graph.ops), "dead op left"
    assert all(graph.is_used(v) for v in graph.initializers.values()), "unused initializer left"
    identities = [op for op in graph.ops if op.op_type == "Identity"]
    refused = {r["target"] for r in record.results[0].refused}
    assert all(op.label in refused for op in identities)
    cleaned = serde.to_bytes(loaded)
    onnx.checker.check_model(onnx.load_from_string(cleaned), full_check=True)
    assert same_outputs(run_ort(cleaned, feeds), run_ort(data, feeds))
    assert serde.to_bytes(serde.load(cleaned)) == cleaned
