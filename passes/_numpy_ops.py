"""NumPy kernels for the ops constant folding evaluates (ONNX semantics, opset 1 to 21).

Each kernel takes (op, input arrays, opset) and returns the output arrays. Ops missing here are
left unfolded, with that as the recorded reason.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from graphsurg.ir import Op, dtypes

Kernel = Callable[[Op, list, int], list]
KERNELS: dict[str, Kernel] = {}


def kernel(*names: str):
    def register(fn: Kernel) -> Kernel:
        for name in names:
            KERNELS[name] = fn
        return fn
    return register


def _binary(fn):
    return lambda op, xs, opset: [np.asarray(fn(xs[0], xs[1]))]


for _name, _fn in {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Pow": np.power,
                   "Equal": np.equal, "Less": np.less, "Greater": np.greater, "And": np.logical_and,
                   "Or": np.logical_or, "MatMul": np.matmul}.items():
    KERNELS[_name] = _binary(_fn)
for _name, _fn in {"Neg": np.negative, "Sqrt": np.sqrt, "Exp": np.exp, "Log": np.log, "Abs": np.abs,
                   "Reciprocal": np.reciprocal, "Floor": np.floor, "Ceil": np.ceil, "Not": np.logical_not,
                   "Identity": lambda x: x}.items():
    KERNELS[_name] = (lambda f: lambda op, xs, opset: [np.asarray(f(xs[0]))])(_fn)


@kernel("Div")
def _div(op, xs, opset):
    a, b = xs
    if np.issubdtype(a.dtype, np.integer):  # truncates toward zero, exactly (no float round trip)
        quotient = np.floor_divide(a, b)
        inexact = (np.remainder(a, b) != 0) & ((a < 0) != (b < 0))
        return [np.asarray(quotient + inexact.astype(quotient.dtype))]
    return [np.asarray(a / b).astype(a.dtype)]


@kernel("ConstantOfShape")
def _constant_of_shape(op, xs, opset):
    value = op.attr("value")
    fill = value.numpy().reshape(-1) if value is not None else np.zeros(1, np.float32)
    return [np.full(tuple(int(d) for d in xs[0]), fill[0], dtype=fill.dtype)]


@kernel("Cast")
def _cast(op, xs, opset):
    return [xs[0].astype(dtypes.numpy_dtype(op.attr("to")))]


@kernel("Reshape")
def _reshape(op, xs, opset):
    data, shape = xs[0], [int(d) for d in xs[1]]
    if not op.attr("allowzero", 0):
        shape = [data.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [data.reshape(shape)]


@kernel("Transpose")
def _transpose(op, xs, opset):
    perm = op.attr("perm")
    return [np.transpose(xs[0], perm if perm is not None else None)]


def _axes(op, xs, opset, since: int):
    if opset >= since and len(xs) > 1 and xs[1] is not None:
        return [int(a) for a in xs[1]]
    axes = op.attr("axes")
    return None if axes is None else list(axes)


@kernel("Unsqueeze")
def _unsqueeze(op, xs, opset):
    axes = _axes(op, xs, opset, 13)
    rank = xs[0].ndim + len(axes)
    out = xs[0]
    for axis in sorted(a % rank for a in axes):
        out = np.expand_dims(out, axis)
    return [out]


@kernel("Squeeze")
def _squeeze(op, xs, opset):
    axes = _axes(op, xs, opset, 13)
    return [np.squeeze(xs[0], axis=tuple(axes) if axes is not None else None)]


@kernel("Concat")
def _concat(op, xs, opset):
    return [np.concatenate(xs, axis=op.attr("axis"))]


@kernel("Shape")
def _shape(op, xs, opset):
    shape = np.array(xs[0].shape, dtype=np.int64)
    start, end = op.attr("start", 0), op.attr("end")
    return [shape[start:end]]


@kernel("Gather")
def _gather(op, xs, opset):
    return [np.take(xs[0], xs[1].astype(np.int64), axis=op.attr("axis", 0))]


@kernel("Flatten")
def _flatten(op, xs, opset):
    axis = op.attr("axis", 1) % max(xs[0].ndim, 1) if xs[0].ndim else 0
    rows = int(np.prod(xs[0].shape[:axis]))
    return [xs[0].reshape(rows, -1)]


@kernel("Expand")
def _expand(op, xs, opset):
    shape = np.broadcast_shapes(xs[0].shape, tuple(int(d) for d in xs[1]))
    return [np.broadcast_to(xs[0], shape).copy()]


@kernel("Range")
def _range(op, xs, opset):
    return [np.arange(xs[0], xs[1], xs[2]).astype(xs[0].dtype)]


@kernel("Where")
def _where(op, xs, opset):
    return [np.where(xs[0], xs[1], xs[2])]


@kernel("Tile")
def _tile(op, xs, opset):
    return [np.tile(xs[0], [int(r) for r in xs[1]])]


@kernel("Slice")
def _slice(op, xs, opset):
    data = xs[0]
    if opset < 10:
        starts, ends, axes, steps = op.attr("starts"), op.attr("ends"), op.attr("axes"), None
    else:
        starts, ends = list(xs[1]), list(xs[2])
        axes = list(xs[3]) if len(xs) > 3 and xs[3] is not None else None
        steps = list(xs[4]) if len(xs) > 4 and xs[4] is not None else None
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        index[int(axis)] = slice(int(start), int(end), int(step))
    return [data[tuple(index)]]
