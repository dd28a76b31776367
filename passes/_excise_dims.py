"""Where a channel count read by `Shape` ends up.

`Shape(x)` on a labeled axis turns the channel count into data: exporters use it for Reshape
targets (`reshape(b, s, d)` with d = x.shape[2]) and Slice bounds (torch's `chunk`). After
excision the count changes at run time. That is safe only where the count lands in a place the
pass rewrites anyway: an entry of a Reshape target whose output axis is labeled, the bounds of a
Slice or the sizes of a Split along a labeled axis (all become constants), or a shape input
that is static as a whole (it is frozen: the value it had before excision becomes a constant).
Anywhere else (a graph output, data arithmetic, a shape that also depends on a symbolic
dimension) the labels are fixed.
"""

from __future__ import annotations

import numpy as np
from graphsurg.passes._depgraph import Fixup
from graphsurg.passes._excise_static import static_ints

from graphsurg.ir import Op, Value, dtypes

_TRANSPARENT = frozenset({"Cast", "Identity", "Add", "Sub", "Mul", "Div", "Max", "Min", "Floor", "Ceil"})


def check_dimension_reads(dep) -> None:
    """Fixes the labels whose count a Shape op hands to a place the pass does not rewrite."""
    for op in dep.graph.ops:
        if op.op_type != "Shape" or op.domain not in ("", "ai.onnx"):
            continue
        x = op.inputs[0]
        rank = dep.rank(x)
        if rank is None:
            continue
        start, end = op.attr("start", 0) % (rank + 1), op.attr("end", rank)
        end = end % (rank + 1) if end < 0 else min(end, rank)
        for axis, labels in dep.get(x).items():
            if start <= axis < end:
                blocker = _blocker(dep, op.outputs[0], axis - start)
                if blocker:
                    dep.labels.fix(labels, f"{op.label} reads their count, which {blocker} uses")
        for axis, fold in dep.folds.get(x, {}).items():
            if start <= axis < end and _blocker(dep, op.outputs[0], axis - start):
                dep.labels.fix(fold.labels, f"{op.label} reads their count folded into a symbolic dimension")


def _blocker(dep, value: Value, position: int | None) -> str | None:
    """Follows one element of a shape vector; returns the first use the pass cannot rewrite."""
    stack, seen = [(value, position)], set()
    while stack:
        current, pos = stack.pop()
        if (current, pos) in seen:
            continue
        seen.add((current, pos))
        if current in dep.graph.outputs:
            return f"the graph output {current.name!r}"
        for op, port in dep.graph.consumers(current):
            found = _follow(dep, op, port, pos)
            if isinstance(found, str):
                return found
            stack.extend((out, p) for out, p in found if out is not None)
    return None


def _follow(dep, op: Op, port: int, pos: int | None) -> list[tuple[Value, int | None]] | str:
    kind, out = op.op_type, op.outputs[0]
    if kind in _TRANSPARENT:
        return [(out, pos)]
    if kind == "Gather" and port == 0:
        picked = static_ints(dep, op.inputs[1])
        if picked is None:
            return op.label
        scalar = dep.rank(op.inputs[1]) == 0
        return [(out, None if scalar else i) for i, k in enumerate(picked) if k == pos]
    if kind in ("Unsqueeze", "Squeeze") and port == 0:
        return [(out, 0 if kind == "Unsqueeze" else None)]
    if kind == "Slice" and port == 0:
        starts, ends = static_ints(dep, op.inputs[1]), static_ints(dep, op.inputs[2])
        length = dep.size(op.inputs[0], 0)
        if starts is None or ends is None or pos is None or length is None:
            return op.label
        start, end, _ = slice(starts[0], ends[0]).indices(length)  # x[-1:] counts from the end
        return [(out, pos - start)] if start <= pos < end else []
    if kind == "Concat":
        lengths = [dep.size(v, 0) if dep.rank(v) == 1 else None for v in op.inputs[:port]]
        if None in lengths:
            return op.label
        return [(out, sum(lengths) + (pos or 0))]
    return _rewritten(dep, op, port, pos)


def _rewritten(dep, op: Op, port: int, pos: int | None) -> list | str:
    """Reaching a shape input: fine where that entry is rewritten as a constant anyway, or where
    the whole input is static (it is then frozen as a constant)."""
    kinds = {f.kind for f in dep.fixups if f.op is op}
    if op.op_type == "Reshape" and port == 1 and "reshape" in kinds and (
            pos in dep.get(op.outputs[0]) or pos in dep.folds.get(op.outputs[0], {})):
        return []
    if op.op_type == "Slice" and port in (1, 2) and any(f.op is op and f.kind == "slice" and f.data["index"] == pos
                                                        for f in dep.fixups):
        return []
    if op.op_type == "Split" and port == 1 and "split" in kinds:
        return []
    # A shape input that another fixup of this op rewrites cannot also be frozen to its old value.
    if (op.op_type, port) in _SHAPE_INPUTS and not kinds & _REWRITES and _freeze(dep, op, port):
        return []
    return f"the {op.op_type} {op.label}" if op.op_type != "Reshape" else f"the target shape of {op.label}"


_REWRITES = frozenset({"reshape", "slice", "split", "expand"})  # fixups that rewrite a shape input
_SHAPE_INPUTS = {("Reshape", 1), ("Slice", 1), ("Slice", 2), ("Slice", 3), ("Slice", 4), ("Split", 1),
                 ("Expand", 1), ("Tile", 1), ("ConstantOfShape", 0), ("Range", 0), ("Range", 1)}


def _freeze(dep, op: Op, port: int) -> bool:
    """Registers a fixup that replaces a static shape input by its value before excision."""
    if any(f.kind == "freeze" and f.op is op and f.data["port"] == port for f in dep.fixups):
        return True
    values = static_ints(dep, op.inputs[port])
    if values is None:
        return False
    dtype = dtypes.numpy_dtype(op.inputs[port].dtype) if op.inputs[port].dtype else np.dtype(np.int64)
    shape = dep.shape(op.inputs[port])
    dep.fixups.append(Fixup("freeze", op, data={"port": port, "values": np.array(values, dtype=dtype).reshape(
        shape if shape is not None and all(isinstance(d, int) for d in shape) else -1)}))
    return True
