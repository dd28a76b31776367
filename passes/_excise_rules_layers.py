"""Channel labels at the layers that own them: Conv (plain, grouped, depthwise), ConvTranspose,
Gemm, MatMul (a layer with a constant operand, or attention between activations) and Gather
(an embedding table, or picking channels); see `_excise_rules.py`."""

from __future__ import annotations

import numpy as np
from graphsurg.passes._depgraph import DepGraph, Fixup
from graphsurg.passes._excise_rules import axis_attr, rule
from graphsurg.passes._excise_weights import WeightRef

from graphsurg.ir import Op, Value


def _unusable(dep: DepGraph, op: Op, ref: WeightRef | None) -> str | None:
    if ref is None:
        return f"{op.label}'s weight is not a constant"
    if dep.excluded(op, ref):
        return f"{op.label} is excluded"
    if not ref.exclusive and not ref.part:
        return f"{op.label}'s weight {ref.name!r} is shared with other ops or is a graph input"
    return None


def _bias(dep: DepGraph, op: Op, port: int, labels: np.ndarray) -> None:
    """A bias-like input broadcast along the last axis (Conv B, Gemm C)."""
    value = op.inputs[port] if port < len(op.inputs) else None
    if value is None:
        return
    rank = dep.rank(value)
    size = dep.size(value, rank - 1) if rank else 1
    if size == 1 or rank == 0:
        return
    ref = dep.weight(op, port)
    if ref is None or size != len(labels):
        dep.labels.fix(labels, f"{op.label}'s bias {value.name!r} is not a per-channel constant")
    else:
        dep.member(ref, rank - 1, labels, "param")


def _weight_shape(ref: WeightRef) -> tuple[int, ...]:
    return tuple(ref.effective().shape)


def _layer(dep: DepGraph, op: Op, ref: WeightRef | None, in_labels: np.ndarray | None, w_in: int, w_out: int,
           refusal: str | None = None) -> np.ndarray | None:
    """A layer with weight `ref`: its input axis `w_in` is a sink of `in_labels`, its output axis
    `w_out` gets new labels (returned). A weight the pass cannot slice fixes the input labels."""
    reason = _unusable(dep, op, ref) or refusal
    if reason:
        if in_labels is not None:
            dep.labels.fix(in_labels, reason)
        return None
    if in_labels is not None:
        dep.member(ref, w_in, in_labels, "in")
    labels = dep.new_producer(op, _weight_shape(ref)[w_out])
    dep.member(ref, w_out, labels, "out")
    return labels


@rule("Conv")
def conv(dep: DepGraph, op: Op) -> None:
    """Conv: input channels are a sink of the incoming labels, output channels new labels;
    grouped and depthwise Conv tie each group's input channels and pass them to its outputs."""
    x, ref, group = op.inputs[0], dep.weight(op, 1), int(op.attr("group", 1))
    in_labels = dep.get(x).get(1)
    _fix_spatial(dep, op, x)
    if group == 1:
        labels = _layer(dep, op, ref, in_labels, 1, 0)
    else:
        labels = _grouped(dep, op, ref, in_labels, group)
    if labels is not None:
        _bias(dep, op, 2, labels)
        dep.put(op.outputs[0], 1, labels)


def _grouped(dep: DepGraph, op: Op, ref: WeightRef | None, in_labels: np.ndarray | None,
             group: int) -> np.ndarray | None:
    """Depthwise (one input channel per group): output channels follow their input channel and
    whole groups go. Other grouped Convs keep their group count and lose the same within-group
    positions in every group (input channels tied across groups, output channels likewise)."""
    reason = _unusable(dep, op, ref)
    cout, per_group = _weight_shape(ref)[:2] if reason is None else (0, 0)
    if reason is None and in_labels is not None and len(in_labels) != group * per_group:
        reason = f"{op.label}'s input channels do not match its weight"
    if reason:
        if in_labels is not None:
            dep.labels.fix(in_labels, reason)
        return None
    if per_group == 1:
        if in_labels is None or cout % group:
            return None  # the input channels cannot move, so neither can the groups
        dep.fixups.append(Fixup("conv_groups", op, in_labels))
        labels = np.repeat(in_labels, cout // group)
    else:
        if in_labels is not None:
            columns = np.array([dep.labels.tie(column) for column in in_labels.reshape(group, per_group).T])
            dep.member(ref, 1, columns, "in")
        labels = np.tile(dep.new_producer(op, cout // group), group)
    dep.member(ref, 0, labels, "out")
    return labels


@rule("ConvTranspose")
def conv_transpose(dep: DepGraph, op: Op) -> None:
    x = op.inputs[0]
    _fix_spatial(dep, op, x)
    grouped = None if int(op.attr("group", 1)) == 1 else f"{op.label} is a grouped ConvTranspose"
    labels = _layer(dep, op, dep.weight(op, 1), dep.get(x).get(1), 0, 1, grouped)
    if labels is not None:
        _bias(dep, op, 2, labels)
        dep.put(op.outputs[0], 1, labels)


def _fix_spatial(dep: DepGraph, op: Op, x: Value) -> None:
    for axis, labels in dep.get(x).items():
        if axis != 1:
            dep.labels.fix(labels, f"{op.label} mixes them spatially")


@rule("Gemm")
def gemm(dep: DepGraph, op: Op) -> None:
    a = op.inputs[0]
    k_axis = 0 if op.attr("transA", 0) else 1
    for axis, labels in dep.get(a).items():
        if axis != k_axis:
            dep.labels.fix(labels, f"{op.label} reads them as rows")
    w_in, w_out = (1, 0) if op.attr("transB", 0) else (0, 1)
    labels = _layer(dep, op, dep.weight(op, 1), dep.get(a).get(k_axis), w_in, w_out)
    if labels is not None:
        _bias(dep, op, 2, labels)
        dep.put(op.outputs[0], 1, labels)


@rule("MatMul", folds=True)
def matmul(dep: DepGraph, op: Op) -> None:
    """MatMul with a constant 2-D operand is a layer; between activations it is attention:
    batch axes (heads, also folded into the batch) are coupled and a labeled contraction axis
    must match on both sides."""
    if not _matmul(dep, op):
        dep.fix_folds(op)


def _matmul(dep: DepGraph, op: Op) -> bool:
    """Applies the rule; True when it was attention between activations (which moves folds)."""
    a, b = op.inputs
    ra, rb = dep.rank(a), dep.rank(b)
    if not dep.get(a) and not dep.get(b) and (ra is None or rb is None):
        return False
    if ra is None or rb is None or ra < 2 or rb < 2:
        dep.fix_inputs(op, f"{op.label} has an operand of unknown rank or a vector operand")
        return False
    const_a, const_b = dep.graph.const_value(a) is not None or dep.weight(op, 0) is not None, \
        dep.graph.const_value(b) is not None or dep.weight(op, 1) is not None
    if const_b and not const_a and rb == 2:
        _matmul_layer(dep, op, data_port=0, weight_port=1)
    elif const_a and not const_b and ra == 2:
        _matmul_layer(dep, op, data_port=1, weight_port=0)
    elif not const_a and not const_b:
        _matmul_activations(dep, op, ra, rb)
        return True
    else:
        dep.fix_inputs(op, f"{op.label} multiplies by a batched constant")
    return False


def _matmul_layer(dep: DepGraph, op: Op, data_port: int, weight_port: int) -> None:
    data, ref, out = op.inputs[data_port], dep.weight(op, weight_port), op.outputs[0]
    rank, out_rank = dep.rank(data), dep.rank(out) or dep.rank(data)
    # x @ W contracts x's last axis with W's rows; W @ x contracts x's second-to-last with W's columns.
    k_axis, w_in, w_out = (rank - 1, 0, 1) if weight_port == 1 else (rank - 2, 1, 0)
    out_axis = out_rank - 1 if weight_port == 1 else out_rank - 2
    for axis, labels in dep.get(data).items():
        if axis != k_axis:
            dep.put(out, axis + out_rank - rank, labels)
    labels = _layer(dep, op, ref, dep.get(data).get(k_axis), w_in, w_out)
    if labels is not None:
        dep.put(out, out_axis, labels)


def _matmul_activations(dep: DepGraph, op: Op, ra: int, rb: int) -> None:
    top = max(ra, rb)
    joints_a = [top - ra + i if i < ra - 1 else "K" for i in range(ra)]
    joints_b = [top - rb + i if i != rb - 2 else "K" for i in range(rb)]
    operands = [(0, joints_a), (1, joints_b)]
    for joint, labels in dep.align(op, operands).items():
        if joint == "K":
            dep.labels.mark(dep.labels.live, labels)  # their product leaves through no weight
        else:
            dep.put(op.outputs[0], joint, labels)
    for joint, fold in dep.align_folds(op, operands).items():
        if joint == "K":
            dep.labels.fix(fold.labels, f"{op.label} contracts them folded into a symbolic dimension")
        else:
            dep.fold(op.outputs[0], joint, fold)


@rule("Gather")
def gather(dep: DepGraph, op: Op) -> None:
    """Gather from a constant table is an embedding layer (its columns are channels); Gather on
    a labeled axis with constant indices picks channels, so its indices are remapped."""
    data, indices, out = op.inputs[0], op.inputs[1], op.outputs[0]
    rank_d, rank_i = dep.rank(data), dep.rank(indices)
    axis = axis_attr(op, "axis", 0, rank_d)
    table = dep.weight(op, 0)
    if table is not None and not dep.get(data) and rank_d == 2 and axis == 0 and rank_i is not None:
        if _unusable(dep, op, table) is None and dep.graph.const_value(indices) is None:
            labels = dep.new_producer(op, _weight_shape(table)[1])
            dep.member(table, 1, labels, "out")
            dep.put(out, rank_i, labels)
        return
    if axis is None or rank_i is None:
        dep.fix_inputs(op, f"{op.label} has inputs of unknown rank")
        return
    for a, labels in dep.get(data).items():
        if a < axis:
            dep.put(out, a, labels)
        elif a > axis:
            dep.put(out, a + rank_i - 1, labels)
        else:
            _gather_channels(dep, op, axis, labels)


def _gather_channels(dep: DepGraph, op: Op, axis: int, labels: np.ndarray) -> None:
    picked = dep.graph.const_value(op.inputs[1])
    if picked is None or picked.ndim > 1:
        dep.labels.fix(labels, f"{op.label} picks channels with indices that are not a constant vector")
        return
    picked = np.asarray(picked, dtype=np.int64) % len(labels)
    if picked.ndim == 0:
        dep.labels.fix(labels[[int(picked)]], f"{op.label} picks out one channel")
        return
    dep.fixups.append(Fixup("gather", op, labels))
    dep.put(op.outputs[0], axis, labels[picked])
