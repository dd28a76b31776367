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
from graphsurg.passes._excise_static import probed_ints, probes, static_ints
from graphsurg.passes._excise_weights import (
    copy_op,
    remove_dead,
    replace_effective,
    resolve_weight,
    set_const_input,
)

from graphsurg.ir import Graph, Op

# Mapping materializes one index per element with symbolic dimensions taken as 1; beyond this a
# reshape is left alone rather than spending gigabytes on it.
MAX_MAPPED_ELEMENTS = 1 << 25
# map_reshape's refusals where the channels meet a symbolic dimension (a fold may resolve them).
ACROSS_SYMBOLIC = "moves them across a symbolic dimension"
INTO_SYMBOLIC = "moves them into a dimension of symbolic size"
ADAPTS = "adapts"  # a target entry that copies its count from Shape at run time: nothing to write


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
        return ACROSS_SYMBOLIC
    if math.prod(cin) > MAX_MAPPED_ELEMENTS:
        return "is too large to map"
    view = [1] * len(cin)
    view[axis] = len(labels)
    cells = np.broadcast_to(np.arange(len(labels), dtype=np.int32).reshape(view), cin).reshape(cout)
    roots = labels_uf.roots(labels)[cells]
    varying = [a for a in range(len(cout)) if cout[a] > 1 and bool((roots != roots.take([0], axis=a)).any())]
    if any(not isinstance(out_shape[a], int) for a in varying):
        return INTO_SYMBOLIC
    index = tuple(slice(None) if a in varying else 0 for a in range(len(cout)))
    return varying, labels[cells[index]]


def reshape_target(dep, op: Op) -> tuple | None:
    """Reshape's output shape worked out from its target-shape tensor and its input shape, once
    per probe of the symbolic dimensions: sizes equal under all probes are static (a head size
    written as -1 next to symbolic batch and sequence), the others symbolic ("?")."""
    in_shape = dep.shape(op.inputs[0])
    targets = probed_ints(dep, op.inputs[1])
    if in_shape is None or targets is None or any(d is None for d in in_shape):
        return None
    results = []
    for probe, target in zip(probes(), targets, strict=True):
        dims = resolve_target(target, [d if isinstance(d, int) else probe for d in in_shape], op.attr("allowzero", 0))
        if dims is None:
            return None
        results.append(dims)
    return tuple(a if all(r[i] == a for r in results) else "?" for i, a in enumerate(results[0]))


def resolve_target(target: list[int], dims_in: list[int], allowzero: int) -> list[int] | None:
    """A Reshape's output dims for input dims `dims_in`: 0 copies (unless allowzero), -1 infers."""
    dims = [dims_in[i] if d == 0 and not allowzero and i < len(dims_in) else d for i, d in enumerate(target)]
    if dims.count(-1) == 1:
        known = math.prod(d for d in dims if d != -1)
        if known == 0 or math.prod(dims_in) % known:
            return None
        dims[dims.index(-1)] = math.prod(dims_in) // known
    return dims


def plan_shape_patch(dep, op: Op) -> dict | str:
    """How the target shape of Reshape `op` will be rewritten, decided before anything changes.
    A folded axis (batch*heads) gets -1, so no other entry may be -1. Each labeled axis's entry
    is a place in a constant or a one-element piece of a Concat, or copies the count at run time
    from `Shape` of a tensor with the same labels there (ADAPTS: nothing to write)."""
    graph = dep.graph
    folded = sorted(dep.folds.get(op.outputs[0], {}))
    axes = sorted({*dep.get(op.outputs[0]), *folded})
    plan = {"axes": axes, "folded": folded, "in_shape": dep.shape(op.inputs[0]),
            "out_shape": dep.base_shape(op.outputs[0])}
    targets = probed_ints(dep, op.inputs[1]) if folded else []
    if targets is None or any(t[i] == -1 for t in targets for i in range(len(t)) if i not in folded):
        return "infers a dimension besides the heads it folds into a symbolic one"
    if resolve_weight(graph, op, 1) is not None:
        return {**plan, "kind": "const"}
    places = [_concat_place(dep, op.inputs[1], axis) or (ADAPTS if _copies_own_count(dep, op, axis) else None)
              for axis in axes]
    if None not in places:
        return {**plan, "kind": "entries", "places": places}
    if plan["out_shape"] is not None and _rebuild(op, plan, {a: 1 for a in axes}) is not None:
        return {**plan, "kind": "rebuild"}
    return "computes its target shape in a way the pass cannot update"


def _concat_place(dep, target, position: int) -> tuple[tuple[int, ...], int] | None:
    """(Concat input ports from `target` down, offset in the last one's input) of entry
    `position`, which must come from a constant or from a computed piece of one element
    (Unsqueeze(Gather(Shape(x))): the labeled axis has a static size, or -1 for a fold); a piece
    that is itself a Concat only this one reads is searched in turn (torch's unflatten builds its
    target from nested Concats)."""
    graph = dep.graph
    concat = graph.producer(target)
    piece = _concat_piece(dep, concat, position) if concat is not None and concat.op_type == "Concat" else None
    if piece is None:
        return None
    port, offset = piece
    value = concat.inputs[port]
    if resolve_weight(graph, concat, port) is not None or dep.size(value, 0) == 1:
        return (port,), offset
    if len(graph.consumers(value)) != 1 or value in graph.outputs:
        return None
    inner = _concat_place(dep, value, offset)
    return None if inner is None else ((port, *inner[0]), inner[1])


def _concat_piece(dep, concat: Op, position: int) -> tuple[int, int] | None:
    """(input port, offset in that input) of element `position` of a Concat of vectors."""
    start = 0
    for port, value in enumerate(concat.inputs):
        length = dep.size(value, 0) if value is not None and dep.rank(value) == 1 else None
        if length is None:
            return None
        if position < start + length:
            return port, position - start
        start += length
    return None


def _copies_own_count(dep, op: Op, axis: int) -> bool:
    """Whether entry `axis` of Reshape `op`'s target is `Shape(x)[a]` where x's axis a has the
    labels of output axis `axis`: both counts shrink alike, so the entry adapts at run time
    (the dynamo exporter rebuilds k's head split from Shape of k)."""
    source = shape_entry_source(dep, op.inputs[1], axis)
    if source is None:
        return False
    mine, theirs = dep.get(op.outputs[0]).get(axis), dep.get(source[0]).get(source[1])
    return mine is not None and theirs is not None and len(mine) == len(theirs) and \
        np.array_equal(dep.labels.roots(mine), dep.labels.roots(theirs))


def shape_entry_source(dep, value, position: int) -> tuple | None:
    """(x, axis) when element `position` of the integer vector `value` is `Shape(x)[axis]`,
    passed on by Cast, Identity, Squeeze, Unsqueeze, Concat, and Slice or Gather with static
    indices (a scalar counts as position 0)."""
    while (op := dep.graph.producer(value)) is not None:
        if op.op_type == "Shape":
            rank = dep.rank(op.inputs[0])
            return None if rank is None else (op.inputs[0], _clip(op.attr("start", 0), rank) + position)
        step = _entry_step(dep, op, position)
        if step is None:
            return None
        value, position = step
    return None


def _entry_step(dep, op: Op, position: int) -> tuple | None:
    """(input, position in it) of element `position` of `op`'s output vector."""
    if op.op_type in ("Cast", "Identity", "Squeeze", "Unsqueeze"):
        return op.inputs[0], position
    if op.op_type in ("Slice", "Gather"):
        picked = _picked(dep, op, position)
        return None if picked is None else (op.inputs[0], picked)
    piece = _concat_piece(dep, op, position) if op.op_type == "Concat" else None
    return None if piece is None else (op.inputs[piece[0]], piece[1])


def _clip(index: int, rank: int) -> int:
    return min(max(index + rank if index < 0 else index, 0), rank)


def _picked(dep, op: Op, position: int) -> int | None:
    """The position in a Slice's or Gather's input vector of element `position` of its output."""
    length = dep.size(op.inputs[0], 0)
    if length is None or dep.rank(op.inputs[0]) != 1:
        return None
    if op.op_type == "Gather":
        indices = static_ints(dep, op.inputs[1])
        return None if indices is None or position >= len(indices) else indices[position] % length
    starts, ends = static_ints(dep, op.inputs[1]), static_ints(dep, op.inputs[2])
    steps = static_ints(dep, op.inputs[4]) if len(op.inputs) > 4 and op.inputs[4] is not None else [1]
    if starts is None or ends is None or steps is None:
        return None
    picked = range(*slice(starts[0], ends[0], steps[0]).indices(length))
    return picked[position] if position < len(picked) else None


def _rebuild(op: Op, plan: dict, sizes: dict[int, int]) -> list[int] | None:
    """A fresh constant target shape: static sizes, 0 (copy) for a symbolic dimension the input
    has at the same place, -1 for at most one other."""
    entries = []
    in_shape, allowzero = plan["in_shape"] or (), op.attr("allowzero", 0)
    for k, dim in enumerate(plan["out_shape"]):
        if k in sizes:
            entries.append(-1 if k in plan["folded"] else sizes[k])
        elif isinstance(dim, int):
            entries.append(dim)
        elif isinstance(dim, str) and not allowzero and k < len(in_shape) and in_shape[k] == dim:
            entries.append(0)
        else:
            entries.append(-1)
    return entries if entries.count(-1) <= 1 else None


def apply_shape_patch(graph: Graph, op: Op, plan: dict, sizes: dict[int, int]) -> None:
    """Writes the new sizes of the labeled output axes into Reshape `op`'s target shape (-1 for
    folded axes)."""
    sizes = {axis: -1 if axis in plan["folded"] else size for axis, size in sizes.items()}
    if plan["kind"] == "const":
        ref = resolve_weight(graph, op, 1)
        array = np.array(ref.effective(), copy=True)
        for axis, size in sizes.items():
            if array[axis] != -1:
                array[axis] = size
        replace_effective(graph, ref, array, "excised")
    elif plan["kind"] == "entries":
        for axis, place in zip(plan["axes"], plan["places"], strict=True):
            if place != ADAPTS:
                _write_entry(graph, op, *place, sizes[axis])
    else:
        old = op.inputs[1]
        fresh = graph.add_initializer(f"{op.name or op.outputs[0].name}_shape",
                                      np.array(_rebuild(op, plan, sizes), dtype=np.int64))
        graph.set_input(op, 1, fresh)
        remove_dead(graph, [old])


def _write_entry(graph: Graph, op: Op, ports: tuple[int, ...], offset: int, size: int) -> None:
    """Writes `size` at a place of `op`'s target Concat(s); Concats other ops also read are
    copied first (the exporter shares one target between layers that may keep different counts)."""
    reader, port = op, 1
    for concat_port in ports:
        reader, port = _own_producer(graph, reader, port), concat_port
    ref = resolve_weight(graph, reader, port)
    if ref is None:
        set_const_input(graph, reader, port, np.array([size], dtype=np.int64))
        return
    array = np.array(ref.effective(), copy=True)
    flat = array.reshape(-1)
    if flat[offset] != -1:
        flat[offset] = size
    replace_effective(graph, ref, array, "excised")


def _own_producer(graph: Graph, reader: Op, port: int) -> Op:
    """The op computing `reader`'s input `port`, copied for `reader` alone when others use it too."""
    value = reader.inputs[port]
    producer = graph.producer(value)
    if len(graph.consumers(value)) == 1 and value not in graph.outputs:
        return producer
    copy = copy_op(graph, producer, list(producer.inputs), "target")
    graph.set_input(reader, port, copy.outputs[0])
    return copy
