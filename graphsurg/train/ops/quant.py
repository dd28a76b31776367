"""QuantizeLinear / DequantizeLinear. Where a QuantizeLinear feeds only DequantizeLinear ops, the
pair trains as fake quantization: the quantized values stay in a float carrier, rounding passes
gradients straight through (STE) and clamping stops them outside the representable range.
Integer weights read by a DequantizeLinear get a float shadow parameter, fake-quantized the same
way and re-quantized when written back (see GraphModule)."""

from __future__ import annotations

import torch

from graphsurg.ir import dtypes
from graphsurg.train.ops import Node, register
from graphsurg.train.tensors import INT_RANGES, torch_dtype


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Rounds half to even like ONNX, with an identity gradient (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def per_axis(t: torch.Tensor | None, x: torch.Tensor, axis: int) -> torch.Tensor | None:
    """Reshapes a 1-D per-axis scale or zero point to broadcast along `axis` of `x`."""
    if t is None or t.dim() == 0 or x.dim() == 0 or t.numel() == 1:
        return t
    shape = [1] * x.dim()
    shape[axis % x.dim()] = -1
    return t.reshape(shape)


def fake_quantize(x, scale, zero_point, low: int, high: int) -> torch.Tensor:
    """clamp(round(x / scale) + zp) in float, differentiable in x (and in scale, when it trains)."""
    zp = 0.0 if zero_point is None else zero_point.to(x.dtype)
    return torch.clamp(round_ste(x / scale) + zp, low, high)


def dequantize(q, scale, zero_point) -> torch.Tensor:
    q = q.to(scale.dtype)
    return (q - zero_point.to(scale.dtype)) * scale if zero_point is not None else q * scale


def quant_type(node: Node, zero_point_port: int) -> int:
    """The ONNX integer type of the quantized tensor: the zero point's, else `output_dtype`, else uint8."""
    if node.has_input(zero_point_port) and node.op.inputs[zero_point_port].dtype is not None:
        return node.op.inputs[zero_point_port].dtype
    return node.attr("output_dtype", 0) or dtypes.UINT8


def _check_supported(node: Node, code: int) -> None:
    if node.attr("block_size", 0):
        raise node.fail("blocked quantization (block_size) is not supported")
    if code not in INT_RANGES:
        raise node.fail(f"quantization to {dtypes.name_of(code)} is not supported")


@register("QuantizeLinear")
def _quantize(node: Node):
    code = quant_type(node, 2)
    _check_supported(node, code)
    low, high = INT_RANGES[code]
    axis, fake = node.attr("axis", 1), node.host.is_fake_quant(node.op)
    out_dtype = torch_dtype(code)

    def quantize(x, scale, zero_point=None):
        scale, zero_point = per_axis(scale, x, axis), per_axis(zero_point, x, axis)
        q = fake_quantize(x.to(scale.dtype), scale, zero_point, low, high)
        return q if fake else q.detach().to(out_dtype)
    return quantize


@register("DequantizeLinear")
def _dequantize(node: Node):
    axis = node.attr("axis", 1)
    shadow = node.host.shadow_range(node.op.inputs[0])
    if shadow is not None:
        low, high = shadow

        def dequantize_shadow(w, scale, zero_point=None):
            # The float shadow of an integer weight: quantize it again on the way, so training sees
            # exactly the values the exported integer weight will hold.
            scale, zero_point = per_axis(scale, w, axis), per_axis(zero_point, w, axis)
            return dequantize(fake_quantize(w, scale, zero_point, low, high), scale, zero_point)
        return dequantize_shadow
    if node.has_input(2):
        _check_supported(node, node.op.inputs[2].dtype or dtypes.UINT8)

    def dequantize_op(q, scale, zero_point=None):
        return dequantize(q, per_axis(scale, q, axis), per_axis(zero_point, q, axis))
    return dequantize_op
