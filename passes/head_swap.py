"""head-swap: replace a classifier's output layer with a fresh one for a new number of classes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from graphsurg.passes._graft_layers import (
    NUMERIC_FLOATS,
    Layer,
    bias_of,
    find_layer_op,
    is_default,
    layer_of,
    replace_const,
    set_dim,
)
from graphsurg.passes._util import read_in_subgraph

from graphsurg import serde
from graphsurg.errors import UsageError
from graphsurg.ir import Graph, Model, Op, Value
from graphsurg.pipeline import Pass, PassContext, PassResult

# Parameter-free ops a head may reach an output through, each keeping one class per position.
_ELEMENTWISE = {"Softmax", "LogSoftmax", "Sigmoid", "Identity", "Dropout", "Cast", "Relu"}
_POOLS = {"GlobalAveragePool", "GlobalMaxPool"}
_RESHAPES = {"Flatten", "Squeeze", "Reshape"}
_NORMALIZERS = {"Softmax", "LogSoftmax"}


@dataclass(frozen=True)
class HeadSwapParams:
    classes: int = 0  # the new number of outputs (required)
    head: str = "auto"  # auto, or the node (or its output's name) to replace
    init: Literal["xavier", "zeros"] = "xavier"
    seed: int = 0
    keep_softmax: bool = True  # false: drop Softmax/LogSoftmax after the head, the output gives logits

    def __post_init__(self) -> None:
        if self.classes < 1:
            raise ValueError("classes=N is required (a positive number of outputs)")


@dataclass
class _Head:
    layer: Layer
    bias_add: Op | None  # MatMul heads: the Add of a constant bias right after
    path: dict[Value, int] = field(default_factory=dict)  # head output .. graph outputs: class axis from the right
    outputs: list[Value] = field(default_factory=list)
    reshape_fixes: list[Op] = field(default_factory=list)  # Reshapes whose target shape pins the class count

    @property
    def classes(self) -> int:
        return self.layer.units


class HeadSwap(Pass):
    """Replaces the classifier head with a fresh layer of `classes` outputs.

    The head is the last parametric layer feeding graph outputs through parameter-free ops; the
    outputs' shapes are updated.

    Handles: Gemm (either weight layout), MatMul with a constant weight and an optional constant
    bias Add after it, and Conv heads (e.g. a 1x1 classifier Conv before global pooling), reaching
    outputs through Softmax, LogSoftmax, Sigmoid, Relu, Identity, Dropout, Cast, global pooling,
    Flatten, Squeeze and Reshape (a Reshape whose constant target pins the old class count is
    rewritten). Several outputs fed by the same head (logits and probabilities) all change. New
    weights are Xavier-uniform (seeded) or zeros; biases start at zero; a head without a bias
    gets none. The new tensors are listed in `new_parameters` (and `touched`), so recovery can
    train only them (`--train head`). `keep_softmax=false` also removes Softmax/LogSoftmax on the
    way to the outputs (the output keeps its name), leaving logits.
    Refuses with a UsageError (nothing to guess): no head found, several candidate heads and no
    `head=`, a named node that is not a head (with the reason), a head whose output also feeds
    something other than the path to the outputs, or a Flatten/Reshape that would mix classes
    with other axes. A Softmax that cannot be removed (its input is itself a graph output) is
    kept and recorded as refused. Main graph only.
    """

    name = "head-swap"
    Params = HeadSwapParams

    def run(self, model: Model, ctx: PassContext, result: PassResult) -> None:
        graph = model.graph
        serde.infer_shapes(model)  # class axis positions along the path
        head = self._choose(graph)
        old = head.classes
        parameters = self._replace_parameters(graph, head)
        for value, axis in head.path.items():
            set_dim(value, axis, self.params.classes)
        for op in head.reshape_fixes:
            _fix_reshape(graph, op, old, self.params.classes)
        removed, renamed = ([], {}) if self.params.keep_softmax else self._remove_normalizers(graph, head, result)
        result.new_parameters.extend(parameters)
        result.touch(*parameters)
        result.modified = True
        outputs = {v.name: None if v.shape is None else list(v.shape) for v in graph.outputs if v in head.path}
        result.changes = {
            "head": head.layer.op.label, "op_type": head.layer.op.op_type,
            "classes": {"from": old, "to": self.params.classes}, "outputs": outputs,
            "init": self.params.init, "new_parameters": parameters, "removed": removed, "value_map": renamed,
        }
        result.summary = f"swapped head {head.layer.op.label}: {old} -> {self.params.classes} outputs"

    # ---- finding the head -----------------------------------------------------------------
    def _choose(self, graph: Graph) -> _Head:
        candidates = candidate_heads(graph)
        if self.params.head != "auto":
            op = find_layer_op(graph, self.params.head, "head-swap")
            found = candidates.get(op)
            if not isinstance(found, _Head):
                why = found if isinstance(found, str) else "it does not reach a graph output through parameter-free ops"
                raise UsageError(f"head-swap head={self.params.head!r}: {op.label} is not a head: {why}")
            return found
        heads = [h for h in candidates.values() if isinstance(h, _Head)]
        if not heads:
            reasons = "; ".join(r for r in candidates.values() if isinstance(r, str)) or "no layer feeds an output"
            raise UsageError(f"head-swap: no head found ({reasons})")
        if len(heads) > 1:
            listed = ", ".join(f"{h.layer.op.label} (-> {', '.join(v.name for v in h.outputs)})" for h in heads)
            raise UsageError(f"head-swap: several candidate heads: {listed}; name one with head=NODE")
        return heads[0]

    # ---- rewriting ------------------------------------------------------------------------
    def _replace_parameters(self, graph: Graph, head: _Head) -> list[str]:
        layer, n = head.layer, self.params.classes
        shape = list(layer.weight.shape)
        shape[layer.out_axis] = n
        weight = _initial_weight(tuple(shape), layer, self.params.init, self.params.seed)
        names = [replace_const(graph, layer.op, 1, weight).name]
        bias = bias_of(graph, layer)
        if bias is not None:
            names.append(replace_const(graph, layer.op, layer.bias_port, _zero_bias(bias, n)).name)
        if head.bias_add is not None:
            add = head.bias_add
            port = next(p for p, v in enumerate(add.inputs) if graph.const_value(v) is not None)
            names.append(replace_const(graph, add, port, _zero_bias(graph.const_value(add.inputs[port]), n)).name)
        return names

    def _remove_normalizers(self, graph: Graph, head: _Head, result: PassResult) -> tuple[list[str], dict]:
        """Bypasses Softmax/LogSoftmax on the path; returns their labels and the tensor renames
        (reference name -> new name, None for a tensor that is gone) for the change record."""
        removed, renamed = [], {}
        for op in [graph.producer(v) for v in list(head.path)]:
            if op is None or op.op_type not in _NORMALIZERS or not is_default(op):
                continue
            source, target = op.inputs[0], op.outputs[0]
            if source in graph.outputs and target in graph.outputs:
                result.refuse(op.label, "its input is itself a graph output, so the two outputs cannot merge")
                continue
            label, is_output, name = op.label, target in graph.outputs, target.name
            graph.replace_all_uses(target, source)
            graph.remove_op(op)
            renamed[name] = None
            if is_output:
                renamed[source.name] = name
                graph.rename_value(source, name)  # the model's interface keeps the output's name
            removed.append(label)
        return removed, renamed


def candidate_heads(graph: Graph) -> dict[Op, _Head | str]:
    """For each layer reached backwards from a graph output through parameter-free ops: the
    head (with its path to the outputs) or the reason it cannot be swapped."""
    found: dict[Op, _Head | str] = {}
    for output in graph.outputs:
        op = _head_op_behind(graph, output)
        if op is not None and op not in found:
            found[op] = _trace_head(graph, op)
    return found


def _head_op_behind(graph: Graph, value: Value) -> Op | None:
    while True:
        op = graph.producer(value) if value.graph is graph else None
        if op is None or not is_default(op):
            return None
        if layer_of(graph, op) is not None:
            return op
        if op.op_type == "Add" and _bias_add_source(graph, op) is not None:
            return _bias_add_source(graph, op)
        if op.op_type not in _ELEMENTWISE | _POOLS | _RESHAPES or op.inputs[0] is None:
            return None
        value = op.inputs[0]


def _bias_add_source(graph: Graph, add: Op) -> Op | None:
    """The MatMul head behind `Add(MatMul(x, W), b)` with b constant."""
    data = [v for v in add.inputs if v is not None and graph.const_value(v) is None]
    if len(data) != 1 or len(add.inputs) != 2:
        return None
    producer = graph.producer(data[0])
    if producer is None or producer.op_type != "MatMul" or layer_of(graph, producer) is None:
        return None
    return producer


def _trace_head(graph: Graph, op: Op) -> _Head | str:
    layer = layer_of(graph, op)
    if op.inputs[1].dtype not in NUMERIC_FLOATS:
        return f"{op.label} has non-float (or bit-packed) weights; a fresh float head would not fit"
    head = _Head(layer, None)
    start = op.outputs[0]
    consumers = graph.consumers(start)
    if op.op_type == "MatMul" and len(consumers) == 1 and consumers[0][0].op_type == "Add" \
            and _bias_add_source(graph, consumers[0][0]) is op:
        head.bias_add = consumers[0][0]
    try:
        _walk(graph, head, start, layer.unit_axis_from_right)
    except _NotAHead as exc:
        return str(exc)
    return head


class _NotAHead(Exception):
    pass


def _walk(graph: Graph, head: _Head, value: Value, axis: int) -> None:
    """Follows the head's output forward to the graph outputs, noting the class axis."""
    if read_in_subgraph(graph, value):
        raise _NotAHead(f"{value.name!r} is read inside an If/Loop/Scan body")
    head.path[value] = axis
    if value in graph.outputs:
        head.outputs.append(value)
    for op, port in graph.consumers(value):
        if op is head.bias_add:
            _walk(graph, head, op.outputs[0], axis)
            continue
        if port != 0 or not is_default(op) or op.op_type not in _ELEMENTWISE | _POOLS | _RESHAPES:
            raise _NotAHead(f"its output also feeds {op.label} ({op.op_type}), which would see a different class count")
        _walk(graph, head, op.outputs[0], _next_axis(graph, head, op, axis))


def _next_axis(graph: Graph, head: _Head, op: Op, axis: int) -> int:
    """The class axis (from the right) in `op`'s output; reshaping ops must leave it last."""
    before, after = op.inputs[0].shape, op.outputs[0].shape
    if op.op_type in _ELEMENTWISE:
        return axis
    if op.op_type in _POOLS:
        if before is None or axis != len(before) - 2:
            raise _NotAHead(f"{op.label} ({op.op_type}) pools over the class axis")
        return axis
    mixed = before is None or any(d != 1 for d in before[len(before) - axis:])
    if mixed or not after or after[-1] != head.classes:
        raise _NotAHead(f"{op.label} ({op.op_type}) would mix the classes with other axes")
    if op.op_type == "Reshape":
        target = graph.const_value(op.inputs[1])
        if target is None or target.size == 0 or int(target[-1]) not in (-1, 0, head.classes):
            raise _NotAHead(f"{op.label} reshapes to a target that does not end in the class axis")
        if int(target[-1]) == head.classes:
            head.reshape_fixes.append(op)
    return 0


def _fix_reshape(graph: Graph, op: Op, old: int, new: int) -> None:
    target = graph.const_value(op.inputs[1]).copy()
    if int(target[-1]) == old:
        target[-1] = new
        replace_const(graph, op, 1, target)


def _initial_weight(shape: tuple[int, ...], layer: Layer, init: str, seed: int) -> np.ndarray:
    dtype = layer.weight.dtype
    if init == "zeros":
        return np.zeros(shape, dtype)
    receptive = int(np.prod(shape[2:])) if layer.kind == "conv" else 1
    fan_in, fan_out = shape[layer.in_axis] * receptive, shape[layer.out_axis] * receptive
    limit = float(np.sqrt(6.0 / (fan_in + fan_out)))  # Glorot & Bengio (2010), uniform
    return np.random.default_rng(seed).uniform(-limit, limit, shape).astype(dtype)


def _zero_bias(bias: np.ndarray, classes: int) -> np.ndarray:
    if bias.ndim == 0 or bias.size == 1:
        return np.zeros_like(bias)  # a broadcast scalar bias stays a scalar
    shape = list(bias.shape)
    shape[-1] = classes
    return np.zeros(shape, bias.dtype)
