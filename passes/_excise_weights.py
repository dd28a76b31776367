"""Constant operands as excision and pruning see them: an initializer or a Constant op, possibly
behind a chain of layout ops (Transpose, Reshape, Squeeze, Unsqueeze, Cast, Identity).

`WeightRef` names one use of such a constant (op, input port), gives the array the op actually
sees, and writes a sliced or masked version back: into the source itself when the op owns it
exclusively and the chain maps axes one to one, otherwise as a fresh initializer for this use only
(so other readers of a shared constant keep theirs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from graphsurg.ir import ArrayTensor, Graph, Op, Value
from graphsurg.ir.graph import CAPTURE

_DEFAULT = ("", "ai.onnx")
CHAIN_OPS = frozenset({"Identity", "Cast", "Transpose", "Reshape", "Squeeze", "Unsqueeze"})
Ints = Callable[[Value], "list[int] | None"]  # evaluates an integer input (see resolve_weight)
# Chains through these map every axis of the result to one axis of the source.
_AXIS_PRESERVING = frozenset({"Identity", "Cast", "Transpose", "Squeeze", "Unsqueeze"})


def constant_array(graph: Graph, value: Value | None) -> np.ndarray | None:
    """The array of an initializer or of a Constant op's output (None otherwise)."""
    if value is None:
        return None
    if value.is_const:
        return value.const.numpy()
    return graph.const_value(value)


def const_ints(graph: Graph, value: Value | None) -> list[int] | None:
    """The integers of a constant vector input (None when absent or computed)."""
    array = constant_array(graph, value)
    return None if array is None else [int(v) for v in np.asarray(array).reshape(-1)]


def int_list(graph: Graph, op: Op, attr: str, port: int) -> list[int] | None:
    """An integer list given either as attribute `attr` (older opsets) or as constant input `port`."""
    if op.attr(attr) is not None:
        return [int(v) for v in op.attr(attr)]
    return const_ints(graph, op.inputs[port]) if port < len(op.inputs) else None


def _chain_step(graph: Graph, op: Op, array: np.ndarray, cuts: dict | None = None) -> np.ndarray | None:
    """Applies one layout op to a constant array (None when its parameters are not constant);
    a Slice cuts with the bounds in `cuts`."""
    kind = op.op_type
    if kind in ("Identity", "Cast"):
        return array
    if kind == "Slice":
        return array[cuts[op]] if cuts and op in cuts else None
    if kind == "Transpose":
        perm = op.attr("perm")
        return np.transpose(array, perm if perm is not None else None)
    if kind == "Reshape":
        shape = constant_array(graph, op.inputs[1])
        if shape is None:
            return None
        dims = [int(d) for d in shape]
        if not op.attr("allowzero", 0):
            dims = [array.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return array.reshape(dims)
    axes = int_list(graph, op, "axes", 1)
    if kind == "Unsqueeze" and axes is not None:
        rank = array.ndim + len(axes)
        return np.expand_dims(array, tuple(sorted(a % rank for a in axes)))
    if kind == "Squeeze":
        if axes is None:
            return np.squeeze(array) if len(op.inputs) < 2 else None
        return np.squeeze(array, tuple(a % array.ndim for a in axes))
    return None


@dataclass
class WeightRef:
    """One use of a constant: `op` reads it at input `port`, through `chain` (source side first)."""

    op: Op
    port: int
    chain: list[Op]
    source: Value
    exclusive: bool  # nothing else reads the source or any chain value; safe to edit in place
    cuts: dict[Op, tuple] = field(default_factory=dict)  # index tuples of the Slices in the chain
    part: bool = False  # the chain cuts a part of the source that no other reader overlaps

    @property
    def key(self) -> tuple[int, int]:
        return id(self.op), self.port

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def is_initializer(self) -> bool:
        return self.source.is_const

    def source_array(self) -> np.ndarray:
        array = constant_array(self.op.graph, self.source)
        assert array is not None
        return array

    def effective(self, array: np.ndarray | None = None) -> np.ndarray:
        """The array as the op sees it (or `array`, shaped like the source, pushed through the chain)."""
        result = self.source_array() if array is None else array
        for op in self.chain:
            stepped = _chain_step(op.graph, op, result, self.cuts)
            assert stepped is not None, f"{op.label} has no constant parameters"
            result = stepped
        return result

    def source_axis(self, axis: int) -> int | None:
        """The source axis that effective axis `axis` comes from, for axis-preserving chains."""
        shapes = self._chain_shapes()
        for op, (in_shape, out_shape) in zip(reversed(self.chain), reversed(shapes), strict=True):
            if op.op_type not in _AXIS_PRESERVING:
                return None
            if op.op_type == "Transpose":
                perm = op.attr("perm") or list(reversed(range(len(in_shape))))
                axis = perm[axis]
            elif op.op_type in ("Squeeze", "Unsqueeze"):
                axis = _map_unit_axes(out_shape, in_shape, axis)
                if axis is None:
                    return None
        return axis

    def _chain_shapes(self) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        shapes, array = [], self.source_array()
        for op in self.chain:
            stepped = _chain_step(op.graph, op, array, self.cuts)
            assert stepped is not None
            shapes.append((array.shape, stepped.shape))
            array = stepped
        return shapes


def _map_unit_axes(out_shape: tuple[int, ...], in_shape: tuple[int, ...], axis: int) -> int | None:
    """Maps an axis across a Squeeze/Unsqueeze by matching the non-unit dimensions in order."""
    out_big = [i for i, d in enumerate(out_shape) if d != 1]
    in_big = [i for i, d in enumerate(in_shape) if d != 1]
    if axis not in out_big or len(out_big) != len(in_big):
        return None
    return in_big[out_big.index(axis)]


def _single_reader(graph: Graph, value: Value) -> bool:
    # An If/Loop/Scan body reading the value shows as a capture edge, which consumers() leaves out.
    captured = any(key == CAPTURE for _, _, key in graph.nx.out_edges(value, keys=True))
    return len(graph.consumers(value)) == 1 and not captured and value not in graph.outputs \
        and value not in graph.inputs


def resolve_weight(graph: Graph, op: Op, port: int, ints: Ints | None = None) -> WeightRef | None:
    """The constant behind `op.inputs[port]`, following layout ops back to an initializer or Constant.

    With `ints` (evaluates an integer input that does not depend on symbolic dimensions), the
    chain also passes Slices whose bounds it can evaluate: a packed weight split at run time
    (torch's cross-attention cuts q and k/v rows from one in_proj_weight with bounds from Shape).
    """
    if port >= len(op.inputs) or op.inputs[port] is None:
        return None
    value, chain, exclusive, cuts = op.inputs[port], [], True, {}
    while True:
        if value.graph is not graph:
            return None  # an outer-scope value seen from a subgraph: not ours to edit
        above_source = exclusive
        exclusive = exclusive and _single_reader(graph, value)
        if value.is_const or _constant_op(graph, value):
            if value.is_const and not graph.is_fixed(value):
                return None  # a default the caller may feed instead: not the model's weight to edit
            part = above_source and bool(chain) and chain[-1] in cuts and _disjoint_cuts(graph, value, ints)
            return WeightRef(op, port, list(reversed(chain)), value, exclusive, cuts, part)
        producer = graph.producer(value)
        if producer is None or producer.domain not in _DEFAULT or producer.inputs[0] is None:
            return None
        if producer.op_type == "Slice" and ints is not None:
            cut = _cut(graph, producer, ints)  # only on the source itself
            if cut is None:
                return None
            cuts[producer] = cut
        elif producer.op_type not in CHAIN_OPS or (
                producer.op_type in ("Reshape", "Squeeze", "Unsqueeze") and len(producer.inputs) > 1
                and producer.inputs[1] is not None and constant_array(graph, producer.inputs[1]) is None):
            return None
        chain.append(producer)
        value = producer.inputs[0]


def _constant_op(graph: Graph, value: Value) -> bool:
    producer = graph.producer(value)
    return producer is not None and producer.domain in _DEFAULT and producer.op_type == "Constant" \
        and graph.const_value(value) is not None


def _cut(graph: Graph, op: Op, ints: Ints) -> tuple | None:
    """The index tuple of a Slice that reads a constant, when `ints` evaluates its bounds."""
    array = constant_array(graph, op.inputs[0])
    given = [op.inputs[port] if port < len(op.inputs) else None for port in range(1, 5)]
    starts, ends, axes, steps = (ints(v) if v is not None else None for v in given)
    if array is None or starts is None or ends is None or (given[2] is not None and axes is None) \
            or (given[3] is not None and steps is None):
        return None
    index = [slice(None)] * array.ndim
    for i, axis in enumerate(axes if axes is not None else range(len(starts))):
        index[axis % array.ndim] = slice(starts[i], ends[i], steps[i] if steps is not None else 1)
    return tuple(index)


def _disjoint_cuts(graph: Graph, source: Value, ints: Ints | None) -> bool:
    """Whether every reader of `source` is a Slice with evaluable bounds and no two overlap."""
    readers = graph.consumers(source)
    if ints is None or source in graph.outputs or any(op.op_type != "Slice" or port != 0 for op, port in readers):
        return False
    taken = np.zeros(np.shape(constant_array(graph, source)), dtype=np.int64)
    for op, _ in readers:
        cut = _cut(graph, op, ints)
        if cut is None:
            return False
        taken[cut] += 1
    return bool(taken.max(initial=0) <= 1)


def write_source(graph: Graph, ref: WeightRef, array: np.ndarray) -> None:
    """Replaces the source tensor of `ref` (initializer or Constant attribute), keeping its dtype."""
    dtype = ref.source.dtype
    tensor = ArrayTensor(np.ascontiguousarray(array), dtype=dtype)
    if ref.source.is_const:
        graph.set_const(ref.source, tensor)
        return
    producer = graph.producer(ref.source)
    assert producer is not None and producer.op_type == "Constant"
    graph.set_attrs(producer, value=tensor)
    ref.source.shape = tensor.shape


def refresh_chain_shapes(ref: WeightRef) -> None:
    """Re-derives the static shapes of the chain's values after the source changed."""
    array = ref.source_array()
    for op in ref.chain:
        array = _chain_step(op.graph, op, array)
        out = op.outputs[0]
        if out is not None and array is not None:
            out.shape = tuple(array.shape)


def materialize(graph: Graph, ref: WeightRef, effective: np.ndarray, suffix: str) -> Value:
    """Gives `ref.op` its own initializer holding `effective`; the old chain is dropped if now unused."""
    tensor = ArrayTensor(np.ascontiguousarray(effective), dtype=ref.source.dtype)
    fresh = graph.add_initializer(f"{ref.source.name}_{suffix}", tensor)
    old = ref.op.inputs[ref.port]
    graph.set_input(ref.op, ref.port, fresh)
    remove_dead(graph, [old])
    return fresh


def remove_dead(graph: Graph, values: Iterable[Value | None]) -> list[str]:
    """Removes the producers of `values` (and what only they read) once nothing uses them.

    Returns the names of initializers that became unused and were dropped.
    """
    dropped: list[str] = []
    stack = [v for v in values if v is not None]
    while stack:
        value = stack.pop()
        if value.graph is not graph or graph.is_used(value) or graph.lookup(value.name) is not value:
            continue
        if value.is_const:
            if graph.is_fixed(value):
                graph.remove_value(value)
                dropped.append(value.name)
            continue
        producer = graph.producer(value)
        if producer is None or any(o is not None and graph.is_used(o) for o in producer.outputs):
            continue
        inputs = [v for v in producer.inputs if v is not None]
        graph.remove_op(producer)
        stack.extend(inputs)
    return dropped


def replace_effective(graph: Graph, ref: WeightRef, effective: np.ndarray, suffix: str) -> None:
    """Makes `ref.op` read `effective`: edits the source in place when it is exclusive and read
    directly, else gives the op its own initializer."""
    if ref.exclusive and not ref.chain:
        write_source(graph, ref, effective)
    else:
        materialize(graph, ref, effective, suffix)


def copy_op(graph: Graph, op: Op, inputs: list[Value | None], name: str) -> Op:
    """A copy of single-output `op` reading `inputs`, its output typed and shaped like the original's."""
    copy = graph.add_op(op.op_type, inputs, attrs=op.attrs, name=op.name or name, domain=op.domain)
    copy.outputs[0].dtype, copy.outputs[0].shape = op.outputs[0].dtype, op.outputs[0].shape
    return copy


def set_const_input(graph: Graph, op: Op, port: int, array: np.ndarray, suffix: str = "excised") -> None:
    """Makes `op` read `array` at input `port`: edits the constant behind it, or (when the input is
    computed, e.g. shape arithmetic) gives the op a fresh initializer and drops what fed it."""
    ref = resolve_weight(graph, op, port) if port < len(op.inputs) else None
    if ref is not None:
        replace_effective(graph, ref, array.astype(ref.source_array().dtype), suffix)
        return
    old = op.inputs[port] if port < len(op.inputs) else None
    fresh = graph.add_initializer(f"{op.name or op.outputs[0].name}_{suffix}", array)
    graph.set_input(op, port, fresh)
    remove_dead(graph, [old])
