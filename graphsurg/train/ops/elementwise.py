"""Elementwise ops: arithmetic, comparisons, logic, activations and variadic reductions."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from graphsurg.train.ops import Node, register

_UNARY = {
    "Abs": torch.abs, "Neg": torch.neg, "Exp": torch.exp, "Log": torch.log, "Sqrt": torch.sqrt,
    "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil, "Round": torch.round,
    "Sign": torch.sign, "Sin": torch.sin, "Cos": torch.cos, "Tan": torch.tan, "Asin": torch.asin,
    "Acos": torch.acos, "Atan": torch.atan, "Sinh": torch.sinh, "Cosh": torch.cosh, "Asinh": torch.asinh,
    "Acosh": torch.acosh, "Atanh": torch.atanh, "Erf": torch.erf, "Tanh": torch.tanh, "Sigmoid": torch.sigmoid,
    "Relu": torch.relu, "Softsign": F.softsign, "Softplus": F.softplus, "Not": torch.logical_not,
    "IsNaN": torch.isnan, "Identity": lambda x: x, "Mish": F.mish, "BitwiseNot": torch.bitwise_not,
}
_COMPARE = {
    "Equal": torch.eq, "Less": torch.lt, "LessOrEqual": torch.le, "Greater": torch.gt,
    "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or, "Xor": torch.logical_xor,
    "BitwiseAnd": torch.bitwise_and, "BitwiseOr": torch.bitwise_or, "BitwiseXor": torch.bitwise_xor,
}


def _unary_builder(fn):
    return lambda node: fn


for _name, _fn in _UNARY.items():
    register(_name)(_unary_builder(_fn))


def legacy_align(node: Node):
    """Opset < 7 binary ops broadcast B into A from `axis` when `broadcast=1`; later opsets use
    numpy rules. Returns a function that reshapes B accordingly (identity when not needed)."""
    if node.opset >= 7 or not node.attr("broadcast", 0) or node.attr("axis") is None:
        return None
    axis = node.attr("axis")

    def align(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        start = axis if axis >= 0 else axis + a.dim()
        return b.reshape(tuple(b.shape) + (1,) * (a.dim() - start - b.dim()))
    return align


def _binary_builder(fn):
    def build(node: Node):
        align = legacy_align(node)
        if align is None:
            return fn
        return lambda a, b: fn(a, align(a, b))
    return build


for _name, _fn in {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, **_COMPARE}.items():
    register(_name)(_binary_builder(_fn))


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.is_floating_point() or a.is_complex():
        return torch.div(a, b)
    return torch.div(a, b, rounding_mode="trunc")  # ONNX integer division truncates toward zero


def _pow(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    out = torch.pow(a, b)
    return out if out.dtype == a.dtype else out.to(a.dtype)  # the result keeps the base's type


register("Div")(_binary_builder(_div))
register("Pow")(_binary_builder(_pow))


@register("Mod")
def _mod(node: Node):
    # fmod=1: C fmod (sign of the dividend); fmod=0: the sign of the divisor, like Python's %.
    return torch.fmod if node.attr("fmod", 0) else torch.remainder


@register("BitShift")
def _bitshift(node: Node):
    left = node.attr("direction", b"LEFT") == b"LEFT"
    return torch.bitwise_left_shift if left else torch.bitwise_right_shift


@register("IsInf")
def _isinf(node: Node):
    negative, positive = node.attr("detect_negative", 1), node.attr("detect_positive", 1)

    def isinf(x):
        return (torch.isposinf(x) & bool(positive)) | (torch.isneginf(x) & bool(negative))
    return isinf


@register("Where")
def _where(node: Node):
    return torch.where


def _variadic(fn):
    return lambda node: lambda *xs: functools.reduce(fn, xs)


register("Sum")(_variadic(torch.add))
register("Max")(_variadic(torch.maximum))
register("Min")(_variadic(torch.minimum))


@register("Mean")
def _mean(node: Node):
    return lambda *xs: functools.reduce(torch.add, xs) / len(xs)


# ---- activations with attributes ------------------------------------------------------------
def _alpha_builder(fn, default: float):
    def build(node: Node):
        alpha = node.attr("alpha", default)
        return lambda x: fn(x, alpha)
    return build


for _name, (_fn, _default) in {"LeakyRelu": (F.leaky_relu, 0.01), "Elu": (F.elu, 1.0),
                               "Celu": (F.celu, 1.0)}.items():
    register(_name)(_alpha_builder(_fn, _default))


@register("Selu")
def _selu(node: Node):
    alpha = node.attr("alpha", 1.67326319217681884765625)
    gamma = node.attr("gamma", 1.05070102214813232421875)
    return lambda x: gamma * F.elu(x, alpha)


@register("HardSigmoid")
def _hard_sigmoid(node: Node):
    alpha, beta = node.attr("alpha", 0.2), node.attr("beta", 0.5)
    return lambda x: torch.clamp(alpha * x + beta, 0.0, 1.0)


@register("HardSwish")
def _hard_swish(node: Node):
    return F.hardswish


@register("ThresholdedRelu")
def _thresholded_relu(node: Node):
    alpha = node.attr("alpha", 1.0)
    return lambda x: torch.where(x > alpha, x, torch.zeros_like(x))


@register("Shrink")
def _shrink(node: Node):
    bias, lambd = node.attr("bias", 0.0), node.attr("lambd", 0.5)

    def shrink(x):
        zero = torch.zeros_like(x)
        return torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, zero))
    return shrink


@register("Gelu")
def _gelu(node: Node):
    approximate = node.attr("approximate", b"none").decode()
    return lambda x: F.gelu(x, approximate=approximate)


@register("PRelu")
def _prelu(node: Node):
    def prelu(x, slope):
        # Before opset 7 a 1-D slope of size C applied per channel (axis 1), not to the last axis.
        if node.opset < 7 and slope.dim() == 1 and x.dim() > 2 and slope.numel() == x.shape[1]:
            slope = slope.reshape((-1,) + (1,) * (x.dim() - 2))
        return torch.where(x >= 0, x, x * slope)
    return prelu


@register("Clip")
def _clip(node: Node):
    if node.opset < 11:
        low, high = node.attr("min", -math.inf), node.attr("max", math.inf)
        return lambda x: torch.clamp(x, low, high)

    def clip(x, low=None, high=None):
        # torch.clamp with both bounds applies max(min(...)) like ONNX; scalars keep int dtypes intact.
        low = None if low is None else low.item()
        high = None if high is None else high.item()
        return x if low is None and high is None else torch.clamp(x, low, high)
    return clip
