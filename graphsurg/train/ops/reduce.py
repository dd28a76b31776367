"""Reductions (ReduceSum, ReduceMean, ... and ArgMax/ArgMin)."""

from __future__ import annotations

import torch

from graphsurg.train.ops import Node, register


def _sum(x, dims, keep):
    return torch.sum(x, dims, keepdim=keep)


def _extreme(fn, x, dims, keep, low: bool):
    if all(x.shape[d] for d in dims):
        return fn(x, dims, keepdim=keep)
    # Over an empty set the maximum is the type's lowest value (the minimum its highest), per ONNX.
    if x.is_floating_point():
        fill = -float("inf") if low else float("inf")
    elif x.dtype == torch.bool:
        fill = not low
    else:
        fill = torch.iinfo(x.dtype).min if low else torch.iinfo(x.dtype).max
    shape = [1 if d in dims else n for d, n in enumerate(x.shape)] if keep else \
        [n for d, n in enumerate(x.shape) if d not in dims]
    return torch.full(shape, fill, dtype=x.dtype, device=x.device)


def _prod(x, dims, keep):
    for d in sorted(dims, reverse=True):
        x = torch.prod(x, d, keepdim=keep)
    return x


_REDUCERS = {
    "ReduceSum": _sum,
    "ReduceMean": lambda x, dims, keep: torch.mean(x, dims, keepdim=keep),
    "ReduceMax": lambda x, dims, keep: _extreme(torch.amax, x, dims, keep, low=True),
    "ReduceMin": lambda x, dims, keep: _extreme(torch.amin, x, dims, keep, low=False),
    "ReduceProd": _prod,
    "ReduceL1": lambda x, dims, keep: torch.sum(torch.abs(x), dims, keepdim=keep),
    "ReduceL2": lambda x, dims, keep: torch.sqrt(torch.sum(x * x, dims, keepdim=keep)),
    "ReduceSumSquare": lambda x, dims, keep: torch.sum(x * x, dims, keepdim=keep),
    "ReduceLogSum": lambda x, dims, keep: torch.log(torch.sum(x, dims, keepdim=keep)),
    "ReduceLogSumExp": lambda x, dims, keep: torch.logsumexp(x, dims, keepdim=keep),
}
# Opset from which the axes come as a second input instead of an attribute.
_AXES_INPUT_SINCE = {name: 13 if name == "ReduceSum" else 18 for name in _REDUCERS}


def _build_reduce(node: Node):
    reducer = _REDUCERS[node.op.op_type]
    keep, noop = bool(node.attr("keepdims", 1)), bool(node.attr("noop_with_empty_axes", 0))
    from_input = node.opset >= _AXES_INPUT_SINCE[node.op.op_type]
    fixed = node.static_ints(1) if from_input else node.attr("axes")

    def reduce(x, axes=None):
        chosen = fixed if fixed is not None or axes is None else [int(a) for a in axes.reshape(-1).tolist()]
        if not chosen:
            if noop:
                return x
            chosen = list(range(x.dim()))
        return reducer(x, tuple(a % max(x.dim(), 1) for a in chosen), keep)
    return reduce


for _name in _REDUCERS:
    register(_name)(_build_reduce)


@register("ArgMax", "ArgMin")
def _arg(node: Node):
    axis, keep, last = node.attr("axis", 0), bool(node.attr("keepdims", 1)), node.attr("select_last_index", 0)
    fn = torch.argmax if node.op.op_type == "ArgMax" else torch.argmin

    def arg(x):
        if not last:
            return fn(x, axis, keepdim=keep)
        # The last occurrence: search the flipped axis and map the index back.
        flipped = fn(x.flip(axis), axis, keepdim=keep)
        return x.shape[axis] - 1 - flipped
    return arg
