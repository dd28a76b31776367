"""Where a layer's output units go: the region widen must replicate, and the layers that read it.

From a producer layer's output the trace follows ops that act on each unit separately
(elementwise math, BatchNorm, pooling, Flatten of a 1x1 map) until it reaches layers that read
the units as input features (Gemm/MatMul data input, Conv input channels). Every constant an op
in the region combines per unit (a bias, BatchNorm statistics) must be replicated with the units;
anything that mixes units with tensors outside the region (a residual Add, Concat, Reshape,
LayerNorm over the unit axis, a graph output) makes widening unsafe and the trace says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from graphsurg.passes._graft_layers import Layer, is_default, layer_of
from graphsurg.passes._util import read_in_subgraph

from graphsurg.ir import Graph, Op, Value

UNARY = {
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "Gelu", "Erf", "Softplus", "Softsign",
    "HardSigmoid", "HardSwish", "Mish", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Sin", "Cos", "Floor",
    "Ceil", "Round", "Sign", "ThresholdedRelu", "Identity", "Dropout", "Cast", "Clip",
}
BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu"}
CHANNEL_WISE = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"}
NORMS = {"BatchNormalization", "InstanceNormalization"}


@dataclass(frozen=True)
class ConstEdit:
    """A constant input of a region op whose axis `axis` runs over the units."""

    op: Op
    port: int
    axis: int


@dataclass
class UnitRegion:
    producer: Layer
    values: dict[Value, int] = field(default_factory=dict)  # value -> unit axis counted from the right
    consts: list[ConstEdit] = field(default_factory=list)
    consumers: list[Layer] = field(default_factory=list)


class Unsafe(Exception):
    """The units reach something that widening cannot keep exact."""


def trace_units(graph: Graph, producer: Layer) -> UnitRegion:
    """The region of `producer`'s output units; raises Unsafe with the reason."""
    region = UnitRegion(producer)
    queue = [(producer.op.outputs[0], producer.unit_axis_from_right)]
    seen_ops: set[Op] = {producer.op}
    while queue:
        value, axis = queue.pop()
        if value in region.values:
            continue
        _check_value(graph, value)
        region.values[value] = axis
        for op, port in graph.consumers(value):
            if op in seen_ops:
                continue
            seen_ops.add(op)
            queue.extend(_follow(graph, region, op, port, axis))
    if not region.consumers:
        raise Unsafe("its units never reach a layer that reads them")
    _check_operands(graph, region, seen_ops)
    return region


def _check_value(graph: Graph, value: Value) -> None:
    if value in graph.outputs:
        raise Unsafe(f"its units reach the graph output {value.name!r}, whose shape would change")
    if read_in_subgraph(graph, value):
        raise Unsafe(f"{value.name!r} is read inside an If/Loop/Scan body")


def _follow(graph: Graph, region: UnitRegion, op: Op, port: int, axis: int) -> list[tuple[Value, int]]:
    """Records what `op` needs replicated and returns its outputs that carry the units onward."""
    kind = op.op_type if is_default(op) else f"{op.domain}.{op.op_type}"
    layer = layer_of(graph, op)
    if layer is not None and port == 0:
        _add_consumer(graph, region, layer, axis)
        return []
    if len([v for v in op.outputs if v is not None and graph.is_used(v)]) > 1:
        raise Unsafe(f"its units reach {op.label} ({kind}), which has several outputs")
    out = op.outputs[0]
    if kind in UNARY and port == 0:
        return [(out, axis)]
    if kind in BINARY:
        return [(out, axis)]  # the other operands are checked once the region is known
    if kind in NORMS and port == 0 and axis == _rank(op.inputs[0]) - 2:
        region.consts.extend(_norm_params(graph, op))
        return [(out, axis)]
    if kind in CHANNEL_WISE and port == 0 and axis == _rank(op.inputs[0]) - 2:
        return [(out, axis)]
    if kind == "Flatten" and port == 0 and _flattens_to_units(op, axis):
        return [(out, 0)]
    raise Unsafe(f"its units reach {op.label} ({kind}), which mixes or moves them")


def _norm_params(graph: Graph, op: Op) -> list[ConstEdit]:
    """BatchNorm scale, bias, mean and variance (InstanceNorm scale and bias), one entry per unit."""
    if op.attr("training_mode", 0):
        raise Unsafe(f"{op.label} runs in training mode (batch statistics)")
    ports = [p for p in range(1, len(op.inputs)) if op.inputs[p] is not None]
    if any(graph.const_value(op.inputs[p]) is None for p in ports):
        raise Unsafe(f"{op.label} has parameters that are not constants")
    return [ConstEdit(op, p, 0) for p in ports]


def _add_consumer(graph: Graph, region: UnitRegion, layer: Layer, axis: int) -> None:
    op = layer.op
    if op.op_type == "Conv":
        if op.attr("group", 1) != 1:
            raise Unsafe(f"the grouped Conv {op.label} reads its units (group != 1)")
        if axis != layer.weight.ndim - 2:
            raise Unsafe(f"{op.label} reads the units on an axis other than its channels")
    elif axis != 0 or (op.op_type == "Gemm" and op.attr("transA", 0)):
        raise Unsafe(f"{op.label} reads the units on an axis other than its input features")
    if layer.weight.shape[layer.in_axis] != region.producer.units:
        raise Unsafe(f"{op.label} reads {layer.weight.shape[layer.in_axis]} features, not the producer's units")
    region.consumers.append(layer)


def _check_operands(graph: Graph, region: UnitRegion, ops: set[Op]) -> None:
    """Every input of a region op is a region value on the same axis or a constant that can be
    replicated; a tensor from outside (a residual branch) would need widening too."""
    for op in ops:
        if op is region.producer.op or op in {c.op for c in region.consumers} or op.op_type not in BINARY | UNARY:
            continue
        axis = region.values[op.outputs[0]]
        for port, value in enumerate(op.inputs):
            if value is None or region.values.get(value) == axis:
                continue
            array = graph.const_value(value)
            if array is None:
                raise Unsafe(f"{op.label} combines its units with {value.name!r}, which is not widened "
                             "(a residual or other branch)")
            _add_const(region, op, port, array.shape, axis)


def _add_const(region: UnitRegion, op: Op, port: int, shape: tuple[int, ...], axis: int) -> None:
    if len(shape) <= axis:
        return  # broadcasts over the unit axis: shared by all units, nothing to replicate
    index = len(shape) - 1 - axis
    if shape[index] == 1:
        return
    if shape[index] != region.producer.units:
        raise Unsafe(f"{op.label} reads a constant of shape {list(shape)} that does not line up with the units")
    region.consts.append(ConstEdit(op, port, index))


def _flattens_to_units(op: Op, axis: int) -> bool:
    """Flatten keeps the units as its last axis when every other flattened-together dim is 1."""
    shape = op.inputs[0].shape
    if shape is None:
        return False
    split = op.attr("axis", 1) % len(shape) if shape else 0
    unit = len(shape) - 1 - axis
    tail = [d for i, d in enumerate(shape) if i >= split and i != unit]
    return unit >= split and all(d == 1 for d in tail)


def _rank(value: Value | None) -> int:
    return -1 if value is None or value.shape is None else len(value.shape)
