"""widen: Net2WiderNet, more units in a layer while the model computes the same function."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from graphsurg.passes._graft_layers import (
    NUMERIC_FLOATS,
    Layer,
    bias_of,
    find_layer_op,
    layer_of,
    replace_const,
    set_dim,
)
from graphsurg.passes._graft_units import UnitRegion, Unsafe, trace_units

from graphsurg import serde
from graphsurg.errors import UsageError
from graphsurg.ir import Graph, Model, Op
from graphsurg.pipeline import Pass, PassContext, PassResult


@dataclass(frozen=True)
class WidenParams:
    node: str = ""  # the Gemm/MatMul/Conv to widen (node name or the name of its output)
    factor: float = 1.5  # new width = round(width * factor), unless width is given
    width: int | None = None  # the new width itself; wins over factor
    noise: float = 0.0  # relative noise on the new units' incoming weights (breaks symmetry, inexact)
    seed: int = 0
    split: Literal["divide", "zero"] = "divide"  # how a consumer shares a unit's weight among its copies

    def __post_init__(self) -> None:
        if self.factor <= 1:
            raise ValueError("factor must be greater than 1")
        if self.width is not None and self.width < 1:
            raise ValueError("width must be a positive number of units")
        if self.noise < 0:
            raise ValueError("noise must not be negative")


class Widen(Pass):
    """Gives a layer more output units by replicating existing ones (Net2WiderNet).

    Handles: a Gemm, MatMul (constant 2-D weight) or Conv (group 1) whose units flow through ops
    that treat each unit on its own (bias Add, elementwise activations including decomposed GELU,
    scalar math, BatchNorm/InstanceNorm, pooling, Flatten of a 1x1 map) into one or more layers
    that read them as input features (Gemm, MatMul, Conv with group 1). New units copy seeded
    random existing ones (weights, bias, per-unit constants, BatchNorm statistics). How each
    consumer reads a unit replicated k times (`split`):
    - `divide` (Net2WiderNet): every copy gets w/k. The function is unchanged in real arithmetic;
      in float32 the consumer sums k partial terms where it summed one, so outputs may move by a
      few ulps (4 ulps, 1.5e-5, on digits_mlp's logits of 34.5). The copies stay symmetric with
      their originals under training unless `noise > 0`.
    - `zero`: the original keeps w, the copies get 0. Adding exact zeros leaves every float sum
      as it was, so outputs are bit-identical; the copies' outgoing weights still receive
      gradients, which breaks the symmetry without noise (GradMax-style initialization).
    `noise > 0` adds Gaussian noise of that size (relative to the weight's standard deviation)
    to the new units' incoming weights, which breaks their symmetry at the cost of exactness.
    Refuses with a UsageError naming the cause (the user names the node, so a refusal is theirs
    to act on): ops that are not such layers, grouped/depthwise producers, non-float weights,
    units that reach a graph output, a residual Add or any op combining them with a tensor that
    is not widened, Reshape/Concat/Transpose/LayerNorm/Softmax or other ops that move or mix
    units, a grouped consumer Conv, and a new width not larger than the old. Main graph only.
    """

    name = "widen"
    Params = WidenParams

    def run(self, model: Model, ctx: PassContext, result: PassResult) -> None:
        graph = model.graph
        serde.infer_shapes(model)  # Flatten and BatchNorm checks need ranks
        if not self.params.node:
            names = ", ".join(op.label for op, _ in eligible_nodes(graph)) or "none in this model"
            raise UsageError(f"widen needs node=NAME; eligible nodes: {names}")
        region = self._region(graph, find_layer_op(graph, self.params.node, "widen"))
        units = region.producer.units
        width = self.params.width if self.params.width is not None else round(units * self.params.factor)
        if width <= units:
            raise UsageError(f"widen {self.params.node!r}: the new width {width} must exceed the current {units}")
        mapping = _mapping(units, width, self.params.seed)
        result.changes = self._apply(graph, region, mapping)
        result.touch(*result.changes["parameters"])
        result.arrays["mapping"] = mapping
        result.modified = True
        result.summary = f"widened {region.producer.op.label} from {units} to {width} units"

    def _region(self, graph: Graph, op: Op) -> UnitRegion:
        reason, region = _eligibility(graph, op)
        if reason is not None:
            raise UsageError(f"widen {self.params.node!r}: refused, {reason}")
        return region

    def _apply(self, graph: Graph, region: UnitRegion, mapping: np.ndarray) -> dict:
        producer, units = region.producer, region.producer.units
        touched = self._widen_producer(graph, producer, mapping)
        for edit in region.consts:
            array = graph.const_value(edit.op.inputs[edit.port])
            touched.append(replace_const(graph, edit.op, edit.port, np.take(array, mapping, axis=edit.axis)).name)
        counts = np.bincount(mapping, minlength=units)
        for layer in region.consumers:
            touched.append(_widen_consumer(graph, layer, mapping, _shares(mapping, counts, self.params.split)).name)
        for value, axis in region.values.items():
            set_dim(value, axis, len(mapping))
        return {"node": producer.op.label, "op_type": producer.op.op_type, "from": units, "to": len(mapping),
                "copied_from": mapping[units:].tolist(), "consumers": [c.op.label for c in region.consumers],
                "noise": self.params.noise, "split": self.params.split, "parameters": list(dict.fromkeys(touched))}

    def _widen_producer(self, graph: Graph, layer: Layer, mapping: np.ndarray) -> list[str]:
        weight = np.take(layer.weight, mapping, axis=layer.out_axis)
        if self.params.noise > 0:
            weight = _add_noise(weight, layer, self.params.noise, self.params.seed)
        names = [replace_const(graph, layer.op, 1, weight.astype(layer.weight.dtype)).name]
        bias = bias_of(graph, layer)
        if bias is not None and bias.ndim >= 1 and bias.shape[-1] == layer.units:
            names.append(replace_const(graph, layer.op, layer.bias_port, np.take(bias, mapping, axis=-1)).name)
        return names


def eligible_nodes(graph: Graph) -> list[tuple[Op, UnitRegion]]:
    """Every layer widen can grow exactly, in topological order (shapes must be inferred first)."""
    found = []
    for op in graph.topological_order():
        reason, region = _eligibility(graph, op)
        if reason is None:
            found.append((op, region))
    return found


def _eligibility(graph: Graph, op: Op) -> tuple[str | None, UnitRegion | None]:
    layer = layer_of(graph, op)
    if layer is None:
        return f"{op.label} is a {op.op_type}, not a Gemm/MatMul/Conv with a constant weight", None
    if op.op_type == "Conv" and op.attr("group", 1) != 1:
        return f"{op.label} is a grouped Conv; its channels are tied to its input groups", None
    if op.inputs[1].dtype not in NUMERIC_FLOATS:
        return f"{op.label} has non-float (or bit-packed) weights", None
    try:
        return None, trace_units(graph, layer)
    except Unsafe as exc:
        return str(exc), None


def _mapping(units: int, width: int, seed: int) -> np.ndarray:
    """Unit j of the wide layer copies unit mapping[j]: the originals first, then the copies.

    Copies spread evenly (every unit is copied q times, then r seeded random units once more),
    so no unit's outgoing weights are split much finer than the others'.
    """
    rounds, rest = divmod(width - units, units)
    picks = np.random.default_rng(seed).choice(units, size=rest, replace=False)
    copies = np.concatenate([np.tile(np.arange(units), rounds), picks])
    return np.concatenate([np.arange(units), np.sort(copies)]).astype(np.int64)


def _add_noise(weight: np.ndarray, layer: Layer, noise: float, seed: int) -> np.ndarray:
    moved = np.moveaxis(weight, layer.out_axis, 0).astype(np.float64)
    scale = noise * float(layer.weight.std() or 1.0)
    rng = np.random.default_rng(seed + 1)  # not the mapping's stream
    moved[layer.units:] += scale * rng.standard_normal(moved[layer.units:].shape)
    return np.moveaxis(moved, 0, layer.out_axis)


def _shares(mapping: np.ndarray, counts: np.ndarray, split: str) -> np.ndarray:
    """The share of its source unit's weight that each unit of the wide layer passes on."""
    if split == "divide":
        return 1.0 / counts[mapping]
    return (np.arange(len(mapping)) < len(counts)).astype(np.float64)  # the originals come first


def _widen_consumer(graph: Graph, layer: Layer, mapping: np.ndarray, shares: np.ndarray):
    """The consumer reads unit j with its source's weight times shares[j]; a unit's shares sum to 1."""
    shape = [1] * layer.weight.ndim
    shape[layer.in_axis] = len(mapping)
    weight = (np.take(layer.weight, mapping, axis=layer.in_axis) * shares.reshape(shape)).astype(layer.weight.dtype)
    return replace_const(graph, layer.op, 1, weight)
