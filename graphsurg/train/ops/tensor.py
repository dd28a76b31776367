"""Shape and data-movement ops: reshape, slicing, gathering, padding, casting, constants."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from graphsurg.train.ops import Node, register
from graphsurg.train.ops.nn import torch_pad
from graphsurg.train.tensors import to_torch, torch_dtype


def _ints(t) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def _axes_input(node: Node, port: int, since: int, attr: str = "axes"):
    """Axes from an attribute (before `since`) or a constant input; returns (static axes or None,
    whether they come from a runtime input)."""
    if node.opset < since:
        return node.attr(attr), False
    found = node.static_ints(port)
    return found, found is None and node.has_input(port)


@register("Constant")
def _constant(node: Node):
    attr = next(iter(node.op.attrs.items()), None)
    if attr is None:
        raise node.fail("Constant without a value")
    key, value = attr[0], attr[1].value
    if key == "value":
        array = value.numpy()
        tensor = to_torch(array, value.dtype)
    elif key in ("value_float", "value_floats"):
        tensor = torch.tensor(value, dtype=torch.float32)
    elif key in ("value_int", "value_ints"):
        tensor = torch.tensor(value, dtype=torch.int64)
    else:
        raise node.fail(f"Constant {key} is not supported")
    return node.host.constant(node.op.outputs[0].name, tensor)


@register("ConstantOfShape")
def _constant_of_shape(node: Node):
    value = node.attr("value")
    fill = to_torch(value.numpy(), value.dtype).reshape(-1) if value is not None else torch.zeros(1)
    return lambda shape: fill.to(shape.device).expand(_ints(shape)).clone()


@register("Shape")
def _shape(node: Node):
    start, end = node.attr("start", 0), node.attr("end")
    return lambda x: torch.tensor(x.shape[start:end], dtype=torch.int64, device=x.device)


@register("Size")
def _size(node: Node):
    return lambda x: torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


@register("Cast", "CastLike")
def _cast(node: Node):
    if node.op.op_type == "CastLike":
        return lambda x, like: x.to(like.dtype)
    dtype = torch_dtype(node.attr("to"))
    return lambda x: x.to(dtype)


@register("Reshape")
def _reshape(node: Node):
    allow_zero, fixed = node.attr("allowzero", 0), node.static_ints(1)

    def target(x, shape):
        return shape if allow_zero else [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    if node.opset < 5:
        shape = node.attr("shape")
        return lambda x: x.reshape(target(x, shape))
    if fixed is not None:
        return lambda x, _shape=None: x.reshape(target(x, fixed))
    return lambda x, shape: x.reshape(target(x, _ints(shape)))


@register("Flatten")
def _flatten(node: Node):
    axis = node.attr("axis", 1)

    def flatten(x):
        start = axis if axis >= 0 else axis + x.dim()
        return x.reshape(math.prod(x.shape[:start]), math.prod(x.shape[start:]))
    return flatten


@register("Transpose")
def _transpose(node: Node):
    perm = node.attr("perm")
    return lambda x: x.permute(perm if perm is not None else list(reversed(range(x.dim()))))


@register("Squeeze")
def _squeeze(node: Node):
    axes, dynamic = _axes_input(node, 1, 13)

    def squeeze(x, runtime=None):
        chosen = _ints(runtime) if dynamic else axes
        if chosen is None:
            return x.squeeze()
        return x.squeeze(tuple(a % x.dim() for a in chosen)) if chosen else x
    return squeeze


@register("Unsqueeze")
def _unsqueeze(node: Node):
    axes, dynamic = _axes_input(node, 1, 13)

    def unsqueeze(x, runtime=None):
        chosen = _ints(runtime) if dynamic else axes
        rank = x.dim() + len(chosen)
        for a in sorted(a % rank for a in chosen):
            x = x.unsqueeze(a)
        return x
    return unsqueeze


@register("Concat")
def _concat(node: Node):
    axis = node.attr("axis", 1 if node.opset < 4 else None)
    return lambda *xs: torch.cat(xs, axis)


@register("Split")
def _split(node: Node):
    axis, count = node.attr("axis", 0), node.num_outputs
    sizes, dynamic = _axes_input(node, 1, 13, attr="split")
    if node.opset < 2:
        raise node.fail("Split before opset 2 is not supported")

    def split(x, runtime=None):
        chosen = _ints(runtime) if dynamic else sizes
        if not chosen:
            length = x.shape[axis]
            step = -(-length // count)  # ceil: opset 18's num_outputs puts the remainder last
            chosen = [min(step, length - i * step) for i in range(count)]
        return tuple(torch.split(x, chosen, axis))
    return split


@register("Slice")
def _slice(node: Node):
    if node.opset < 10:
        starts, ends, axes = node.attr("starts"), node.attr("ends"), node.attr("axes")
        return lambda x: slice_tensor(x, starts, ends, axes, None)
    fixed = [node.static_ints(p) for p in (1, 2, 3, 4)]

    def dynamic_slice(x, starts, ends, axes=None, steps=None):
        got = [f if f is not None else (_ints(t) if t is not None else None)
               for f, t in zip(fixed, (starts, ends, axes, steps), strict=False)]
        return slice_tensor(x, *got)
    return dynamic_slice


def slice_tensor(x, starts, ends, axes, steps):
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * x.dim()
    reversed_axes = []
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=False):
        axis, size = axis % x.dim(), x.shape[axis % x.dim()]
        start, end = _clamp(start, size, step, is_end=False), _clamp(end, size, step, is_end=True)
        if step > 0:
            index[axis] = slice(start, max(end, start), step)
        else:
            # torch has no negative steps: take the forward slice that holds the same elements, flip it.
            count = max((start - end - 1) // -step + 1, 0) if start > end else 0
            first = start - (count - 1) * -step if count else 0
            index[axis] = slice(first, first + (count - 1) * -step + 1 if count else 0, -step)
            reversed_axes.append(axis)
    out = x[tuple(index)]
    return out.flip(reversed_axes) if reversed_axes else out


def _clamp(bound: int, size: int, step: int, is_end: bool) -> int:
    # Clamping per the spec: [0, size] going forward; backward, starts [0, size-1] and ends [-1, size-1].
    bound = bound + size if bound < 0 else bound
    if step > 0:
        return min(max(bound, 0), size)
    return min(max(bound, -1 if is_end else 0), size - 1)


@register("Gather")
def _gather(node: Node):
    axis = node.attr("axis", 0)

    def gather(x, indices):
        dim = axis % x.dim()
        indices = torch.where(indices < 0, indices + x.shape[dim], indices)
        picked = torch.index_select(x, dim, indices.reshape(-1))
        return picked.reshape(tuple(x.shape[:dim]) + tuple(indices.shape) + tuple(x.shape[dim + 1:]))
    return gather


@register("GatherElements")
def _gather_elements(node: Node):
    axis = node.attr("axis", 0)

    def gather_elements(x, indices):
        dim = axis % x.dim()
        return torch.gather(x, dim, torch.where(indices < 0, indices + x.shape[dim], indices))
    return gather_elements


@register("Expand")
def _expand(node: Node):
    def expand(x, shape):
        return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape))))
    return expand


@register("Tile")
def _tile(node: Node):
    return lambda x, repeats: x.repeat(_ints(repeats))


@register("Range")
def _range(node: Node):
    return lambda start, limit, delta: torch.arange(start.item(), limit.item(), delta.item(),
                                                    dtype=start.dtype, device=start.device)


@register("Pad")
def _pad(node: Node):
    if node.opset < 11:
        pads, value = node.attr("pads") or node.attr("paddings"), node.attr("value", 0.0)
        return _padder(node, lambda x, *rest: (pads, value, None))
    fixed_pads, fixed_axes = node.static_ints(1), node.static_ints(3)

    def parts(x, pads=None, value=None, axes=None):
        chosen_pads = fixed_pads if fixed_pads is not None else _ints(pads)
        chosen_axes = fixed_axes if fixed_axes is not None else (_ints(axes) if axes is not None else None)
        return chosen_pads, (0 if value is None else value.item()), chosen_axes
    return _padder(node, parts)


def _padder(node: Node, parts):
    mode = node.attr("mode", b"constant").decode()
    torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode]

    def pad(x, *inputs):
        pads, value, axes = parts(x, *inputs)
        axes = list(range(x.dim())) if axes is None else [a % x.dim() for a in axes]
        begins, ends = [0] * x.dim(), [0] * x.dim()
        for i, axis in enumerate(axes):
            begins[axis], ends[axis] = pads[i], pads[i + len(axes)]
        # F.pad's non-constant modes pad only trailing spatial axes; leading zero pairs are dropped.
        first = next((i for i in range(x.dim()) if begins[i] or ends[i]), x.dim())
        spec = torch_pad(begins[first:], ends[first:])
        if torch_mode == "constant":
            return F.pad(x, spec, value=value)
        if x.dim() - first > 3:
            raise node.fail(f"{mode} padding of more than 3 trailing axes is not supported")
        # Fold the untouched leading axes into one channel axis: (1, C, *padded axes) is what F.pad takes.
        flat = x.reshape((1, math.prod(x.shape[:first])) + tuple(x.shape[first:]))
        out = F.pad(flat, spec, mode=torch_mode)
        return out.reshape(tuple(x.shape[:first]) + tuple(out.shape[2:]))
    return pad


@register("Trilu")
def _trilu(node: Node):
    upper = node.attr("upper", 1)
    return lambda x, k=None: (torch.triu if upper else torch.tril)(x, 0 if k is None else int(k.item()))


@register("CumSum")
def _cumsum(node: Node):
    exclusive, reverse = node.attr("exclusive", 0), node.attr("reverse", 0)

    def cumsum(x, axis):
        dim = int(axis.item())
        x = x.flip(dim) if reverse else x
        out = torch.cumsum(x, dim)
        out = out - x if exclusive else out
        return out.flip(dim) if reverse else out
    return cumsum


@register("TopK")
def _topk(node: Node):
    axis, largest = node.attr("axis", -1), bool(node.attr("largest", 1))

    def topk(x, k):
        # A stable sort keeps the lower index first among equal values, as ONNX requires.
        values, indices = torch.sort(x, stable=True, dim=axis, descending=largest)
        return values.narrow(axis, 0, k), indices.narrow(axis, 0, k)
    if node.opset < 10:
        return lambda x: topk(x, node.attr("k"))
    return lambda x, k: topk(x, int(k.reshape(-1)[0].item()))


@register("OneHot")
def _one_hot(node: Node):
    axis = node.attr("axis", -1)

    def one_hot(indices, depth, values):
        count = int(depth.reshape(-1)[0].item())
        indices = torch.where(indices < 0, indices + count, indices).long()
        hot = F.one_hot(indices, count)
        hot = hot.movedim(-1, axis % hot.dim())
        return torch.where(hot.bool(), values[1], values[0])
    return one_hot


@register("NonZero")
def _nonzero(node: Node):
    return lambda x: torch.nonzero(x).t().contiguous()


@register("DepthToSpace", "SpaceToDepth")
def _depth_space(node: Node):
    block, mode = node.attr("blocksize"), node.attr("mode", b"DCR").decode()
    if node.op.op_type == "SpaceToDepth":
        order = (0, 3, 5, 1, 2, 4) if mode == "DCR" else (0, 1, 3, 5, 2, 4)

        def space_to_depth(x):
            n, c, h, w = x.shape
            y = x.reshape(n, c, h // block, block, w // block, block).permute(order)
            return y.reshape(n, c * block * block, h // block, w // block)
        return space_to_depth

    def depth_to_space(x):
        n, c, h, w = x.shape
        if mode == "DCR":
            y = x.reshape(n, block, block, c // block**2, h, w).permute(0, 3, 4, 1, 5, 2)
        else:
            y = x.reshape(n, c // block**2, block, block, h, w).permute(0, 1, 4, 2, 5, 3)
        return y.reshape(n, c // block**2, h * block, w * block)
    return depth_to_space
