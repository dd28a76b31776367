"""Channel labels across layout ops: Transpose, Reshape/Flatten/Squeeze/Unsqueeze (channel x
spatial mapping, head splits), Concat (offsets), Split and Slice (sizes and bounds rewritten);
see `_excise_rules.py`."""

from __future__ import annotations

import numpy as np
from graphsurg.passes._depgraph import DepGraph, Fixup
from graphsurg.passes._excise_folds import SYMBOLIC_REFUSALS, Fold, map_folded, picked_segments
from graphsurg.passes._excise_reshape import map_reshape, plan_shape_patch, reshape_target
from graphsurg.passes._excise_rules import axis_attr, rule
from graphsurg.passes._excise_static import split_sizes, static_ints

from graphsurg.ir import Op


@rule("Transpose", folds=True)
def transpose(dep: DepGraph, op: Op) -> None:
    slots, folds = dep.get(op.inputs[0]), dep.folds.get(op.inputs[0], {})
    if not slots and not folds:
        return
    rank = dep.rank(op.inputs[0])
    perm = op.attr("perm") or (list(reversed(range(rank))) if rank is not None else None)
    if perm is None:
        dep.fix_inputs(op, f"{op.label} has no perm and an input of unknown rank")
        dep.fix_folds(op)
        return
    for axis, labels in slots.items():
        dep.put(op.outputs[0], list(perm).index(axis), labels)
    for axis, fold in folds.items():
        dep.fold(op.outputs[0], list(perm).index(axis), fold)


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze", folds=True)
def reshape(dep: DepGraph, op: Op) -> None:
    """Maps labels through the reshape (Flatten repeats each channel over its positions); a split
    of channels into (heads, head size) ties each head, or fixes them with target=channels; a
    split into segments that are picked apart later (packed q, k, v) couples the segments'
    positions; heads folded into a symbolic dimension (batch*heads) are followed as folds."""
    x, out = op.inputs[0], op.outputs[0]
    folds = dep.folds.get(x, {})
    if not dep.get(x) and not folds:
        return
    if folds and op.op_type != "Reshape":
        dep.fix_folds(op)
        folds = {}
    in_shape, out_shape = dep.shape(x), _out_shape(dep, op)
    for axis, labels in dep.get(x).items():
        mapped = map_reshape(dep.labels, in_shape, out_shape, axis, labels)
        if isinstance(mapped, str) and op.op_type == "Reshape" and mapped in SYMBOLIC_REFUSALS:
            mapped = map_folded(dep, op, axis, labels, folded=False)
        _place(dep, op, labels, mapped)
    for axis, fold in folds.items():
        _place(dep, op, fold.labels, map_folded(dep, op, axis, fold.labels, folded=True))
    if op.op_type == "Reshape" and (dep.get(out) or dep.folds.get(out)):
        patch = plan_shape_patch(dep, op)
        if isinstance(patch, str):
            dep.fix_value(out, f"{op.label} {patch}")
        else:
            dep.fixups.append(Fixup("reshape", op, data=patch))


def _place(dep: DepGraph, op: Op, labels: np.ndarray, mapped: tuple | str) -> None:
    """Puts mapped labels on the reshape's output: (axes, grid[, outer factors of a fold])."""
    if isinstance(mapped, str):
        dep.labels.fix(labels, f"{op.label} {mapped}")
        return
    axes, grid, outer = mapped if len(mapped) == 3 else (*mapped, None)
    if len(axes) == 2 and outer is None and picked_segments(dep, op.outputs[0], axes[0]):
        for segment in grid[1:]:  # the same positions go from every segment, so they stay equal
            dep.labels.union_arrays(grid[0], segment)
        axes, grid = axes[1:], grid[0]
    if len(axes) > 1:
        if dep.mode == "channels":
            dep.labels.fix(labels, f"{op.label} splits them into heads or groups {list(grid.shape)}; "
                                   "use target=heads or auto")
            return
        dep.labels.mark(dep.labels.headed, grid)
        grid = np.array([dep.labels.tie(row) for row in grid.reshape(grid.shape[0], -1)], dtype=np.int64)
    if axes and outer is not None:
        dep.fold(op.outputs[0], axes[0], Fold(grid, outer))
    elif axes:
        dep.put(op.outputs[0], axes[0], grid)


def _out_shape(dep: DepGraph, op: Op) -> tuple | None:
    if op.op_type == "Reshape":
        return reshape_target(dep, op) or dep.base_shape(op.outputs[0])
    shape = dep.base_shape(op.outputs[0])
    if shape is not None or op.op_type != "Flatten":
        return shape
    in_shape = dep.shape(op.inputs[0])
    if in_shape is None:
        return None
    axis = axis_attr(op, "axis", 1, len(in_shape))

    def prod(dims: tuple) -> int | str:
        return int(np.prod(dims)) if all(isinstance(d, int) for d in dims) else "?"
    return prod(in_shape[:axis]), prod(in_shape[axis:])


@rule("Concat")
def concat(dep: DepGraph, op: Op) -> None:
    """Concat along labeled channels lays the inputs' labels side by side (offsets); other axes
    are coupled pointwise."""
    if not any(dep.get(v) for v in op.inputs):
        return
    rank = dep.rank(op.outputs[0]) or next(dep.rank(v) for v in op.inputs if dep.get(v))
    axis = axis_attr(op, "axis", 0, rank)
    if axis is None:
        dep.fix_inputs(op, f"{op.label} has an unknown rank")
        return
    operands = [(port, [j if j != axis else ("cat", port) for j in range(rank)]) for port in range(len(op.inputs))]
    joined = dep.align(op, operands)
    for joint, labels in joined.items():
        if not isinstance(joint, tuple):
            dep.put(op.outputs[0], joint, labels)
    if not any(("cat", port) in joined for port in range(len(op.inputs))):
        return
    parts = []
    for port, value in enumerate(op.inputs):
        labels = joined.get(("cat", port))
        if labels is None:
            size = dep.size(value, axis)
            if size is None:
                for other in joined.values():
                    dep.labels.fix(other, f"{op.label} joins them with {value.name!r} of unknown size")
                return
            labels = dep.labels.new(size)  # positions of a tensor without labels: never removed
            dep.labels.fix(labels, f"{value.name!r} has no prunable channels")
        parts.append(labels)
    dep.put(op.outputs[0], axis, np.concatenate(parts))


@rule("Split")
def split(dep: DepGraph, op: Op) -> None:
    x = op.inputs[0]
    if not dep.get(x):
        return
    axis = axis_attr(op, "axis", 0, dep.rank(x))
    for a, labels in dep.get(x).items():
        if a != axis:
            for out in op.outputs:
                dep.put(out, a, labels)
            continue
        sizes = split_sizes(dep, op, len(labels))
        if sizes is None:
            dep.labels.fix(labels, f"{op.label} splits them at positions that are not constant")
            continue
        offsets = np.cumsum([0, *sizes])
        for i, out in enumerate(op.outputs):
            dep.put(out, a, labels[offsets[i]:offsets[i + 1]])
        dep.fixups.append(Fixup("split", op, labels, data={"sizes": sizes}))


@rule("Slice")
def slice_(dep: DepGraph, op: Op) -> None:
    x = op.inputs[0]
    if not dep.get(x):
        return
    rank = dep.rank(x)
    params = _slice_params(dep, op, rank)
    for axis, labels in dep.get(x).items():
        if params is None:
            dep.labels.fix(labels, f"{op.label} slices with bounds that are not constant")
            continue
        if axis not in params:
            dep.put(op.outputs[0], axis, labels)
            continue
        start, end, step, index, starts, ends = params[axis]
        if step != 1:
            dep.labels.fix(labels, f"{op.label} slices them with a step")
            continue
        start, end = _clamp(start, len(labels)), _clamp(end, len(labels))
        dep.fixups.append(Fixup("slice", op, labels, data={"index": index, "start": start, "end": end,
                                                                  "starts": starts, "ends": ends}))
        dep.put(op.outputs[0], axis, labels[start:max(start, end)])


def _clamp(i: int, n: int) -> int:
    return max(0, min(n, i + n if i < 0 else i))


def _slice_params(dep: DepGraph, op: Op, rank: int | None) -> dict | None:
    """axis -> (start, end, step, position in the lists, starts, ends); bounds may be computed
    from shapes (torch's chunk) as long as they do not depend on symbolic dimensions."""
    if rank is None:
        return None
    if dep.model.opset < 10:
        starts, ends, axes, steps = op.attr("starts"), op.attr("ends"), op.attr("axes"), None
    else:
        starts, ends = static_ints(dep, op.inputs[1]), static_ints(dep, op.inputs[2])
        optional = [static_ints(dep, op.inputs[p]) if len(op.inputs) > p and op.inputs[p] is not None else ()
                    for p in (3, 4)]
        if any(o is None for o in optional):
            return None
        axes, steps = (o or None for o in optional)
    if starts is None or ends is None:
        return None
    starts, ends = list(starts), list(ends)
    axes = list(axes) if axes is not None else list(range(len(starts)))
    steps = list(steps) if steps is not None else [1] * len(starts)
    return {a % rank: (starts[i], ends[i], steps[i], i, starts, ends) for i, a in enumerate(axes)}
