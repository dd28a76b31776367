"""Helpers shared by graft, widen and head-swap: a uniform view of parametric layers, target
lookup by name, and constant replacement that never alters a tensor another op still reads."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from graphsurg.passes._util import read_in_subgraph

from graphsurg.errors import UsageError
from graphsurg.ir import Graph, Op, Value, dtypes

DEFAULT_DOMAINS = ("", "ai.onnx")
# Weight dtypes the grafted/widened/new layers can be written in (bfloat16 and float8 are raw
# integer views in the IR, so arithmetic on them would be wrong).
NUMERIC_FLOATS = {dtypes.FLOAT, dtypes.FLOAT16, dtypes.DOUBLE}


@dataclass(frozen=True)
class Layer:
    """A Gemm, MatMul or Conv whose weight is a constant (an initializer or a Constant output).

    `out_axis` / `in_axis` are the weight axes that index output units and input features.
    `bias_port` is the op's own bias input (Gemm C, Conv B), or None (MatMul has none; a
    following Add is an ordinary elementwise op to the passes).
    """

    op: Op
    weight: np.ndarray
    out_axis: int
    in_axis: int
    bias_port: int | None

    @property
    def kind(self) -> str:
        return "conv" if self.op.op_type == "Conv" else "linear"

    @property
    def units(self) -> int:
        return int(self.weight.shape[self.out_axis])

    @property
    def unit_axis_from_right(self) -> int:
        """Where the output units sit in the op's output, counted from the last axis (0)."""
        return self.weight.ndim - 2 if self.kind == "conv" else 0


def is_default(op: Op) -> bool:
    return op.domain in DEFAULT_DOMAINS


def layer_of(graph: Graph, op: Op) -> Layer | None:
    """The layer view of `op`, or None when it is not a parametric Gemm/MatMul/Conv."""
    if not is_default(op) or op.op_type not in ("Gemm", "MatMul", "Conv") or len(op.inputs) < 2:
        return None
    weight = graph.const_value(op.inputs[1])
    if weight is None or op.inputs[0] is None or graph.const_value(op.inputs[0]) is not None:
        return None
    if op.op_type == "Conv":
        if weight.ndim < 3:
            return None
        return Layer(op, weight, 0, 1, 2)
    if weight.ndim != 2:
        return None  # batched weights: no single unit axis
    if op.op_type == "Gemm":
        trans_b = bool(op.attr("transB", 0))
        return Layer(op, weight, 0 if trans_b else 1, 1 if trans_b else 0, 2)
    return Layer(op, weight, 1, 0, None)


def bias_of(graph: Graph, layer: Layer) -> np.ndarray | None:
    if layer.bias_port is None or len(layer.op.inputs) <= layer.bias_port:
        return None
    return graph.const_value(layer.op.inputs[layer.bias_port])


def find_value(graph: Graph, name: str, what: str) -> Value:
    """A main-graph value by its name, or the single output of an op with that name."""
    value = graph._values.get(name)
    if value is None:
        op = graph.find_op(name)
        if op is not None and len([v for v in op.outputs if v is not None]) == 1:
            value = next(v for v in op.outputs if v is not None)
    if value is None:
        raise UsageError(f"{what}: no tensor or node named {name!r} in the main graph")
    return value


def find_layer_op(graph: Graph, name: str, what: str) -> Op:
    op = graph.find_op(name)
    if op is None:
        raise UsageError(f"{what}: no node named {name!r} (nor a node producing a tensor of that name)")
    return op


def numpy_dtype(value: Value) -> np.dtype | None:
    """The numpy dtype new weights for `value` must have, or None when it is not a plain float."""
    if value.dtype not in NUMERIC_FLOATS:
        return None
    return dtypes.BY_CODE[value.dtype].numpy


def replace_const(graph: Graph, op: Op, port: int, array: np.ndarray) -> Value:
    """Makes `op` read `array` at `port`.

    The initializer is rewritten in place (keeping its name, which training and the change record
    use) only when this port is its sole reader; a shared tensor is left intact and `op` gets a
    fresh initializer instead. A Constant output or initializer left unused is removed.
    """
    old = op.inputs[port]
    sole_reader = (
        old is not None and old.name in graph.initializers and graph.consumers(old) == [(op, port)]
        and old not in graph.outputs and not read_in_subgraph(graph, old)
    )
    if sole_reader:
        graph.set_const(old, array)
        return old
    new = graph.add_initializer(old.name if old is not None else f"{op.name or op.op_type}_param", array)
    graph.set_input(op, port, new)
    if old is not None:
        _drop_if_unused(graph, old)
    return new


def _drop_if_unused(graph: Graph, value: Value) -> None:
    if value.graph is not graph or graph.is_used(value) or read_in_subgraph(graph, value):
        return
    producer = graph.producer(value)
    if producer is None and value.name in graph.initializers:
        graph.remove_value(value)
    elif producer is not None and producer.op_type == "Constant":
        graph.remove_op(producer)


def set_dim(value: Value, axis_from_right: int, size: int) -> None:
    """Sets one dimension of a value's recorded shape (counted from the last axis), if known."""
    if value.shape is None or axis_from_right >= len(value.shape):
        return
    shape = list(value.shape)
    shape[len(shape) - 1 - axis_from_right] = size
    value.shape = tuple(shape)
