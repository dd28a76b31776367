"""What the matcher knows about each op: its dataflow neighbours, a local label and neighbourhood hashes.

The local label is what an op *is* regardless of names: domain, op type, attributes, the shapes of
its weights and which graph inputs/outputs it touches. Weisfeiler-Lehman hashes (networkx) fold the
labels of ever wider neighbourhoods into each op's hash, so an op whose surroundings did not change
keeps its hash even when every name in the model did.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from graphsurg.ir import Attr, Graph, Op, Tensor, Value

WL_DEPTH = 3  # hops folded into the deepest hash; deeper costs time and matches fewer ops near an edit
_SMALL_TENSOR = 64  # Constant tensors up to this many elements are identified by value, larger by shape


def digest(text: str | bytes, size: int = 8) -> str:
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return hashlib.blake2b(data, digest_size=size).hexdigest()


def tensor_digest(tensor: Tensor) -> str:
    """Identity of a tensor's contents: dtype, shape and bytes."""
    array = np.ascontiguousarray(tensor.numpy())
    header = f"{tensor.dtype}:{tensor.shape}:".encode()
    if array.dtype == object:
        return digest(header + repr(array.tolist()).encode(), 12)
    return digest(header + array.tobytes(), 12)


def attr_digest(attr: Attr, by_value: bool = True) -> str:
    """A canonical string for an attribute; subgraphs are summarised by their op types."""
    if attr.kind == "tensor":
        tensor: Tensor = attr.value
        if by_value or tensor.size <= _SMALL_TENSOR:
            return f"t:{tensor_digest(tensor)}"
        return f"t:{tensor.dtype}:{tensor.shape}"
    if attr.kind in ("graph", "graphs"):
        graphs = [attr.value] if attr.kind == "graph" else list(attr.value)
        return "g:" + digest("|".join(",".join(sorted(op.op_type for op in g.iter_all_ops())) for g in graphs))
    if attr.kind == "opaque":
        return f"o:{digest(attr.value)}"
    return f"{attr.kind}:{attr.value!r}"


def is_dequantize(op: Op | None) -> bool:
    return op is not None and op.op_type == "DequantizeLinear" and op.domain in ("", "ai.onnx", "com.microsoft")


def is_quantize(op: Op | None) -> bool:
    return op is not None and op.op_type == "QuantizeLinear" and op.domain in ("", "ai.onnx", "com.microsoft")


@dataclass
class GraphIndex:
    """Producer/consumer maps of one graph (built once; the IR's own lookups walk networkx each time)."""

    graph: Graph
    order: list[Op]
    position: dict[Op, float] = field(default_factory=dict)
    producer: dict[Value, tuple[Op, int]] = field(default_factory=dict)
    consumers: dict[Value, list[tuple[Op, int]]] = field(default_factory=dict)
    input_index: dict[Value, int] = field(default_factory=dict)
    output_index: dict[Value, list[int]] = field(default_factory=dict)

    @classmethod
    def build(cls, graph: Graph) -> GraphIndex:
        order = graph.topological_order()
        index = cls(graph, order)
        span = max(len(order) - 1, 1)
        for i, op in enumerate(order):
            index.position[op] = i / span
            for port, value in enumerate(op.outputs):
                if value is not None:
                    index.producer[value] = (op, port)
            for port, value in enumerate(op.inputs):
                if value is not None:
                    index.consumers.setdefault(value, []).append((op, port))
        for i, value in enumerate(v for v in graph.inputs if not v.is_const):
            index.input_index[value] = i
        for i, value in enumerate(graph.outputs):
            index.output_index.setdefault(value, []).append(i)
        return index

    def producer_op(self, value: Value | None) -> Op | None:
        found = self.producer.get(value) if value is not None else None
        return found[0] if found else None

    def weight_source(self, value: Value | None) -> WeightSource | None:
        """The constant behind an op input: an initializer or a Constant op's tensor, possibly seen
        through DequantizeLinear (and through a QuantizeLinear -> DequantizeLinear pair)."""
        if value is None:
            return None
        stored = self._stored(value)
        if stored is not None:
            return stored
        dq = self.producer_op(value)
        if not is_dequantize(dq) or not dq.inputs or dq.inputs[0] is None:
            return None
        inner = self._stored(dq.inputs[0])
        if inner is not None:
            return WeightSource(inner.value, dq=dq, constant=inner.constant)
        q = self.producer_op(dq.inputs[0])
        if is_quantize(q) and q.inputs:
            inner = self._stored(q.inputs[0])
            if inner is not None:
                return WeightSource(inner.value, dq=dq, q=q, constant=inner.constant)
        return None

    def _stored(self, value: Value | None) -> WeightSource | None:
        if value is None:
            return None
        if value.is_const:
            return WeightSource(value)
        producer = self.producer_op(value)
        if is_constant(producer):
            return WeightSource(value, constant=producer)
        return None


def is_constant(op: Op | None) -> bool:
    """A Constant op holding a tensor (its output is a weight like an initializer)."""
    if op is None or op.op_type != "Constant" or op.domain not in ("", "ai.onnx"):
        return False
    attr = op.attrs.get("value")
    return attr is not None and attr.kind == "tensor"


@dataclass(frozen=True)
class WeightSource:
    """A weight as an op sees it: the stored constant (an initializer, or the output of the Constant op
    `constant`) and the quantize/dequantize ops in front of it."""

    value: Value
    dq: Op | None = None
    q: Op | None = None
    constant: Op | None = None

    @property
    def tensor(self) -> Tensor:
        return self.constant.attrs["value"].value if self.constant is not None else self.value.const

    @property
    def quantized(self) -> bool:
        return self.dq is not None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)

    @property
    def dtype(self) -> int:
        return self.tensor.dtype

    def stored(self) -> list[Value]:
        """The initializers this weight is made of (its tensor and its scale/zero point)."""
        ops = [op for op in (self.q, self.dq) if op is not None]
        extra = [v for op in ops for v in op.inputs[1:] if v is not None and v.is_const]
        return ([self.value] if self.constant is None else []) + extra

    def tensors(self) -> list[Tensor]:
        """Every tensor the weight's value depends on, for an exact comparison."""
        ops = [op for op in (self.q, self.dq) if op is not None]
        extra = [v.const for op in ops for v in op.inputs[1:] if v is not None and v.is_const]
        return [self.tensor, *extra]


def local_label(op: Op, index: GraphIndex) -> str:
    """What an op is, independent of every name: the WL hashes start from this."""
    parts = [op.domain, op.op_type, str(len(op.inputs)), str(len(op.outputs))]
    parts += [f"{k}={attr_digest(a, by_value=False)}" for k, a in sorted(op.attrs.items())]
    for port, value in enumerate(op.inputs):
        if value is None:
            parts.append(f"{port}-")
        elif value in index.input_index:
            parts.append(f"{port}i{index.input_index[value]}")
        elif value.graph is not index.graph and value not in index.producer:
            parts.append(f"{port}o")  # read from an enclosing graph
        else:
            source = index.weight_source(value)
            if source is not None and not (is_dequantize(op) or is_quantize(op)):
                parts.append(f"{port}w{list(source.shape)}")
    for port, value in enumerate(op.outputs):
        for position in index.output_index.get(value, []) if value is not None else []:
            parts.append(f"out{port}:{position}")
    return digest("|".join(parts))


def op_level_graph(index: GraphIndex, labels: dict[Op, str]) -> nx.DiGraph:
    """Ops as vertices (numbered in topological order: integers hash faster than ops), dataflow as
    edges labelled with (output port > input port)."""
    number = {op: i for i, op in enumerate(index.order)}
    graph = nx.DiGraph()
    graph.add_nodes_from((i, {"label": labels[op]}) for i, op in enumerate(index.order))
    ports: dict[tuple[int, int], list[str]] = {}
    for op in index.order:
        for port, value in enumerate(op.inputs):
            found = index.producer.get(value) if value is not None else None
            if found is not None:
                ports.setdefault((number[found[0]], number[op]), []).append(f"{found[1]}>{port}")
    graph.add_edges_from((src, dst, {"port": ",".join(sorted(keys))}) for (src, dst), keys in ports.items())
    return graph


@dataclass
class GraphFeatures:
    index: GraphIndex
    labels: dict[Op, str]
    hashes: dict[Op, list[str]]  # hashes[op][k]: the op's neighbourhood of radius k (k = 0 is the label)

    @classmethod
    def build(cls, graph: Graph, depth: int = WL_DEPTH) -> GraphFeatures:
        index = GraphIndex.build(graph)
        labels = {op: local_label(op, index) for op in index.order}
        hashes = {}
        if index.order:
            with warnings.catch_warnings():  # networkx notes that directed hashes changed in 3.5; ours are per run
                warnings.simplefilter("ignore", UserWarning)
                numbered = nx.weisfeiler_lehman_subgraph_hashes(
                    op_level_graph(index, labels), node_attr="label", edge_attr="port", iterations=depth,
                    digest_size=8, include_initial_labels=True,
                )
            hashes = {op: numbered[i] for i, op in enumerate(index.order)}
        return cls(index, labels, hashes)

    def kind(self, op: Op) -> tuple[str, str]:
        return (op.domain if op.domain != "ai.onnx" else "", op.op_type)

