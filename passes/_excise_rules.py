"""How channel labels cross each op (see `_depgraph.py` for the model).

One rule per op family. A rule reads the labels on its op's inputs and either passes them on
(with the axis mapping the op implies), couples them (`DepGraph.align`), registers the constants
and attributes that must shrink with them, or fixes them with a reason. Ops without a rule fix
every label they receive.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from graphsurg.passes._depgraph import DepGraph, Fixup
from graphsurg.passes._excise_reshape import map_reshape, plan_shape_patch, reshape_target
from graphsurg.passes._excise_static import static_ints
from graphsurg.passes._excise_weights import WeightRef, const_ints, int_list

from graphsurg.ir import Op, Value

Rule = Callable[[DepGraph, Op], None]
RULES: dict[str, Rule] = {}


def rule(*names: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for name in names:
            RULES[name] = fn
        return fn
    return register


def generic_rule(dep: DepGraph, op: Op) -> None:
    if any(dep.get(v) for v in op.inputs):
        dep.fix_inputs(op, f"they flow into {op.op_type} {op.label}, which the pass cannot shrink")


def _axis(op: Op, name: str, default: int, rank: int | None) -> int | None:
    axis = int(op.attr(name, default))
    if rank is None:
        return axis if axis >= 0 else None
    return axis % rank if -rank <= axis < rank else None


def _extra_outputs_used(dep: DepGraph, op: Op) -> bool:
    return any(v is not None and dep.graph.is_used(v) for v in op.outputs[1:])


# ---- shape-neutral ops ------------------------------------------------------------------
UNARY = (
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
    "Softsign", "Gelu", "Mish", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Floor", "Ceil",
    "Round", "Sign", "Sin", "Cos", "Tan", "Sinh", "Cosh", "Atan", "Asin", "Acos", "Not", "IsNaN", "IsInf",
    "Cast", "CastLike", "Identity", "ThresholdedRelu", "Shrink", "Clip", "Dropout",
)


@rule(*UNARY)
def passthrough(dep: DepGraph, op: Op) -> None:
    """Elementwise on input 0 (Clip's bounds are scalars, CastLike's second input gives a dtype)."""
    for out in op.outputs if op.op_type == "Dropout" else op.outputs[:1]:
        for axis, labels in dep.get(op.inputs[0]).items():
            dep.put(out, axis, labels)


ELEMENTWISE = (
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where", "And", "Or", "Xor",
    "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Mod", "BitShift",
)


@rule(*ELEMENTWISE)
def elementwise(dep: DepGraph, op: Op) -> None:
    """Broadcasting n-ary ops: residual Add/Sub/Mul couple their operands' channels pointwise."""
    if not any(dep.get(v) for v in op.inputs):
        return
    ranks = [dep.rank(v) for v in op.inputs]
    if any(r is None for r in ranks):
        dep.fix_inputs(op, f"{op.label} has an operand of unknown rank")
        return
    top = max(ranks)
    operands = [(port, list(range(top - rank, top))) for port, rank in enumerate(ranks)]
    for joint, labels in dep.align(op, operands).items():
        dep.put(op.outputs[0], joint, labels)


@rule("Shape", "Size", "Constant", "ConstantOfShape")
def no_channels(dep: DepGraph, op: Op) -> None:
    """Shape and Size read sizes, not values: their results adapt when channels go."""


@rule("Transpose")
def transpose(dep: DepGraph, op: Op) -> None:
    slots = dep.get(op.inputs[0])
    if not slots:
        return
    rank = dep.rank(op.inputs[0])
    perm = op.attr("perm") or (list(reversed(range(rank))) if rank is not None else None)
    if perm is None:
        dep.fix_inputs(op, f"{op.label} has no perm and an input of unknown rank")
        return
    for axis, labels in slots.items():
        dep.put(op.outputs[0], list(perm).index(axis), labels)


# ---- layers with weights -------------------------------------------------------------
def _unusable(dep: DepGraph, op: Op, ref: WeightRef | None) -> str | None:
    if ref is None:
        return f"{op.label}'s weight is not a constant"
    if dep.excluded(op, ref):
        return f"{op.label} is excluded"
    if not ref.exclusive:
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


@rule("MatMul")
def matmul(dep: DepGraph, op: Op) -> None:
    """MatMul with a constant 2-D operand is a layer; between activations it is attention:
    batch axes (heads) are coupled and a labeled contraction axis must match on both sides."""
    a, b = op.inputs
    ra, rb = dep.rank(a), dep.rank(b)
    if not dep.get(a) and not dep.get(b) and (ra is None or rb is None):
        return
    if ra is None or rb is None or ra < 2 or rb < 2:
        dep.fix_inputs(op, f"{op.label} has an operand of unknown rank or a vector operand")
        return
    const_a, const_b = dep.graph.const_value(a) is not None or dep.weight(op, 0) is not None, \
        dep.graph.const_value(b) is not None or dep.weight(op, 1) is not None
    if const_b and not const_a and rb == 2:
        _matmul_layer(dep, op, data_port=0, weight_port=1)
    elif const_a and not const_b and ra == 2:
        _matmul_layer(dep, op, data_port=1, weight_port=0)
    elif not const_a and not const_b:
        _matmul_activations(dep, op, ra, rb)
    else:
        dep.fix_inputs(op, f"{op.label} multiplies by a batched constant")


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
    for joint, labels in dep.align(op, [(0, joints_a), (1, joints_b)]).items():
        if joint == "K":
            dep.labels.mark(dep.labels.live, labels)  # their product leaves through no weight
        else:
            dep.put(op.outputs[0], joint, labels)


@rule("Gather")
def gather(dep: DepGraph, op: Op) -> None:
    """Gather from a constant table is an embedding layer (its columns are channels); Gather on
    a labeled axis with constant indices picks channels, so its indices are remapped."""
    data, indices, out = op.inputs[0], op.inputs[1], op.outputs[0]
    rank_d, rank_i = dep.rank(data), dep.rank(indices)
    axis = _axis(op, "axis", 0, rank_d)
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
    dep.fixups.append(Fixup("gather", op, labels, axis))
    dep.put(op.outputs[0], axis, labels[picked])


# ---- per-channel parameters and normalizations -----------------------------------------
def _per_channel(dep: DepGraph, op: Op, ports: tuple[int, ...]) -> None:
    """BatchNorm/InstanceNorm: channel axis 1 scales each channel by its own constants."""
    x = op.inputs[0]
    if not dep.get(x):
        return
    if _extra_outputs_used(dep, op):
        dep.fix_inputs(op, f"{op.label} exports training statistics")
    for axis, labels in dep.get(x).items():
        if axis != 1:
            dep.labels.fix(labels, f"{op.label} normalizes over them")
        else:
            for port in ports:
                ref = dep.weight(op, port)
                if ref is None:
                    dep.labels.fix(labels, f"{op.label}'s parameter {port} is not a constant")
                else:  # the scale weighs the channel like a layer's weights; shift and statistics do not
                    dep.member(ref, 0, labels, "scale" if port == 1 else "param")
        dep.put(op.outputs[0], axis, labels)


@rule("BatchNormalization")
def batchnorm(dep: DepGraph, op: Op) -> None:
    _per_channel(dep, op, (1, 2, 3, 4))


@rule("InstanceNormalization")
def instancenorm(dep: DepGraph, op: Op) -> None:
    _per_channel(dep, op, (1, 2))


@rule("LayerNormalization")
def layernorm(dep: DepGraph, op: Op) -> None:
    """LayerNorm over labeled axes: scale and bias shrink with them and the statistics are taken
    over the channels that remain (as a pruned LayerNorm in Torch-Pruning)."""
    x = op.inputs[0]
    rank = dep.rank(x)
    if not dep.get(x):
        return
    axis = _axis(op, "axis", -1, rank)
    if axis is None or _extra_outputs_used(dep, op):
        dep.fix_inputs(op, f"{op.label} has an unknown rank or exports its statistics")
        return
    operands = [(0, list(range(rank)))]
    for port in (1, 2):
        prank = dep.rank(op.inputs[port]) if port < len(op.inputs) else None
        if prank is not None:
            operands.append((port, list(range(rank - prank, rank))))
    for joint, labels in dep.align(op, operands).items():
        if joint >= axis:
            dep.labels.mark(dep.labels.live, labels)
        dep.put(op.outputs[0], joint, labels)


@rule("LRN")
def local_response_norm(dep: DepGraph, op: Op) -> None:
    """LRN normalizes each channel by its neighbours: the channels that remain become neighbours
    (like a pruned LayerNorm's statistics); never provably dead."""
    for axis, labels in dep.get(op.inputs[0]).items():
        if axis == 1:
            dep.labels.mark(dep.labels.live, labels)
        dep.put(op.outputs[0], axis, labels)


@rule("Softmax", "LogSoftmax", "Hardmax")
def softmax(dep: DepGraph, op: Op) -> None:
    rank = dep.rank(op.inputs[0])
    new_semantics = dep.model.opset >= 13
    axis = _axis(op, "axis", -1 if new_semantics else 1, rank)
    for a, labels in dep.get(op.inputs[0]).items():
        if axis is None or a == axis or (not new_semantics and a >= axis):
            dep.labels.fix(labels, f"{op.label} normalizes across them")
        dep.put(op.outputs[0], a, labels)


REDUCTIONS = ("ReduceMean", "ReduceSum", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp",
              "ReduceMax", "ReduceMin", "ReduceProd", "ArgMax", "ArgMin")


@rule(*REDUCTIONS)
def reduction(dep: DepGraph, op: Op) -> None:
    """Reductions over channels (a decomposed LayerNorm's mean, a sum) take fewer channels;
    ReduceProd/ArgMax/ArgMin depend on every channel, so they fix them."""
    x = op.inputs[0]
    if not dep.get(x):
        return
    rank = dep.rank(x)
    axes = _reduce_axes(dep, op, rank)
    if axes is None:
        dep.fix_inputs(op, f"{op.label} reduces over axes that are not constant")
        return
    keep = int(op.attr("keepdims", 1))
    for a, labels in dep.get(x).items():
        if a in axes:
            if op.op_type in ("ReduceProd", "ArgMax", "ArgMin"):
                dep.labels.fix(labels, f"{op.label} depends on every channel")
            else:
                dep.labels.mark(dep.labels.live, labels)
        else:
            dep.put(op.outputs[0], a if keep else a - sum(1 for r in axes if r < a), labels)


def _reduce_axes(dep: DepGraph, op: Op, rank: int | None) -> set[int] | None:
    if rank is None:
        return None
    if op.op_type in ("ArgMax", "ArgMin"):
        return {_axis(op, "axis", 0, rank)}
    axes = [int(a) for a in op.attr("axes")] if op.attr("axes") is not None else None
    if axes is None and len(op.inputs) > 1 and op.inputs[1] is not None:
        axes = static_ints(dep, op.inputs[1])
        if axes is None:
            return None
    if axes is None:
        return set() if op.attr("noop_with_empty_axes", 0) else set(range(rank))
    return {a % rank for a in axes} if axes else (set() if op.attr("noop_with_empty_axes", 0) else set(range(rank)))


@rule("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def pooling(dep: DepGraph, op: Op) -> None:
    x = op.inputs[0]
    if len(op.outputs) > 1 and _extra_outputs_used(dep, op):
        dep.fix_inputs(op, f"{op.label}'s indices output counts channels")
        return
    for axis, labels in dep.get(x).items():
        if axis > 1:
            dep.labels.fix(labels, f"{op.label} pools over them")
        dep.put(op.outputs[0], axis, labels)


@rule("Pad")
def pad(dep: DepGraph, op: Op) -> None:
    x = op.inputs[0]
    if not dep.get(x):
        return
    pads = int_list(dep.graph, op, "pads", 1)
    rank = dep.rank(x)
    axes = const_ints(dep.graph, op.inputs[3]) if len(op.inputs) > 3 else None
    for axis, labels in dep.get(x).items():
        padded = pads is None or rank is None or _pads_touch(pads, rank, axis, axes)
        if padded:
            dep.labels.fix(labels, f"{op.label} pads them")
        dep.put(op.outputs[0], axis, labels)


def _pads_touch(pads: list[int], rank: int, axis: int, axes: list[int] | None) -> bool:
    axes = [a % rank for a in axes] if axes is not None else list(range(rank))
    if axis not in axes:
        return False
    i = axes.index(axis)
    return bool(pads[i] or pads[i + len(axes)])


@rule("Resize", "Upsample")
def resize(dep: DepGraph, op: Op) -> None:
    x = op.inputs[0]
    if not dep.get(x):
        return
    scales = op.attr("scales")
    if scales is None:
        port = 2 if op.op_type == "Resize" and dep.model.opset >= 11 else 1
        array = dep.graph.const_value(op.inputs[port]) if port < len(op.inputs) else None
        scales = None if array is None or array.size == 0 else list(array.reshape(-1))
    sizes = op.inputs[3] if op.op_type == "Resize" and len(op.inputs) > 3 else None
    for axis, labels in dep.get(x).items():
        if scales is None or sizes is not None or axis >= len(scales) or scales[axis] != 1:
            dep.labels.fix(labels, f"{op.label} resizes with sizes or scales that cover them")
        dep.put(op.outputs[0], axis, labels)


@rule("QuantizeLinear", "DequantizeLinear")
def quantize(dep: DepGraph, op: Op) -> None:
    if all(dep.size(v, 0) in (1, None) and (dep.rank(v) or 0) <= 1 for v in op.inputs[1:] if v is not None):
        passthrough(dep, op)  # per-tensor scale: elementwise
    else:
        generic_rule(dep, op)


@rule("Expand", "Tile")
def expand(dep: DepGraph, op: Op) -> None:
    """Fine where the shape/repeats keep the labeled axis as it is (1 in both)."""
    x = op.inputs[0]
    if not dep.get(x):
        return
    spec = dep.graph.const_value(op.inputs[1])
    rank_out = dep.rank(op.outputs[0])
    for axis, labels in dep.get(x).items():
        out_axis = axis + (rank_out - dep.rank(x)) if rank_out is not None else None
        if spec is None or out_axis is None or out_axis >= spec.size or \
                int(spec.reshape(-1)[out_axis if op.op_type == "Expand" else axis]) != 1:
            dep.labels.fix(labels, f"{op.label} gives the channel axis an explicit size")
            continue
        dep.put(op.outputs[0], out_axis, labels)


# ---- layout ops ---------------------------------------------------------------------------
@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(dep: DepGraph, op: Op) -> None:
    """Maps labels through the reshape (Flatten repeats each channel over its positions); a split
    of channels into (heads, head size) ties each head, or fixes them with target=channels."""
    x, out = op.inputs[0], op.outputs[0]
    if not dep.get(x):
        return
    in_shape, out_shape = dep.shape(x), _out_shape(dep, op)
    for axis, labels in dep.get(x).items():
        mapped = map_reshape(dep.labels, in_shape, out_shape, axis, labels)
        if isinstance(mapped, str):
            dep.labels.fix(labels, f"{op.label} {mapped}")
            continue
        axes, grid = mapped
        if len(axes) > 1:
            if dep.mode == "channels":
                dep.labels.fix(labels, f"{op.label} splits them into heads or groups {list(grid.shape)}; "
                                       "use target=heads or auto")
                continue
            dep.labels.mark(dep.labels.headed, grid)
            grid = np.array([dep.labels.tie(row) for row in grid.reshape(grid.shape[0], -1)], dtype=np.int64)
        if axes:
            dep.put(out, axes[0], grid)
    if op.op_type == "Reshape" and dep.get(out):
        patch = plan_shape_patch(dep, op)
        if isinstance(patch, str):
            dep.fix_value(out, f"{op.label} {patch}")
        else:
            dep.fixups.append(Fixup("reshape", op, data=patch))


def _out_shape(dep: DepGraph, op: Op) -> tuple | None:
    if op.op_type == "Reshape":
        return reshape_target(dep, op) or dep.base_shape(op.outputs[0])
    shape = dep.base_shape(op.outputs[0])
    if shape is not None or op.op_type != "Flatten":
        return shape
    in_shape = dep.shape(op.inputs[0])
    if in_shape is None:
        return None
    axis = _axis(op, "axis", 1, len(in_shape))

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
    axis = _axis(op, "axis", 0, rank)
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
    axis = _axis(op, "axis", 0, dep.rank(x))
    for a, labels in dep.get(x).items():
        if a != axis:
            for out in op.outputs:
                dep.put(out, a, labels)
            continue
        sizes = _split_sizes(dep, op, len(labels))
        if sizes is None:
            dep.labels.fix(labels, f"{op.label} splits them at positions that are not constant")
            continue
        offsets = np.cumsum([0, *sizes])
        for i, out in enumerate(op.outputs):
            dep.put(out, a, labels[offsets[i]:offsets[i + 1]])
        dep.fixups.append(Fixup("split", op, labels, a, data={"sizes": sizes}))


def _split_sizes(dep: DepGraph, op: Op, total: int) -> list[int] | None:
    sizes = [int(v) for v in op.attr("split")] if op.attr("split") is not None else None
    if sizes is None and len(op.inputs) > 1 and op.inputs[1] is not None:
        sizes = static_ints(dep, op.inputs[1])
        if sizes is None:
            return None
    if sizes is None:
        count = int(op.attr("num_outputs", len(op.outputs)))
        chunk = -(-total // count)
        sizes = [min(chunk, total - i * chunk) for i in range(count)]
    return sizes if sum(sizes) == total and len(sizes) == len(op.outputs) else None


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
        dep.fixups.append(Fixup("slice", op, labels, axis, data={"index": index, "start": start, "end": end,
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
