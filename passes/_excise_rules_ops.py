"""Channel labels across shape-neutral and elementwise ops, normalizations, reductions, pooling
and padding (see `_excise_rules.py`)."""

from __future__ import annotations

from graphsurg.passes._depgraph import DepGraph, Fixup
from graphsurg.passes._excise_rules import axis_attr, extra_outputs_used, generic_rule, rule
from graphsurg.passes._excise_static import ints_param, static_ints
from graphsurg.passes._excise_weights import const_ints, int_list

from graphsurg.ir import Op

# ---- shape-neutral ops ------------------------------------------------------------------
UNARY = (
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
    "Softsign", "Gelu", "Mish", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Floor", "Ceil",
    "Round", "Sign", "Sin", "Cos", "Tan", "Sinh", "Cosh", "Atan", "Asin", "Acos", "Not", "IsNaN", "IsInf",
    "Cast", "CastLike", "Identity", "ThresholdedRelu", "Shrink", "Clip", "Dropout",
)


@rule(*UNARY, folds=True)
def passthrough(dep: DepGraph, op: Op) -> None:
    """Elementwise on input 0 (Clip's bounds are scalars, CastLike's second input gives a dtype)."""
    for out in op.outputs if op.op_type == "Dropout" else op.outputs[:1]:
        for axis, labels in dep.get(op.inputs[0]).items():
            dep.put(out, axis, labels)
        for axis, fold in dep.folds.get(op.inputs[0], {}).items():
            dep.fold(out, axis, fold)


ELEMENTWISE = (
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where", "And", "Or", "Xor",
    "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Mod", "BitShift",
)


@rule(*ELEMENTWISE, folds=True)
def elementwise(dep: DepGraph, op: Op) -> None:
    """Broadcasting n-ary ops: residual Add/Sub/Mul couple their operands' channels pointwise."""
    if not any(dep.get(v) or dep.folds.get(v) for v in op.inputs):
        return
    ranks = [dep.rank(v) for v in op.inputs]
    if any(r is None for r in ranks):
        dep.fix_inputs(op, f"{op.label} has an operand of unknown rank")
        return
    top = max(ranks)
    operands = [(port, list(range(top - rank, top))) for port, rank in enumerate(ranks)]
    for joint, labels in dep.align(op, operands).items():
        dep.put(op.outputs[0], joint, labels)
    for joint, fold in dep.align_folds(op, operands).items():
        dep.fold(op.outputs[0], joint, fold)


# Shape's reads of a fold are checked with the other counts it reads (`_excise_dims`).
@rule("Shape", "Size", "Constant", "ConstantOfShape", folds=True)
def no_channels(dep: DepGraph, op: Op) -> None:
    """Shape and Size read sizes, not values: their results adapt when channels go."""


# ---- per-channel parameters and normalizations -----------------------------------------
def _per_channel(dep: DepGraph, op: Op, ports: tuple[int, ...]) -> None:
    """BatchNorm/InstanceNorm: channel axis 1 scales each channel by its own constants."""
    x = op.inputs[0]
    if not dep.get(x):
        return
    if extra_outputs_used(dep, op):
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
    axis = axis_attr(op, "axis", -1, rank)
    if axis is None or extra_outputs_used(dep, op):
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


@rule("Softmax", "LogSoftmax", "Hardmax", folds=True)
def softmax(dep: DepGraph, op: Op) -> None:
    rank = dep.rank(op.inputs[0])
    new_semantics = dep.model.opset >= 13
    axis = axis_attr(op, "axis", -1 if new_semantics else 1, rank)
    slots = [(a, labels, None) for a, labels in dep.get(op.inputs[0]).items()]
    for a, labels, fold in slots + [(a, f.labels, f) for a, f in dep.folds.get(op.inputs[0], {}).items()]:
        if axis is None or a == axis or (not new_semantics and a >= axis):
            dep.labels.fix(labels, f"{op.label} normalizes across them")
        if fold is None:
            dep.put(op.outputs[0], a, labels)
        else:
            dep.fold(op.outputs[0], a, fold)


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
        return {axis_attr(op, "axis", 0, rank)}
    given, axes = ints_param(dep, op, "axes", 1)
    if given and axes is None:
        return None
    if not axes:  # absent or empty: every axis, unless the op is told to do nothing then
        return set() if op.attr("noop_with_empty_axes", 0) else set(range(rank))
    return {a % rank for a in axes}


@rule("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def pooling(dep: DepGraph, op: Op) -> None:
    x = op.inputs[0]
    if len(op.outputs) > 1 and extra_outputs_used(dep, op):
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
    if op.op_type == "Expand":
        _broadcast_axis(dep, op)
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


def _broadcast_axis(dep: DepGraph, op: Op) -> None:
    """An Expand that repeats a unit axis to a static size (an attention mask repeated for every
    head) gives that axis labels of its own: every position holds the same values, so any of them
    can go with the channels they meet; the size in the shape input is rewritten. One such axis
    per Expand."""
    spec, rank = static_ints(dep, op.inputs[1]), dep.rank(op.inputs[0])
    if spec is None or rank is None or len(spec) < rank:
        return
    repeated = repeated_unit_axes(spec, [dep.size(op.inputs[0], a) for a in range(rank)])
    if len(repeated) == 1 and repeated[0] not in dep.get(op.outputs[0]):
        labels = dep.labels.new(spec[repeated[0]])
        dep.put(op.outputs[0], repeated[0], labels)
        dep.fixups.append(Fixup("expand", op, labels, data={"spec": spec, "axis": repeated[0]}))


def repeated_unit_axes(spec: list[int], sizes: list) -> list[int]:
    """The axes an Expand to `spec` repeats to a static size: unit axes of its input (of static
    `sizes`, aligned to the right) and the axes it prepends."""
    shift = len(spec) - len(sizes)
    return [a for a, size in enumerate(spec) if size > 1 and (a < shift or sizes[a - shift] == 1)]
