"""graft: insert identity-initialized layers (Net2DeeperNet), so the model grows but computes the same."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from graphsurg.passes._graft_layers import find_value, is_default, layer_of, numpy_dtype
from graphsurg.passes._graft_sign import negativity_reason
from graphsurg.passes._util import read_in_subgraph

from graphsurg import serde
from graphsurg.errors import UsageError
from graphsurg.ir import Graph, Model, Value
from graphsurg.pipeline import Pass, PassContext, PassResult

# Ops that mark a rank-3 tensor as a channels-first 1-D map (N, C, L) rather than a sequence of vectors.
_CHANNEL_FIRST_OPS = {"Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization", "MaxPool",
                      "AveragePool", "GlobalAveragePool", "GlobalMaxPool"}
_CONV_KERNEL = 3  # a 3x3 Dirac kernel: identity now, spatial capacity once trained


@dataclass(frozen=True)
class GraftParams:
    after: str = "auto"  # a tensor (or node) name, several separated by commas, or auto
    kind: Literal["auto", "linear", "conv"] = "auto"
    activation: Literal["none", "relu"] = "none"
    count: int = 1  # identity layers stacked at each position
    max_mb: float = 256.0  # refuse a position whose identity weight would be larger

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("count must be at least 1")
        if self.max_mb <= 0:
            raise ValueError("max_mb must be positive")
        if not self.after.strip():
            raise ValueError("after needs a tensor name or auto")


@dataclass(frozen=True)
class _Site:
    value: Value
    kind: str  # "linear" (last axis) or "conv" (axis 1 of an N, C, ... map)
    width: int
    dtype: np.dtype


class Graft(Pass):
    """Inserts `count` identity-initialized layers after a value; the function does not change.

    Handles: feature vectors and transformer hidden states (any rank >= 1, float16/32/64) get a
    linear layer on the last axis: Gemm(W = I, b = 0) for rank 2, MatMul(I) + Add(0) otherwise;
    channels-first maps (rank 4 and 5, or rank 3 next to a Conv/pool/BatchNorm) get a Conv with a
    3x3 Dirac kernel, same padding, stride 1, groups 1, zero bias. `activation=relu` adds a Relu
    after each layer where the value is provably non-negative (it comes out of Relu, Sigmoid,
    Softmax, ..., see passes/_graft_sign.py), so the Relu is an identity too. A graft after a graph
    output keeps the output's name. `after=auto` grafts before every parametric layer (Gemm,
    MatMul or Conv with constant weights): after each value such a layer reads, except graph
    inputs; with `kind=linear|conv` only before layers of that kind.
    Refuses (UsageError when the value was named, a recorded refusal under after=auto): constants,
    non-float dtypes (and bfloat16/float8, which the IR holds as raw bits), unknown rank or unknown
    width on the grafted axis, values read by name inside If/Loop/Scan bodies, `kind=conv` on a
    value of rank < 3, `activation=relu` where the value may be negative, with where that
    negative may come from, and a layer whose identity weight would exceed `max_mb` (a graft after
    VGG's 25,088-wide flattened features would weigh 2.5 GB). Main graph only.
    """

    name = "graft"
    Params = GraftParams

    def run(self, model: Model, ctx: PassContext, result: PassResult) -> None:
        graph = model.graph
        serde.infer_shapes(model)  # ranks and widths of intermediate values
        sites = self._auto_sites(graph, result) if self.params.after == "auto" else self._named_sites(graph)
        inserted = [self._insert(graph, site, result) for site in sites]
        result.modified = bool(inserted)
        # A graft after a graph output hands the output's name to the graft; the tensor that had
        # it is renamed, which per-layer comparison (`graphsurg eval --changes`) needs to know.
        renamed = {entry["after"]: site.value.name for entry, site in zip(inserted, sites, strict=True)
                   if entry["after"] != site.value.name}
        result.changes = {"inserted": inserted, "value_map": renamed}
        layers = sum(len(entry["layers"]) for entry in inserted)
        result.summary = f"grafted {layers} identity layer(s) after {len(inserted)} value(s)"
        if not inserted:
            result.summary = "no eligible position to graft after"

    # ---- choosing positions -------------------------------------------------------------
    def _named_sites(self, graph: Graph) -> list[_Site]:
        after = self.params.after
        names = [after] if graph.lookup(after) is not None else [n.strip() for n in after.split(",") if n.strip()]
        sites = []
        for name in names:
            value = find_value(graph, name, "graft")
            site = _site(graph, value, self.params.kind)
            if isinstance(site, str):
                raise UsageError(f"graft after {name!r}: {site}")
            refusal = self._refusal(graph, site)
            if refusal:
                raise UsageError(f"graft after {name!r}: {refusal}")
            sites.append(site)
        return sites

    def _auto_sites(self, graph: Graph, result: PassResult) -> list[_Site]:
        sites = []
        for value, layer_kind in eligible_positions(graph):
            if self.params.kind not in ("auto", layer_kind):
                continue
            site = _site(graph, value, layer_kind)
            reason = site if isinstance(site, str) else self._refusal(graph, site)
            if reason:
                result.refuse(value.name, reason)
            else:
                sites.append(site)
        return sites

    def _refusal(self, graph: Graph, site: _Site) -> str | None:
        return self._size_refusal(site) or self._activation_refusal(graph, site.value)

    def _size_refusal(self, site: _Site) -> str | None:
        spatial = len(site.value.shape) - 2 if site.kind == "conv" else 0
        megabytes = site.width ** 2 * _CONV_KERNEL ** spatial * site.dtype.itemsize / 2**20
        if megabytes <= self.params.max_mb:
            return None
        return (f"an identity layer {site.width} wide would weigh {megabytes:,.0f} MB "
                f"(max_mb={self.params.max_mb:g}; raise it to graft here anyway)")

    def _activation_refusal(self, graph: Graph, value: Value) -> str | None:
        if self.params.activation != "relu":
            return None
        reason = negativity_reason(graph, value)
        if reason is None:
            return None
        return (f"activation=relu needs a value that is provably >= 0, but {value.name!r} can be negative "
                f"({reason}); a Relu would clip it and change the function (use activation=none)")

    # ---- inserting ----------------------------------------------------------------------
    def _insert(self, graph: Graph, site: _Site, result: PassResult) -> dict:
        entry = {"after": site.value.name, "kind": site.kind, "width": site.width,
                 "activation": self.params.activation, "layers": []}
        current = site.value
        for _ in range(self.params.count):
            prefix = graph.fresh_name("graft")
            weight = graph.add_initializer(f"{prefix}.weight", _identity_weight(site))
            bias = graph.add_initializer(f"{prefix}.bias", np.zeros(site.width, site.dtype))
            ops = _insert_layer(graph, current, site, prefix, weight, bias)
            if self.params.activation == "relu":
                ops.append(graph.insert_after(ops[-1].outputs[0], "Relu", name=f"{prefix}/Relu"))
            current = ops[-1].outputs[0]
            result.touch(weight.name, bias.name)
            entry["layers"].append({"ops": [op.name for op in ops], "op_types": [op.op_type for op in ops],
                                    "parameters": [weight.name, bias.name]})
        return entry


def eligible_positions(graph: Graph) -> list[tuple[Value, str]]:
    """Values that parametric layers read (their data input), with that layer's kind; what
    `after=auto` grafts after. Graph inputs are left out: a layer on raw input adds nothing the
    first layer cannot learn."""
    found: dict[Value, str] = {}
    for op in graph.topological_order():
        layer = layer_of(graph, op)
        value = op.inputs[0] if layer is not None else None
        if value is not None and value not in graph.inputs and value not in found:
            found[value] = layer.kind
    return list(found.items())


def _site(graph: Graph, value: Value, kind: str) -> _Site | str:
    """Where and how an identity layer fits after `value`, or why it does not."""
    if value.graph is not graph:
        return "the value lives inside a subgraph; graft works on the main graph"
    if graph.const_value(value) is not None:
        return "it is a constant (a weight), not an activation"
    dtype = numpy_dtype(value)
    if dtype is None:
        return "identity layers are written for float16/float32/float64 values only"
    if value.shape is None:
        return "its rank is unknown (shape inference could not tell)"
    if read_in_subgraph(graph, value):
        return "it is read by name inside an If/Loop/Scan body, which a graft would not rewire"
    kind = _layout(graph, value) if kind == "auto" else kind
    if kind == "conv":
        if not 3 <= len(value.shape) <= 5:
            return f"kind=conv needs an N, C, spatial... map of rank 3 to 5, not rank {len(value.shape)}"
        width = value.shape[1]
    else:
        width = value.shape[-1] if value.shape else None
    if not isinstance(width, int) or width < 1:
        axis = "channel count" if kind == "conv" else "size of the last axis"
        return f"its {axis} is not known statically ({width!r})"
    return _Site(value, kind, width, dtype)


def _layout(graph: Graph, value: Value) -> str:
    rank = len(value.shape or ())
    if rank >= 4:
        return "conv"
    neighbours = [op for op, _ in graph.consumers(value)] + [graph.producer(value)]
    if rank == 3 and any(op is not None and is_default(op) and op.op_type in _CHANNEL_FIRST_OPS for op in neighbours):
        return "conv"
    return "linear"


def _identity_weight(site: _Site) -> np.ndarray:
    if site.kind == "linear":
        return np.eye(site.width, dtype=site.dtype)  # symmetric, so the Gemm's transB does not matter
    spatial = len(site.value.shape) - 2
    kernel = np.zeros((site.width, site.width) + (_CONV_KERNEL,) * spatial, dtype=site.dtype)
    centre = (_CONV_KERNEL // 2,) * spatial
    for channel in range(site.width):
        kernel[(channel, channel) + centre] = 1  # Dirac: output channel c copies input channel c
    return kernel


def _insert_layer(graph: Graph, value: Value, site: _Site, prefix: str, weight: Value, bias: Value) -> list:
    if site.kind == "conv":
        spatial = len(site.value.shape) - 2
        attrs = {"kernel_shape": [_CONV_KERNEL] * spatial, "pads": [_CONV_KERNEL // 2] * (2 * spatial),
                 "strides": [1] * spatial, "dilations": [1] * spatial, "group": 1}
        return [graph.insert_after(value, "Conv", [weight, bias], attrs, name=f"{prefix}/Conv")]
    if len(value.shape) == 2:
        return [graph.insert_after(value, "Gemm", [weight, bias], {"transB": 1}, name=f"{prefix}/Gemm")]
    matmul = graph.insert_after(value, "MatMul", [weight], name=f"{prefix}/MatMul")
    return [matmul, graph.insert_after(matmul.outputs[0], "Add", [bias], name=f"{prefix}/Add")]
