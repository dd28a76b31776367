"""Static shapes for excision, also where onnx's inference leaves a dimension unknown.

Exports with dynamic axes compute Slice bounds and Reshape targets from `Shape(x)` (torch's
`chunk`, `view(b, s, heads, -1)`); onnx's inference then leaves the channel and head sizes
unknown (`unk__N`) downstream. Those sizes do not depend on batch or sequence, so this module
refines onnx's shapes op by op: bounds and targets are evaluated statically (`_excise_static`),
and the common shape-preserving, broadcasting and layout ops pass static sizes on. A dimension
stays symbolic where it really depends on a symbolic input.
"""

from __future__ import annotations

from graphsurg.passes._excise_reshape import reshape_target
from graphsurg.passes._excise_static import ints_param, split_sizes, static_ints

from graphsurg import serde
from graphsurg.ir import Op

_SAME_AS_INPUT = frozenset({
    "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
    "Softsign", "Gelu", "Mish", "Erf", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Floor", "Ceil",
    "Round", "Sign", "Sin", "Cos", "Cast", "CastLike", "Identity", "Dropout", "Clip", "Softmax", "LogSoftmax",
    "Hardmax", "LayerNormalization", "BatchNormalization", "InstanceNormalization", "PRelu",
})
_BROADCAST = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Equal",
                        "Less", "Greater", "And", "Or"})


def static_shapes(dep, order: list[Op]) -> dict:
    """onnx's inferred shapes, refined where a dimension is unknown but statically computable."""
    serde.infer_shapes(dep.model)
    dep.shapes = {v: v.shape for v in dep.graph.values() if not v.is_const and v.shape is not None}
    for op in order:
        if op.domain not in ("", "ai.onnx") or not op.outputs or op.outputs[0] is None:
            continue
        mine = _derive(dep, op)
        if mine is None:
            continue
        out = op.outputs[0]
        dep.shapes[out] = _merge(dep.shapes.get(out), mine)
        if op.op_type == "Split":
            for value, shape in zip(op.outputs[1:], _split_shapes(dep, op)[1:] or [], strict=False):
                if value is not None and shape is not None:
                    dep.shapes[value] = _merge(dep.shapes.get(value), shape)
    return dep.shapes


def _merge(onnx_shape: tuple | None, mine: tuple) -> tuple:
    """Static sizes from either side; onnx's symbol where neither is static."""
    if onnx_shape is None or len(onnx_shape) != len(mine):
        return tuple(d if isinstance(d, int) else "?" for d in mine)
    return tuple(m if isinstance(m, int) else o for o, m in zip(onnx_shape, mine, strict=True))


def _derive(dep, op: Op) -> tuple | None:
    kind = op.op_type
    first = dep.shape(op.inputs[0]) if op.inputs and op.inputs[0] is not None else None
    if kind in _SAME_AS_INPUT:
        return first
    if kind in _BROADCAST:
        return _broadcast([dep.shape(v) for v in op.inputs])
    if kind == "Reshape":
        return reshape_target(dep, op)
    if kind == "Transpose" and first is not None:
        perm = op.attr("perm") or list(reversed(range(len(first))))
        return tuple(first[p] for p in perm)
    if kind == "MatMul":
        return _matmul(dep.shape(op.inputs[0]), dep.shape(op.inputs[1]))
    if kind == "Slice":
        return _slice(dep, op, first)
    if kind == "Split":
        shapes = _split_shapes(dep, op)
        return shapes[0] if shapes else None
    if kind == "Concat":
        return _concat([dep.shape(v) for v in op.inputs], op.attr("axis", 0))
    if kind == "Expand" and first is not None:
        spec = static_ints(dep, op.inputs[1])
        return None if spec is None else _broadcast([first, tuple(spec)])
    if kind in ("Unsqueeze", "Squeeze") and first is not None:
        return _unit_axes(dep, op, first)
    if kind == "Gather" and first is not None and op.inputs[1] is not None:
        indices = dep.shape(op.inputs[1])
        axis = op.attr("axis", 0) % len(first) if first else 0
        return None if indices is None else (*first[:axis], *indices, *first[axis + 1:])
    return None


def _unit_axes(dep, op: Op, data: tuple) -> tuple | None:
    """Unsqueeze inserts unit axes, Squeeze drops them (both with axes that are static)."""
    given, axes = ints_param(dep, op, "axes", 1)
    if not given or axes is None:
        return None
    dims = list(data)
    if op.op_type == "Squeeze":
        drop = {a % len(dims) for a in axes}
        return tuple(d for i, d in enumerate(dims) if i not in drop)
    rank = len(dims) + len(axes)
    for axis in sorted(a % rank for a in axes):
        dims.insert(axis, 1)
    return tuple(dims)


def _broadcast(shapes: list[tuple | None]) -> tuple | None:
    if any(s is None for s in shapes):
        return None
    rank = max(len(s) for s in shapes)
    dims = []
    for axis in range(rank):
        sizes = [s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0]
        static = [d for d in sizes if isinstance(d, int) and d != 1]
        dims.append(static[0] if static else (1 if all(d == 1 for d in sizes) else "?"))
    return tuple(dims)


def _matmul(a: tuple | None, b: tuple | None) -> tuple | None:
    if a is None or b is None or len(a) < 2 or len(b) < 2:
        return None
    batch = _broadcast([a[:-2], b[:-2]]) if len(a) > 2 or len(b) > 2 else ()
    return (*batch, a[-2], b[-1]) if batch is not None else None


def _slice(dep, op: Op, data: tuple | None) -> tuple | None:
    if data is None or dep.model.opset < 10:
        return None
    starts, ends = static_ints(dep, op.inputs[1]), static_ints(dep, op.inputs[2])
    axes = static_ints(dep, op.inputs[3]) if len(op.inputs) > 3 and op.inputs[3] is not None else None
    steps = static_ints(dep, op.inputs[4]) if len(op.inputs) > 4 and op.inputs[4] is not None else None
    if starts is None or ends is None:
        return None
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    dims = list(data)
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=False):
        size = dims[axis % len(dims)]
        dims[axis % len(dims)] = len(range(*slice(start, end, step).indices(size))) if isinstance(size, int) else "?"
    return tuple(dims)


def _split_shapes(dep, op: Op) -> list[tuple] | None:
    data = dep.shape(op.inputs[0])
    if data is None:
        return None
    axis = op.attr("axis", 0) % len(data)
    total = data[axis]
    sizes = split_sizes(dep, op, total if isinstance(total, int) else None)
    if sizes is None:
        return None
    return [tuple(s if i == axis else d for i, d in enumerate(data)) for s in sizes]


def _concat(shapes: list[tuple | None], axis: int) -> tuple | None:
    if any(s is None for s in shapes) or not shapes:
        return None
    axis %= len(shapes[0])
    sizes = [s[axis] for s in shapes]
    total = sum(sizes) if all(isinstance(d, int) for d in sizes) else None
    return tuple(total if i == axis and total is not None else ("?" if i == axis else d)
                 for i, d in enumerate(shapes[0]))
