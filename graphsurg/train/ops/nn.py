"""Neural-network ops: convolution, pooling, normalization, Gemm/MatMul, softmax, dropout."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from graphsurg.train.ops import Node, register

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


# ---- padding --------------------------------------------------------------------------------
def pad_rule(node: Node):
    """A function (spatial input sizes, kernel sizes, strides, dilations) -> (begins, ends) that
    applies the node's `pads` / `auto_pad` (SAME_* depends on the input size, so it runs per call)."""
    auto = node.attr("auto_pad", b"NOTSET").decode()
    pads = node.attr("pads")

    def rule(sizes, kernel, strides, dilations):
        rank = len(sizes)
        if auto in ("NOTSET", "") and pads:
            return list(pads[:rank]), list(pads[rank:])
        if auto not in ("SAME_UPPER", "SAME_LOWER"):
            return [0] * rank, [0] * rank
        begins, ends = [], []
        for size, k, s, d in zip(sizes, kernel, strides, dilations, strict=False):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            begins.append(small if auto == "SAME_UPPER" else large)
            ends.append(large if auto == "SAME_UPPER" else small)
        return begins, ends
    return rule


def torch_pad(begins, ends) -> list[int]:
    """ONNX begins/ends per axis -> F.pad's order (last axis first)."""
    out: list[int] = []
    for b, e in zip(reversed(begins), reversed(ends), strict=False):
        out += [b, e]
    return out


def _geometry(node: Node, rank: int, kernel=None):
    kernel = node.attr("kernel_shape", kernel)
    strides = node.attr("strides") or [1] * rank
    dilations = node.attr("dilations") or [1] * rank
    return kernel, list(strides), list(dilations)


# ---- convolution ----------------------------------------------------------------------------
@register("Conv")
def _conv(node: Node):
    rule, groups = pad_rule(node), node.attr("group", 1)

    def conv(x, w, b=None):
        rank = x.dim() - 2
        kernel, strides, dilations = _geometry(node, rank, list(w.shape[2:]))
        begins, ends = rule(x.shape[2:], kernel, strides, dilations)
        if begins != ends:
            x, begins = F.pad(x, torch_pad(begins, ends)), [0] * rank
        return _CONV[rank](x, w, b, strides, begins, dilations, groups)
    return conv


@register("ConvTranspose")
def _conv_transpose(node: Node):
    groups, auto = node.attr("group", 1), node.attr("auto_pad", b"NOTSET").decode()
    output_shape, pads = node.attr("output_shape"), node.attr("pads")

    def conv_transpose(x, w, b=None):
        rank = x.dim() - 2
        kernel, strides, dilations = _geometry(node, rank, list(w.shape[2:]))
        out_pad = list(node.attr("output_padding") or [0] * rank)
        sizes = list(x.shape[2:])
        full = [s * (n - 1) + (k - 1) * d + 1 for n, k, s, d in zip(sizes, kernel, strides, dilations, strict=True)]
        if output_shape or auto in ("SAME_UPPER", "SAME_LOWER"):
            target = list(output_shape[-rank:]) if output_shape else [n * s for n, s in
                                                                      zip(sizes, strides, strict=True)]
            totals = [f + p - t for f, p, t in zip(full, out_pad, target, strict=False)]
            upper = auto != "SAME_LOWER"  # the spec puts the odd pixel at the end unless SAME_LOWER
            # A negative total asks for more than the full output: the extra rows come at the end.
            begins = [max(t // 2 if upper else t - t // 2, 0) for t in totals]
        else:
            begins = list(pads[:rank]) if pads else [0] * rank
            ends = list(pads[rank:]) if pads else [0] * rank
            target = [f + p - bgn - e for f, p, bgn, e in zip(full, out_pad, begins, ends, strict=False)]
        y = _CONV_T[rank](x, w, None, strides, 0, 0, groups, dilations)
        return _crop(y, begins, target, b)
    return conv_transpose


def _crop(y, begins, lengths, bias):
    """Takes `lengths` elements from `begins` on each spatial axis (zero-extending past the end:
    output_padding rows), then adds the bias, which also covers those extra rows."""
    extra = [max(b + n - size, 0) for b, n, size in zip(begins, lengths, y.shape[2:], strict=False)]
    if any(extra):
        y = F.pad(y, torch_pad([0] * len(extra), extra))
    index = (slice(None), slice(None)) + tuple(slice(b, b + n) for b, n in zip(begins, lengths, strict=False))
    y = y[index]
    return y if bias is None else y + bias.reshape((1, -1) + (1,) * (y.dim() - 2))


# ---- pooling --------------------------------------------------------------------------------
@register("MaxPool")
def _max_pool(node: Node):
    rule, ceil_mode = pad_rule(node), bool(node.attr("ceil_mode", 0))
    want_indices = node.has_output(1)
    if want_indices and node.attr("storage_order", 0):
        raise node.fail("column-major indices (storage_order=1) are not supported")

    def max_pool(x):
        rank = x.dim() - 2
        kernel, strides, dilations = _geometry(node, rank)
        begins, ends = rule(x.shape[2:], kernel, strides, dilations)
        fits = begins == ends and all(p <= k // 2 for p, k in zip(begins, kernel, strict=False))
        if not fits:
            if want_indices:
                raise node.fail("indices with asymmetric or large padding are not supported")
            x, begins = F.pad(x, torch_pad(begins, ends), value=-math.inf), [0] * rank
        out = _MAX_POOL[rank](x, kernel, strides, begins, dilations, ceil_mode, return_indices=want_indices)
        return (out[0], _flat_indices(x, out[1])) if want_indices else out
    return max_pool


def _flat_indices(x, indices):
    # torch counts within each (n, c) plane; ONNX counts over the whole tensor.
    plane = math.prod(x.shape[2:])
    offsets = torch.arange(x.shape[0] * x.shape[1], device=x.device).reshape(x.shape[0], x.shape[1])
    return indices + (offsets * plane).reshape(offsets.shape + (1,) * (indices.dim() - 2))


@register("AveragePool")
def _average_pool(node: Node):
    rule, ceil_mode = pad_rule(node), bool(node.attr("ceil_mode", 0))
    include_pad = bool(node.attr("count_include_pad", 0))
    if any(d != 1 for d in node.attr("dilations") or []):
        raise node.fail("dilated average pooling is not supported")

    def average_pool(x):
        rank = x.dim() - 2
        kernel, strides, _ = _geometry(node, rank)
        begins, ends = rule(x.shape[2:], kernel, strides, [1] * rank)
        pool = _AVG_POOL[rank]
        if begins == ends and all(p <= k // 2 for p, k in zip(begins, kernel, strict=False)):
            return pool(x, kernel, strides, begins, ceil_mode, include_pad)
        padded = F.pad(x, torch_pad(begins, ends))
        sums = pool(padded, kernel, strides, 0, ceil_mode)
        if include_pad:
            return sums
        # Divide by the count of real (unpadded) elements in each window: pool a mask the same way.
        mask = F.pad(torch.ones_like(x[:1, :1]), torch_pad(begins, ends))
        return sums / pool(mask, kernel, strides, 0, ceil_mode)
    return average_pool


@register("GlobalAveragePool")
def _global_average_pool(node: Node):
    return lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@register("GlobalMaxPool")
def _global_max_pool(node: Node):
    return lambda x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


# ---- normalization --------------------------------------------------------------------------
def _channel_view(t, rank):
    return t.reshape((1, -1) + (1,) * (rank - 2))


@register("BatchNormalization")
def _batch_norm(node: Node):
    eps, onnx_momentum = node.attr("epsilon", 1e-5), node.attr("momentum", 0.9)
    momentum = 1.0 - onnx_momentum  # ONNX keeps `momentum` of the old statistics, torch of the new
    stats_are_state = all(node.host.is_state(node.op.inputs[p]) for p in (3, 4))
    if node.opset < 9 and node.attr("spatial", 1) == 0:
        return _per_activation_batch_norm(eps)

    if node.attr("training_mode", 0):
        return _training_mode_batch_norm(eps, onnx_momentum)

    def batch_norm(x, scale, bias, mean, var):
        # Batch statistics only while this node's own affine parameters train: a frozen part of the
        # model (--train head/touched) keeps its running statistics too.
        if not (node.host.bn_training() and (scale.requires_grad or bias.requires_grad)):
            y = F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)
            return (y, mean, var) if node.num_outputs > 1 else y
        running = (mean, var) if stats_are_state else (None, None)
        y = node.host.batch_norm_train(x, scale, bias, *running, momentum, eps)
        return (y, mean, var) if node.num_outputs > 1 else y
    return batch_norm


def _training_mode_batch_norm(eps, onnx_momentum):
    # A node exported with training_mode=1 always normalizes by the batch and outputs the updated
    # running statistics (population variance, as the spec's reference computes it).
    def batch_norm(x, scale, bias, mean, var):
        dims = [0] + list(range(2, x.dim()))
        batch_mean, batch_var = x.mean(dims), x.var(dims, unbiased=False)
        y = F.batch_norm(x, batch_mean, batch_var, scale, bias, False, 0.0, eps)
        return (y, mean * onnx_momentum + batch_mean * (1 - onnx_momentum),
                var * onnx_momentum + batch_var * (1 - onnx_momentum))
    return batch_norm


def _per_activation_batch_norm(eps):
    # spatial=0 (opset < 9): statistics of shape x.shape[1:], applied without broadcasting over space.
    def batch_norm(x, scale, bias, mean, var):
        return (x - mean) / torch.sqrt(var + eps) * scale + bias
    return batch_norm


@register("InstanceNormalization")
def _instance_norm(node: Node):
    eps = node.attr("epsilon", 1e-5)
    return lambda x, scale, bias: F.instance_norm(x, weight=scale, bias=bias, eps=eps)


@register("LayerNormalization")
def _layer_norm(node: Node):
    axis, eps, extra = node.attr("axis", -1), node.attr("epsilon", 1e-5), node.num_outputs > 1

    def layer_norm(x, scale, bias=None):
        start = axis if axis >= 0 else axis + x.dim()
        shape = tuple(x.shape[start:])
        if not extra and tuple(scale.shape) == shape and (bias is None or tuple(bias.shape) == shape):
            return F.layer_norm(x, shape, scale, bias, eps)
        dims = tuple(range(start, x.dim()))
        mean = x.mean(dims, keepdim=True)
        inv_std = torch.rsqrt(((x - mean) ** 2).mean(dims, keepdim=True) + eps)
        y = (x - mean) * inv_std * scale
        y = y if bias is None else y + bias
        return (y, mean, inv_std) if extra else y
    return layer_norm


@register("LRN")
def _lrn(node: Node):
    alpha, beta, bias = node.attr("alpha", 1e-4), node.attr("beta", 0.75), node.attr("bias", 1.0)
    size = node.attr("size")
    front, back = (size - 1) // 2, size - 1 - (size - 1) // 2  # ONNX: floor before, ceil after

    def lrn(x):
        square = (x * x).reshape(x.shape[0], 1, x.shape[1], -1)
        window = F.pad(square, (0, 0, front, back))
        sums = F.avg_pool2d(window, (size, 1), stride=1) * size
        return x / (bias + alpha / size * sums.reshape(x.shape)) ** beta
    return lrn


# ---- dense ----------------------------------------------------------------------------------
@register("MatMul")
def _matmul(node: Node):
    return torch.matmul


@register("Gemm")
def _gemm(node: Node):
    trans_a, trans_b = node.attr("transA", 0), node.attr("transB", 0)
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    if not trans_a and trans_b and alpha == 1.0 and beta == 1.0:
        return lambda a, b, c=None: F.linear(a, b, c)  # the common exported Linear, one fused kernel

    def gemm(a, b, c=None):
        y = (a.t() if trans_a else a) @ (b.t() if trans_b else b)
        y = y if alpha == 1.0 else alpha * y
        return y if c is None else y + (c if beta == 1.0 else beta * c)
    return gemm


@register("Einsum")
def _einsum(node: Node):
    equation = node.attr("equation").decode()
    return lambda *xs: torch.einsum(equation, *xs)


# ---- softmax family -------------------------------------------------------------------------
def _softmax_like(fn):
    def build(node: Node):
        axis = node.attr("axis", 1 if node.opset < 13 else -1)
        if node.opset >= 13:
            return lambda x: fn(x, axis)

        def coerced(x):
            # Before opset 13 the input is viewed as 2-D [prod(shape[:axis]), prod(shape[axis:])].
            start = axis if axis >= 0 else axis + x.dim()
            flat = x.reshape(math.prod(x.shape[:start]), -1)
            return fn(flat, 1).reshape(x.shape)
        return coerced
    return build


def _hardmax(x, axis):
    return F.one_hot(x.argmax(axis), x.shape[axis]).movedim(-1, axis).to(x.dtype)


register("Softmax")(_softmax_like(lambda x, axis: torch.softmax(x, axis)))
register("LogSoftmax")(_softmax_like(lambda x, axis: torch.log_softmax(x, axis)))
register("Hardmax")(_softmax_like(_hardmax))


@register("Dropout")
def _dropout(node: Node):
    # Exported inference graphs run Dropout as identity (ONNX's default training_mode=false);
    # recovery keeps the student's function as exported rather than adding noise.
    def dropout(x, ratio=None, training_mode=None):
        if training_mode is not None and bool(training_mode):
            raise node.fail("Dropout with training_mode=true is not supported")
        return (x, torch.ones_like(x, dtype=torch.bool)) if node.num_outputs > 1 else x
    return dropout
