"""Reshapes and channel labels: where a channel axis lands after a Reshape/Flatten/Squeeze/
Unsqueeze, and how a Reshape's target-shape tensor is updated once channels are gone.

The mapping is computed, not pattern-matched: symbolic dimensions are taken as 1, the channel
index is laid along its axis, reshaped like the data, and the output axes along which the labels
vary are where the channels went (several axes: a split into heads; one axis with repeats: a
Flatten after a conv).
"""

from __future__ import annotations

import math

import numpy as np
from graphsurg.passes._excise_weights import constant_array, remove_dead, replace_effective, resolve_weight

from graphsurg.ir import Graph, Op

# Mapping materializes one index per element with symbolic dimensions taken as 1; beyond this a
# reshape is left alone rather than spending gigabytes on it.
MAX_MAPPED_ELEMENTS = 1 << 25


def _concrete(shape: tuple | None) -> list[int] | None:
    if shape is None or any(d is None for d in shape):
        return None
    return [d if isinstance(d, int) else 1 for d in shape]


def map_reshape(labels_uf, in_shape: tuple | None, out_shape: tuple | None, axis: int,
                labels: np.ndarray) -> tuple[list[int], np.ndarray] | str:
    """(output axes the channels vary along, label grid over those axes), or why not."""
    cin, cout = _concrete(in_shape), _concrete(out_shape)
    if cin is None or cout is None:
        return "has an input or output of unknown shape"
    if axis >= len(cin) or cin[axis] != len(labels):
        return "disagrees with the channel count of its input"
    if math.prod(cin) != math.prod(cout):
        return "moves them across a symbolic dimension"
    if math.prod(cin) > MAX_MAPPED_ELEMENTS:
        return "is too large to map"
    view = [1] * len(cin)
    view[axis] = len(labels)
    cells = np.broadcast_to(np.arange(len(labels), dtype=np.int32).reshape(view), cin).reshape(cout)
    roots = labels_uf.roots(labels)[cells]
    varying = [a for a in range(len(cout)) if cout[a] > 1 and bool((roots != roots.take([0], axis=a)).any())]
    if any(not isinstance(out_shape[a], int) for a in varying):
        return "moves them into a dimension of symbolic size"
    index = tuple(slice(None) if a in varying else 0 for a in range(len(cout)))
    return varying, labels[cells[index]]


def plan_shape_patch(dep, op: Op) -> dict | str:
    """How the target shape of Reshape `op` will be rewritten, decided before anything changes."""
    graph = dep.graph
    axes = sorted(dep.get(op.outputs[0]))
    plan = {"axes": axes, "in_shape": dep.shape(op.inputs[0]), "out_shape": op.outputs[0].shape}
    if resolve_weight(graph, op, 1) is not None:
        return {**plan, "kind": "const"}
    producer = graph.producer(op.inputs[1])
    if producer is not None and producer.op_type == "Concat":
        places = _concat_places(graph, producer, axes)
        if places is not None:
            return {**plan, "kind": "concat", "places": places}
    if plan["out_shape"] is not None and _rebuild(op, plan, {a: 1 for a in axes}) is not None:
        return {**plan, "kind": "rebuild"}
    return "computes its target shape in a way the pass cannot update"


def _concat_places(graph: Graph, concat: Op, axes: list[int]) -> list[tuple[int, int]] | None:
    """(Concat input port, offset in it) of each labeled entry; each must come from a constant."""
    spans, start = [], 0
    for value in concat.inputs:
        array = constant_array(graph, value)
        length = array.size if array is not None else (value.shape[0] if value is not None and value.shape
                                                         and isinstance(value.shape[0], int) else None)
        if length is None:
            return None
        spans.append((start, length))
        start += length
    places = []
    for axis in axes:
        port = next((p for p, (s, n) in enumerate(spans) if s <= axis < s + n), None)
        if port is None or resolve_weight(graph, concat, port) is None:
            return None
        places.append((port, axis - spans[port][0]))
    return places


def _rebuild(op: Op, plan: dict, sizes: dict[int, int]) -> list[int] | None:
    """A fresh constant target shape: static sizes, 0 (copy) for a symbolic dimension the input
    has at the same place, -1 for at most one other."""
    entries, inferred = [], 0
    in_shape, allowzero = plan["in_shape"] or (), op.attr("allowzero", 0)
    for k, dim in enumerate(plan["out_shape"]):
        if k in sizes:
            entries.append(sizes[k])
        elif isinstance(dim, int):
            entries.append(dim)
        elif isinstance(dim, str) and not allowzero and k < len(in_shape) and in_shape[k] == dim:
            entries.append(0)
        else:
            entries.append(-1)
            inferred += 1
    return entries if inferred <= 1 else None


def apply_shape_patch(graph: Graph, op: Op, plan: dict, sizes: dict[int, int]) -> None:
    """Writes the new sizes of the labeled output axes into Reshape `op`'s target shape."""
    if plan["kind"] == "const":
        ref = resolve_weight(graph, op, 1)
        array = np.array(ref.effective(), copy=True)
        for axis, size in sizes.items():
            if array[axis] != -1:
                array[axis] = size
        replace_effective(graph, ref, array, "excised")
    elif plan["kind"] == "concat":
        concat = graph.producer(op.inputs[1])
        for axis, (port, offset) in zip(plan["axes"], plan["places"], strict=True):
            ref = resolve_weight(graph, concat, port)
            array = np.array(ref.effective(), copy=True)
            flat = array.reshape(-1)
            if flat[offset] != -1:
                flat[offset] = sizes[axis]
            replace_effective(graph, ref, array, "excised")
    else:
        old = op.inputs[1]
        fresh = graph.add_initializer(f"{op.name or op.outputs[0].name}_shape",
                                      np.array(_rebuild(op, plan, sizes), dtype=np.int64))
        graph.set_input(op, 1, fresh)
        remove_dead(graph, [old])
