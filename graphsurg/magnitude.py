"""Surgery magnitude ||Δθ|| / ||θ||, measured on the IR across passes.

Parameters are identified by (op label, input port): passes keep op names (and unnamed ops are
labelled by their first output, which passes keep too), so a snapshot before and after a pass,
or before and after a save/load, pairs each layer's effective weight with itself. The effective
weight of a port is its float initializer, or the dequantized value when the port reads a
DequantizeLinear of constants (so quantization error counts as a change). A removed layer
contributes its whole norm, a new layer (graft, new head) its whole norm; a tensor that shrank
(excision) contributes ||θ||² - ||θ'||², exact when the kept entries are unchanged, as excision
guarantees.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from graphsurg.diff.features import WeightSource, is_constant, is_dequantize
from graphsurg.diff.weights import effective
from graphsurg.ir import Graph, Model, Op, Value, dtypes

Key = tuple[str, int]


@dataclass(frozen=True)
class Param:
    layer: str
    name: str
    array: np.ndarray


def effective_params(model: Model) -> dict[Key, Param]:
    """The float weights each op reads through a constant input, keyed by (op label, port).

    BatchNormalization after a Conv is folded into the Conv first (W*γ/σ, (b-μ)*γ/σ+β), in every
    model measured: folding is a reparametrisation that changes no function (the quantizer does
    it), so it must not count as surgery.
    """
    graph = model.graph
    found: dict[Key, Param] = {}
    folded = {bn for bn in graph.ops if _foldable_bn(graph, bn)}
    for op in graph.ops:
        if op.op_type in ("QuantizeLinear", "DequantizeLinear") or op in folded:
            continue
        arrays = {port: _effective(graph, value) for port, value in enumerate(op.inputs)}
        bn = _bn_after(graph, op, folded)
        if bn is not None and arrays.get(1) is not None:
            arrays[1], arrays[2] = _fold(graph, arrays[1], arrays.get(2), bn)
        for port, array in arrays.items():
            if array is not None:
                name = op.inputs[port].name if port < len(op.inputs) and op.inputs[port] is not None else op.label
                found[(op.label, port)] = Param(op.label, name, array)
    return found


def _foldable_bn(graph: Graph, bn: Op) -> bool:
    if bn.op_type != "BatchNormalization" or len(bn.inputs) < 5 or bn.inputs[0] is None:
        return False
    producer = graph.producer(bn.inputs[0])
    return (producer is not None and producer.op_type == "Conv" and len(graph.consumers(bn.inputs[0])) == 1
            and bn.inputs[0] not in graph.outputs and all(graph.const_value(v) is not None for v in bn.inputs[1:5]))


def _bn_after(graph: Graph, op: Op, folded: set[Op]) -> Op | None:
    if op.op_type != "Conv" or not op.outputs or op.outputs[0] is None:
        return None
    consumers = graph.consumers(op.outputs[0])
    return consumers[0][0] if len(consumers) == 1 and consumers[0][0] in folded else None


def _fold(graph: Graph, weight: np.ndarray, bias: np.ndarray | None, bn: Op) -> tuple[np.ndarray, np.ndarray]:
    gamma, beta, mean, var = (graph.const_value(v).astype(np.float64) for v in bn.inputs[1:5])
    factor = gamma / np.sqrt(var + bn.attr("epsilon", 1e-5))
    shape = (-1,) + (1,) * (weight.ndim - 1)
    base = np.zeros_like(mean) if bias is None else bias.astype(np.float64)
    return ((weight * factor.reshape(shape)).astype(np.float32), ((base - mean) * factor + beta).astype(np.float32))


def _effective(graph: Graph, value: Value | None) -> np.ndarray | None:
    """A float initializer as stored, or a DequantizeLinear of constants as the op sees it (the diff's
    dequantization, so both tools value a quantized weight the same way)."""
    if value is None:
        return None
    if value.is_const:
        return value.const.numpy() if value.dtype in dtypes.FLOAT_CODES and value.const.size > 1 else None
    producer = graph.producer(value)
    if not is_dequantize(producer) or not producer.inputs or producer.inputs[0] is None:
        return None
    stored = producer.inputs[0]
    if stored.is_const:
        return effective(WeightSource(stored, dq=producer))
    constant = graph.producer(stored)
    return effective(WeightSource(stored, dq=producer, constant=constant)) if is_constant(constant) else None


@dataclass
class Delta:
    layer: str
    sq_change: float
    sq_norm: float

    @property
    def relative(self) -> float:
        return float(np.sqrt(self.sq_change / self.sq_norm)) if self.sq_norm else 0.0


def compare(before: dict[Key, Param], after: dict[Key, Param]) -> list[Delta]:
    """Per-layer squared change and squared original norm, in a stable order."""
    deltas: dict[str, Delta] = {}
    for key, change, norm in _pairs(before, after):
        layer = (before.get(key) or after[key]).layer
        entry = deltas.setdefault(layer, Delta(layer, 0.0, 0.0))
        entry.sq_change += change
        entry.sq_norm += norm
    return [deltas[k] for k in sorted(deltas)]


def _pairs(before: dict[Key, Param], after: dict[Key, Param]) -> Iterator[tuple[Key, float, float]]:
    for key, old in before.items():
        old_sq = _sq(old.array)
        new = after.get(key)
        if new is None:
            yield key, old_sq, old_sq
        elif new.array.shape == old.array.shape:
            yield key, _sq(new.array.astype(np.float64) - old.array), old_sq
        else:
            yield key, abs(old_sq - _sq(new.array)), old_sq
    for key, new in after.items():
        if key not in before:
            yield key, _sq(new.array), 0.0


def _sq(array: np.ndarray) -> float:
    flat = np.asarray(array, dtype=np.float64).ravel()
    return float(flat @ flat)


def summarize(deltas: list[Delta], total_sq_norm: float) -> dict:
    """Global and per-layer relative magnitude, against the original model's total norm."""
    change = sum(d.sq_change for d in deltas)
    return {
        "relative": float(np.sqrt(change / total_sq_norm)) if total_sq_norm else 0.0,
        "absolute": float(np.sqrt(change)),
        "per_layer": {d.layer: round(d.relative, 8) for d in deltas if d.sq_change > 0},
    }


def total_sq_norm(params: dict[Key, Param]) -> float:
    seen: set[str] = set()
    total = 0.0
    for param in params.values():
        if param.name not in seen:
            seen.add(param.name)
            total += _sq(param.array)
    return total
