"""SmoothQuant: move per-channel activation outliers into the weights that read them.

For an activation X (channels on its last axis) read only by MatMul/Gemm ops with constant
weights, s_j = max|X_j|^alpha / max|W_j,:|^(1 - alpha); X becomes X / s and each weight's input
rows are multiplied by s, which leaves every product unchanged while flattening X's outlier
channels so a per-tensor activation scale fits them. The division is folded into the op that
makes X: a LayerNormalization's scale and bias, or the Mul (and the Add after it) that ends a
decomposed LayerNorm, or a Mul by a per-channel constant. Tensors without such a producer are left
as they are, with the reason recorded (an extra Mul would cost a float op per inference).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from graphsurg.passes._quant_plan import Plan, weight_array

from graphsurg.ir import Graph, Model, Op, Value
from graphsurg.pipeline import PassContext

_SCALE_LIMITS = (1e-4, 1e4)


def smooth_plan(model: Model, plan: Plan, ctx: PassContext, alpha: float, options: dict[str, Any]) -> dict[str, Any]:
    """Smooths every eligible activation of the plan's MatMul/Gemm targets; returns the record."""
    graph = model.graph
    groups, skipped = _groups(graph, plan)
    if not groups:
        return {"alpha": alpha, "smoothed": [], "skipped": skipped}
    names = list(groups)
    stats = ctx.activation_stats(model, names, "SmoothQuant (smooth=)", histogram=False, channel_absmax=names,
                                 **options)
    smoothed = []
    for name, readers in groups.items():
        x = graph.value(name)
        act = stats[name].get("channel_absmax")
        if act is None:
            skipped.append({"tensor": name, "reason": "no per-channel statistics"})
            continue
        entry = _smooth(graph, x, readers, np.asarray(act, np.float64), alpha)
        (smoothed if "folded_into" in entry else skipped).append(entry)
    return {"alpha": alpha, "smoothed": smoothed, "skipped": skipped}


def _groups(graph: Graph, plan: Plan) -> tuple[dict[str, list[tuple[Op, int]]], list[dict[str, str]]]:
    """Activation name -> [(op, weight input-channel axis)] for tensors whose every reader is a target."""
    targeted = {t.key: t for t in plan.targets if t.kind in ("matmul", "gemm")}
    groups: dict[str, list[tuple[Op, int]]] = {}
    skipped = []
    for target in targeted.values():
        op = graph.producer(graph.value(target.key))
        x = op.inputs[0]
        if x.name in groups or any(s["tensor"] == x.name for s in skipped):
            continue
        readers, reason = _readers(graph, x, targeted)
        if reason:
            skipped.append({"tensor": x.name, "reason": reason})
        else:
            groups[x.name] = readers
    return groups, skipped


def _readers(graph: Graph, x: Value, targeted: dict) -> tuple[list[tuple[Op, int]], str | None]:
    readers = []
    if x in graph.outputs or x in graph.inputs:
        return [], "it is a graph input or output"
    for op, port in graph.consumers(x):
        key = op.outputs[0].name if op.outputs and op.outputs[0] is not None else None
        if port != 0 or key not in targeted:
            return [], f"it is also read by {op.label}, which would see the scaled values"
        if op.op_type == "Gemm" and op.attr("transA", 0):
            return [], f"{op.label} transposes its input"
        readers.append((op, 1 if op.op_type == "Gemm" and op.attr("transB", 0) else 0))
    return readers, None


def _smooth(graph: Graph, x: Value, readers: list[tuple[Op, int]], act_max: np.ndarray, alpha: float):
    weights = [weight_array(graph, op.inputs[1]).astype(np.float64) for op, _ in readers]
    w_max = np.max([np.abs(w).max(axis=1 - axis) for w, (_, axis) in zip(weights, readers, strict=True)], axis=0)
    if w_max.shape != act_max.shape:
        return {"tensor": x.name, "reason": "channel counts of activation and weights differ"}
    s = np.where((act_max > 0) & (w_max > 0), act_max**alpha / np.maximum(w_max, 1e-12) ** (1.0 - alpha), 1.0)
    s = np.clip(s, *_SCALE_LIMITS)
    folded = _fold_into_producer(graph, x, 1.0 / s)
    if folded is None:
        return {"tensor": x.name, "reason": "its producer is not a LayerNormalization or a per-channel Mul/Add"}
    for (op, axis), w in zip(readers, weights, strict=True):
        shape = [1, 1]
        shape[axis] = -1
        scaled = (w * s.reshape(shape)).astype(np.float32)
        _replace_const(graph, op, 1, scaled, "smoothed")
    return {"tensor": x.name, "folded_into": folded, "ops": [op.label for op, _ in readers],
            "scale_min": float(s.min()), "scale_max": float(s.max())}


def _fold_into_producer(graph: Graph, x: Value, inv: np.ndarray) -> str | None:
    """Multiplies the per-channel constants of X's producer by `inv`; the producer's label, or None."""
    op = graph.producer(x)
    if op is None or op.domain not in ("", "ai.onnx"):
        return None
    if op.op_type == "LayerNormalization" and int(op.attr("axis", -1)) in (-1, (x.rank or 0) - 1):
        ports = [p for p in (1, 2) if p < len(op.inputs) and op.inputs[p] is not None]
        if all(_channel_const(graph, op.inputs[p], len(inv)) is not None for p in ports):
            for p in ports:
                _replace_const(graph, op, p, _channel_const(graph, op.inputs[p], len(inv)) * inv, "smooth")
            return op.label
        return None
    if op.op_type == "Add":
        return _fold_affine(graph, op, inv)
    if op.op_type == "Mul":
        port = _const_port(graph, op, len(inv))
        if port is not None:
            _replace_const(graph, op, port, _channel_const(graph, op.inputs[port], len(inv)) * inv, "smooth")
            return op.label
    return None


def _fold_affine(graph: Graph, add: Op, inv: np.ndarray) -> str | None:
    """Add(Mul(z, gamma), beta), the tail of a decomposed LayerNorm: both constants scale by `inv`."""
    beta_port = _const_port(graph, add, len(inv))
    if beta_port is None:
        return None
    mul = graph.producer(add.inputs[1 - beta_port])
    if mul is None or mul.op_type != "Mul" or len(graph.consumers(mul.outputs[0])) != 1:
        return None
    gamma_port = _const_port(graph, mul, len(inv))
    if gamma_port is None or mul.outputs[0] in graph.outputs:
        return None
    _replace_const(graph, mul, gamma_port, _channel_const(graph, mul.inputs[gamma_port], len(inv)) * inv, "smooth")
    _replace_const(graph, add, beta_port, _channel_const(graph, add.inputs[beta_port], len(inv)) * inv, "smooth")
    return f"{mul.label} + {add.label}"


def _const_port(graph: Graph, op: Op, channels: int) -> int | None:
    ports = [p for p in (0, 1) if _channel_const(graph, op.inputs[p], channels) is not None]
    return ports[0] if len(ports) == 1 else None


def _channel_const(graph: Graph, value: Value | None, channels: int) -> np.ndarray | None:
    """A float initializer broadcasting along the last axis only: shape [..., 1, channels]."""
    array = weight_array(graph, value)
    if array is None or array.dtype != np.float32 or array.ndim == 0 or array.shape[-1] != channels:
        return None
    if any(d != 1 for d in array.shape[:-1]):
        return None
    return array.astype(np.float64)


def _replace_const(graph: Graph, op: Op, port: int, array: np.ndarray, suffix: str) -> None:
    old = op.inputs[port]
    new = graph.add_initializer(f"{old.name}_{suffix}", np.asarray(array, np.float32).reshape(old.const.shape))
    graph.set_input(op, port, new)
    if not graph.is_used(old):
        graph.remove_value(old)
