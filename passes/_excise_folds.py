"""Heads folded into a symbolic dimension, and packed projections split into segments.

torch's nn.MultiheadAttention (TorchScript export) views q, k and v as (seq, batch*heads,
head_dim): the head becomes the fast-running part of a dimension whose size is symbolic. A
*fold* records such an axis: its labels (one per head) repeat along it, and the axis is that
many labels times an outer factor that depends on the symbolic dimensions (kept per probe of
them, so a later Reshape can split the axis again). Folds live beside the slots, out of sight of
rules that do not expect them: the rules registered with `folds=True` move them (Reshape,
Transpose, attention MatMul, Softmax, elementwise ops), any other op fixes their labels.

The same export computes q, k and v with one packed MatMul and unflattens the result into
(..., 3, E) before picking q, k and v with Gather. A split whose outer axis is only ever picked
from is a split into *segments*, not heads: position i of every segment goes together, and the
segments keep the layout of the channels (heads are split later, in each segment).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from graphsurg.passes._excise_reshape import ACROSS_SYMBOLIC, INTO_SYMBOLIC, MAX_MAPPED_ELEMENTS, resolve_target
from graphsurg.passes._excise_static import ints_param, probed_ints, probes, static_ints

from graphsurg.ir import Op, Value

SYMBOLIC_REFUSALS = (ACROSS_SYMBOLIC, INTO_SYMBOLIC)  # map_reshape's refusals that a fold can resolve


@dataclass
class Fold:
    labels: np.ndarray  # one per position of a period
    outer: tuple[int, ...]  # the axis size over len(labels), at each probe of the symbolic dimensions


def probe_dims(dep, value: Value, index: int) -> list[int] | None:
    """The dims of `value` at probe `index`: symbolic dimensions take the probe, folds their size."""
    shape = dep.shape(value)
    if shape is None or any(d is None for d in shape):
        return None
    folds, probe = dep.folds.get(value, {}), probes()[index]
    return [len(folds[a].labels) * folds[a].outer[index] if a in folds else d if isinstance(d, int) else probe
            for a, d in enumerate(shape)]


def _probed_reshape(dep, op: Op) -> list[tuple[list[int], list[int]]] | None:
    """(input dims, output dims) of Reshape `op` at each probe. The sizes need not agree: an
    exporter may bake the example's sequence length into a target (torch's MultiheadAttention
    does for k and v), so the model runs only at that length and the probes cannot match it."""
    targets = probed_ints(dep, op.inputs[1])
    if targets is None:
        return None
    pairs = []
    for index, target in enumerate(targets):
        dims_in = probe_dims(dep, op.inputs[0], index)
        dims_out = None if dims_in is None else resolve_target(target, dims_in, op.attr("allowzero", 0))
        if dims_out is None:
            return None
        pairs.append((dims_in, dims_out))
    return pairs


def map_folded(dep, op: Op, axis: int, labels: np.ndarray, folded: bool) -> tuple | str:
    """Where Reshape `op` takes the labels on input `axis` (folded or not), probing the symbolic
    dimensions: (output axes they vary along, label grid over those axes, outer factors of a fold
    on the first of them or None), or why not."""
    pairs = _probed_reshape(dep, op)
    if pairs is None:
        return "has a target shape the pass cannot evaluate"
    if math.prod(pairs[-1][1]) > MAX_MAPPED_ELEMENTS:
        return "is too large to map"
    cells = []
    for dims_in, dims_out in pairs:
        # Element f of the output is element f of the input, whose index along `axis` is
        # (f // inner) % size: only the dims after `axis` matter, not the (maybe baked) ones before.
        inner = math.prod(dims_in[axis + 1:])
        if dims_in[axis] % len(labels) or (not folded and dims_in[axis] != len(labels)) \
                or math.prod(dims_out) % (inner * dims_in[axis]):
            return "disagrees with the channel count of its input"
        flat = np.arange(math.prod(dims_out), dtype=np.int64).reshape(dims_out)
        cells.append((flat // inner) % len(labels))
    roots = dep.labels.roots(labels)[cells[-1]]
    varying = [a for a in range(roots.ndim) if bool((roots != roots.take([0], axis=a)).any())]
    symbolic = [a for a in varying if len({dims[a] for _, dims in pairs}) > 1]
    if symbolic[1:] or (symbolic and symbolic[0] != varying[0]):
        return "moves them into symbolic dimensions in a layout the pass does not follow"
    grids = [c[tuple(slice(None) if a in varying else 0 for a in range(c.ndim))] for c in cells]
    outer = None
    if symbolic:
        period = pairs[0][1][varying[0]]
        sizes = [dims[varying[0]] for _, dims in pairs]
        if any(size % period or not np.array_equal(grid, np.concatenate([grids[0]] * (size // period)))
               for size, grid in zip(sizes, grids, strict=True)):
            return "folds them into a symbolic dimension in a layout the pass does not follow"
        outer = tuple(size // period for size in sizes)
    elif any(not np.array_equal(grid, grids[0]) for grid in grids):
        return "maps them differently for different symbolic sizes"
    return varying, labels[grids[0]], outer


def picked_segments(dep, value: Value, axis: int) -> bool:
    """Whether every use of `value` (through Unsqueeze, Squeeze, Transpose, Identity) only picks
    single positions of `axis` with constant Gather indices: the axis lists segments."""
    graph = dep.graph
    if value in graph.outputs or not graph.consumers(value):
        return False
    for op, port in graph.consumers(value):
        if port != 0:
            return False
        if op.op_type == "Gather":
            rank = dep.rank(value)
            if rank is None or op.attr("axis", 0) % rank != axis or static_ints(dep, op.inputs[1]) is None:
                return False
            continue
        moved = _moved_axis(dep, op, axis)
        if moved is None or not picked_segments(dep, op.outputs[0], moved):
            return False
    return True


def _moved_axis(dep, op: Op, axis: int) -> int | None:
    """Where a layout op takes `axis` (None: it does something else, or drops it)."""
    if op.op_type == "Identity":
        return axis
    if op.op_type == "Transpose":
        perm = op.attr("perm")
        return list(perm).index(axis) if perm is not None else None
    if op.op_type not in ("Unsqueeze", "Squeeze"):
        return None
    given, axes = ints_param(dep, op, "axes", 1)
    rank = dep.rank(op.inputs[0])
    if not given or axes is None or rank is None:
        return None
    if op.op_type == "Squeeze":
        dropped = {a % rank for a in axes}
        return None if axis in dropped else axis - sum(1 for a in dropped if a < axis)
    inserted = sorted(a % (rank + len(axes)) for a in axes)
    for position in inserted:
        axis += position <= axis
    return axis
