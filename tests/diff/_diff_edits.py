"""Known edits made with the onnx library directly (not graphsurg), so the diff is tested against an
independent account of what changed."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

MODELS = Path(__file__).resolve().parents[2] / "models"


def load(name: str) -> onnx.ModelProto:
    return onnx.load(MODELS / f"{name}.onnx")


def save(proto: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, path)
    return path


def node(proto: onnx.ModelProto, op_type: str, index: int = 0) -> onnx.NodeProto:
    return [n for n in proto.graph.node if n.op_type == op_type][index]


def remove_node(proto: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """Drops a single-input op and points its consumers at that input."""
    out = copy.deepcopy(proto)
    victim = next(n for n in out.graph.node if n.name == name)
    source, target = victim.input[0], victim.output[0]
    out.graph.node.remove(victim)
    for other in out.graph.node:
        for i, name_ in enumerate(other.input):
            if name_ == target:
                other.input[i] = source
    return out


def scale_weight(proto: onnx.ModelProto, name: str, factor: float, count: int | None = None) -> onnx.ModelProto:
    """Multiplies an initializer (or its first `count` elements) by `factor`."""
    out = copy.deepcopy(proto)
    init = next(t for t in out.graph.initializer if t.name == name)
    array = numpy_helper.to_array(init).copy()
    flat = array.reshape(-1)
    flat[: count if count is not None else flat.size] *= factor
    init.CopyFrom(numpy_helper.from_array(array, name))
    return out


def rename_nodes(proto: onnx.ModelProto, values: bool = False) -> onnx.ModelProto:
    """Renames every node (and with `values`, every intermediate value and initializer), as a
    re-export with another exporter would."""
    out = copy.deepcopy(proto)
    for i, n in enumerate(out.graph.node):
        n.name = f"renamed_node_{i}"
    if not values:
        return out
    stored = {t.name for t in out.graph.initializer}
    interface = {v.name for v in (*out.graph.input, *out.graph.output) if v.name not in stored}
    names = [t.name for t in out.graph.initializer] + [o for n in out.graph.node for o in n.output]
    mapping = {old: f"t{i}" for i, old in enumerate(names) if old and old not in interface}
    for t in out.graph.initializer:
        t.name = mapping[t.name]
    for n in out.graph.node:
        n.input[:] = [mapping.get(x, x) for x in n.input]
        n.output[:] = [mapping.get(x, x) for x in n.output]
    for vi in (*out.graph.value_info, *out.graph.input, *out.graph.output):
        vi.name = mapping.get(vi.name, vi.name)
    return out


def shuffle_nodes(proto: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Same graph, nodes listed in another (still topological) order."""
    out = copy.deepcopy(proto)
    nodes = list(out.graph.node)
    rng = np.random.default_rng(seed)
    produced = {o for n in nodes for o in n.output}
    ready_names = {i.name for i in out.graph.input} | {t.name for t in out.graph.initializer}
    order = []
    pending = nodes[:]
    while pending:
        ready = [n for n in pending if all(x in ready_names or x not in produced or not x for x in n.input)]
        pick = ready[int(rng.integers(len(ready)))]
        order.append(pick)
        pending.remove(pick)
        ready_names.update(pick.output)
    del out.graph.node[:]
    out.graph.node.extend(order)
    return out


def insert_qdq(proto: onnx.ModelProto, value: str, scale: float = 0.05) -> onnx.ModelProto:
    """QuantizeLinear -> DequantizeLinear on an activation, between its producer and consumers."""
    out = copy.deepcopy(proto)
    g = out.graph
    g.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), "qdq_scale"),
                          numpy_helper.from_array(np.array(0, np.int8), "qdq_zero")])
    users = [n for n in g.node if value in n.input]
    q = helper.make_node("QuantizeLinear", [value, "qdq_scale", "qdq_zero"], ["qdq_q"], name="qdq/Quantize")
    dq = helper.make_node("DequantizeLinear", ["qdq_q", "qdq_scale", "qdq_zero"], ["qdq_dq"], name="qdq/Dequantize")
    for n in users:
        n.input[:] = ["qdq_dq" if x == value else x for x in n.input]
    position = min(list(g.node).index(n) for n in users)
    g.node.insert(position, dq)
    g.node.insert(position, q)
    return out


def set_attribute(proto: onnx.ModelProto, name: str, key: str, value) -> onnx.ModelProto:
    out = copy.deepcopy(proto)
    target = next(n for n in out.graph.node if n.name == name)
    kept = [a for a in target.attribute if a.name != key]
    del target.attribute[:]
    target.attribute.extend([*kept, helper.make_attribute(key, value)])
    return out


def add_output(proto: onnx.ModelProto, value: str) -> onnx.ModelProto:
    """Exposes an intermediate value as an extra graph output (typed by onnx shape inference)."""
    out = copy.deepcopy(proto)
    inferred = onnx.shape_inference.infer_shapes(proto)
    info = next(vi for vi in inferred.graph.value_info if vi.name == value)
    out.graph.output.append(info)
    return out


def quantize_weight(proto: onnx.ModelProto, name: str, axis: int = 0) -> onnx.ModelProto:
    """Stores a weight as int8 with a per-channel scale behind a DequantizeLinear (symmetric)."""
    out = copy.deepcopy(proto)
    g = out.graph
    init = next(t for t in g.initializer if t.name == name)
    w = numpy_helper.to_array(init)
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    scale = (np.abs(w).max(axis=reduce) / 127).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    g.initializer.remove(init)
    g.initializer.extend([numpy_helper.from_array(q, f"{name}_q"), numpy_helper.from_array(scale, f"{name}_scale")])
    dq = helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_scale"], [f"{name}_dq"], axis=axis,
                          name=f"{name}/Dequantize")
    users = [n for n in g.node if name in n.input]
    for n in users:
        n.input[:] = [f"{name}_dq" if x == name else x for x in n.input]
    g.node.insert(list(g.node).index(users[0]), dq)
    return out


def replace_gemm_head(proto: onnx.ModelProto, gemm: str, classes: int, seed: int = 0) -> onnx.ModelProto:
    """A new classifier: the final Gemm replaced by a freshly initialised one with a new name and
    `classes` outputs (what a head swap that renames does)."""
    out = copy.deepcopy(proto)
    g = out.graph
    old = next(n for n in g.node if n.name == gemm)
    weight = next(t for t in g.initializer if t.name == old.input[1])
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((classes, weight.dims[1])) * 0.1).astype(np.float32)
    g.initializer.extend([numpy_helper.from_array(w, "new_head.weight"),
                          numpy_helper.from_array(np.zeros(classes, np.float32), "new_head.bias")])
    new = helper.make_node("Gemm", [old.input[0], "new_head.weight", "new_head.bias"], list(old.output),
                           name="new_head/Gemm", transB=1)
    position = list(g.node).index(old)
    g.node.remove(old)
    g.node.insert(position, new)
    for t in [t for t in g.initializer if t.name in old.input[1:]]:
        g.initializer.remove(t)
    out.graph.output[0].type.tensor_type.shape.dim[1].dim_value = classes
    return out


def renumber_nodes(proto: onnx.ModelProto, prefix: str = "node_") -> onnx.ModelProto:
    """Names nodes by their position, as exporters that number nodes do (an insertion shifts every
    later name)."""
    out = copy.deepcopy(proto)
    for i, n in enumerate(out.graph.node):
        n.name = f"{prefix}{i}"
    return out


def add_identity_and_dead_op(proto: onnx.ModelProto, value: str) -> onnx.ModelProto:
    """An Identity between `value` and its readers, and a Sin of `value` that nothing reads."""
    out = copy.deepcopy(proto)
    g = out.graph
    users = [n for n in g.node if value in n.input]
    for n in users:
        n.input[:] = [f"{value}_identity" if x == value else x for x in n.input]
    position = list(g.node).index(users[0])
    g.node.insert(position, helper.make_node("Identity", [value], [f"{value}_identity"], name="extra/Identity"))
    g.node.insert(position, helper.make_node("Sin", [value], [f"{value}_dead"], name="extra/Sin"))
    return out
