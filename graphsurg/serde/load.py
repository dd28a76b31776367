"""ONNX -> IR. The only module besides save.py that reads onnx protobufs."""

from __future__ import annotations

import contextlib
import gc
import operator
import os
from collections.abc import Iterator
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from graphsurg.errors import BadInputError
from graphsurg.ir import Attr, Graph, GraphError, Model, Op, Value
from graphsurg.serde.tensors import tensor_from_proto
from graphsurg.serde.types import read_value_info

_NODE_MODELED = frozenset({"input", "output", "name", "op_type", "domain", "attribute", "doc_string"})
_GRAPH_MODELED = frozenset({"node", "name", "initializer", "sparse_initializer", "doc_string", "input", "output",
                            "value_info"})
_MODEL_MODELED = frozenset({
    "ir_version", "opset_import", "producer_name", "producer_version", "domain", "model_version",
    "doc_string", "graph", "metadata_props", "functions",
})
_MODEL_SCALARS = ("producer_name", "producer_version", "domain", "model_version", "doc_string")
_ATTR_KINDS = {
    onnx.AttributeProto.INT: "int", onnx.AttributeProto.FLOAT: "float", onnx.AttributeProto.STRING: "string",
    onnx.AttributeProto.INTS: "ints", onnx.AttributeProto.FLOATS: "floats",
    onnx.AttributeProto.STRINGS: "strings", onnx.AttributeProto.TENSOR: "tensor",
    onnx.AttributeProto.GRAPH: "graph", onnx.AttributeProto.GRAPHS: "graphs",
}


def load(source: str | os.PathLike | bytes | onnx.ModelProto, base_dir: str | None = None,
         *, detach_external: bool = False) -> Model:
    """Loads a model from a path, serialized bytes or a ModelProto; weights stay lazy.

    `detach_external`: external data files are neither opened nor required; their tensors keep
    dtype, shape and location but cannot be read. For views that must not depend on whether the
    data is at hand, such as git's textconv (which gets a lone temporary copy of the old model file).

    From a path, large inline weights are not parsed at all: they stay in the file, memory-mapped
    on demand (see serde/scan.py), so loading costs the size of the graph, not of the weights.
    Raises BadInputError with one readable line for anything that is not a usable ONNX model.
    """
    payloads = None
    with gc_paused(long_lived=True):
        if isinstance(source, str | os.PathLike):
            proto, payloads = _parse_file(Path(source))
            if base_dir is None:
                base_dir = str(Path(source).resolve().parent)
        else:
            proto = parse(source)
        return from_proto(proto, base_dir, _payloads=payloads, detach_external=detach_external)


@contextlib.contextmanager
def gc_paused(long_lived: bool = False) -> Iterator[None]:
    """Holds Python's cyclic garbage collector while a graph is built: tens of thousands of new
    objects would otherwise trigger full collections over the growing heap (a third of the time).

    `long_lived`: what was built stays (a loaded model), so it is moved straight to the oldest
    generation, where two young collections would eventually put it, instead of being traversed
    by the young collection that the first allocation after re-enabling triggers (a sixth of a
    graph-heavy load). gc.freeze + gc.unfreeze do that move as list splices, without traversal;
    cyclic garbage made meanwhile waits for the next full collection. Skipped when the program
    has frozen objects itself, which unfreeze would release too.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        if long_lived and gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
    finally:
        if enabled:
            gc.enable()


def parse(source: str | os.PathLike | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """The whole ModelProto (weights included) of a path, bytes or ModelProto."""
    if isinstance(source, onnx.ModelProto):
        return source
    if isinstance(source, str | os.PathLike):
        path = _existing_file(Path(source))
        return _parse_bytes(_read(path), str(path))
    return _parse_bytes(bytes(source), "<bytes>")


def _existing_file(path: Path) -> Path:
    if not path.is_file():
        raise BadInputError(f"{path}: no such file")
    return path


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _parse_file(path: Path) -> tuple[onnx.ModelProto, dict | None]:
    """The model's proto, without the large inline payloads when the file allows (see scan.py)."""
    from graphsurg.serde.scan import read_skeleton

    _existing_file(path)
    try:
        skeleton = read_skeleton(str(path))
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if skeleton is None:
        return _parse_bytes(_read(path), str(path)), None
    payloads = {i: (skeleton.source, offset, length) for i, (offset, length) in skeleton.payloads.items()}
    return _parse_bytes(skeleton.data, str(path)), payloads


def _parse_bytes(data: bytes, label: str) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise BadInputError(f"{label}: not an ONNX model (protobuf does not parse: {exc})") from None
    _check_envelope(proto, label)
    return proto


def _check_envelope(proto: onnx.ModelProto, label: str) -> None:
    if not proto.HasField("graph") or proto.ir_version <= 0:
        raise BadInputError(f"{label}: not an ONNX model (no graph or IR version; truncated or another format?)")
    if not proto.opset_import:
        raise BadInputError(f"{label}: not a valid ONNX model (no opset imports; the file may be truncated)")


def from_proto(proto: onnx.ModelProto, base_dir: str | None = None, _payloads: dict | None = None,
               detach_external: bool = False) -> Model:
    """The IR of a parsed model. `base_dir` resolves external data locations."""
    graph = _graph_from_proto(proto.graph, None, base_dir, detach_external, _payloads)
    if proto.ir_version < 4:
        _constants_out_of_inputs(graph)
    try:
        _check_acyclic(graph)
    except GraphError as exc:
        raise BadInputError(f"invalid graph: {exc}") from None
    return Model(
        graph=graph,
        ir_version=proto.ir_version,
        opset_imports={o.domain: o.version for o in proto.opset_import},
        producer_name=proto.producer_name,
        producer_version=proto.producer_version,
        domain=proto.domain,
        model_version=proto.model_version,
        doc_string=proto.doc_string,
        metadata_props={p.key: p.value for p in proto.metadata_props},
        functions=[f.SerializeToString(deterministic=True) for f in proto.functions],
        rest_blob=_MODEL_REST.blob(proto),
        source_dir=base_dir,
        explicit_fields=_explicit_fields(proto),
    )


def _constants_out_of_inputs(graph: Graph) -> None:
    """IR version < 4 requires every initializer to be listed as a graph input; they are constants
    nonetheless (nothing can feed them: onnxruntime does not offer them as inputs), so the IR keeps
    them out of `inputs` and remembers the listing's order for the save."""
    if any(value.is_const for value in graph.inputs):
        graph.input_order = [value.name for value in graph.inputs]
        graph.inputs = [value for value in graph.inputs if not value.is_const]


def _check_acyclic(graph: Graph) -> None:
    """What `verify()` checks that building the graph does not already enforce: no cycles.

    The builder refuses values defined twice and dangling inputs, and writes every edge from the
    ops' own inputs and outputs (and the capture edges of bodies), so the other invariants hold
    by construction. The topological order computed here stays cached for `save`.
    """
    graph.topological_order()
    for op in graph.ops:
        if op.attrs:
            for sub in op.subgraphs():
                _check_acyclic(sub)


def _explicit_fields(proto: onnx.ModelProto) -> frozenset[str]:
    """Fields present with an empty value, so that save writes them again (byte-exact round trip)."""
    present = {name for name in _MODEL_SCALARS if proto.HasField(name) and not getattr(proto, name)}
    if any(o.domain == "" and o.HasField("domain") for o in proto.opset_import):
        present.add("opset_import.domain")
    return frozenset(present)


class _Unmodeled:
    """The fields of a message type the IR does not model, from its descriptor (so fields a newer
    onnx adds are kept too), and their serialized form in a loaded message (`blob`)."""

    def __init__(self, cls, modeled: frozenset[str]):
        self.cls = cls
        repeated, singular = [], []
        for field in cls.DESCRIPTOR.fields:
            if field.name not in modeled:
                is_repeated = getattr(field, "is_repeated", None)
                if is_repeated is None:
                    is_repeated = field.label == field.LABEL_REPEATED
                (repeated if is_repeated else singular).append(field.name)
        self.modeled = modeled
        self.singular = tuple(singular)
        # the repeated containers as one tuple (empty ones are false), in one call per message
        if len(repeated) > 1:
            self._containers = operator.attrgetter(*repeated)
        else:  # attrgetter of a single name returns the container itself
            self._containers = lambda proto: tuple(getattr(proto, name) for name in repeated)

    def present(self, proto) -> bool:
        return any(self._containers(proto)) or any(map(proto.HasField, self.singular))

    def blob(self, proto) -> bytes | None:
        """Only those fields, serialized, or None when there are none. Only they are copied (never
        the modeled ones: a graph's nodes and weights stay put)."""
        if not self.present(proto):
            return None
        rest = self.cls()
        for field, value in proto.ListFields():
            if field.name in self.modeled:
                continue
            if hasattr(value, "extend"):  # a repeated field
                getattr(rest, field.name).extend(value)
            elif hasattr(value, "CopyFrom"):  # a message
                getattr(rest, field.name).CopyFrom(value)
            else:
                setattr(rest, field.name, value)
        return rest.SerializeToString(deterministic=True) or None


_NODE_REST = _Unmodeled(onnx.NodeProto, _NODE_MODELED)
_GRAPH_REST = _Unmodeled(onnx.GraphProto, _GRAPH_MODELED)
_MODEL_REST = _Unmodeled(onnx.ModelProto, _MODEL_MODELED)


def _graph_from_proto(gp: onnx.GraphProto, parent: Graph | None, base_dir: str | None, detach: bool,
                      payloads: dict | None = None) -> Graph:
    graph = Graph(gp.name, parent)
    graph.doc_string = gp.doc_string
    graph.rest_blob = _GRAPH_REST.blob(gp)
    _load_initializers(graph, gp, base_dir, detach, payloads or {})
    for vi in gp.input:
        value = graph.initializers.get(vi.name) or _new_value(graph, vi.name, "graph input")
        read_value_info(value, vi)
        graph.inputs.append(value)
    # Slicing upb's repeated fields into lists is several times faster than iterating them.
    nodes = gp.node[:]
    wiring = [(node.input[:], node.output[:]) for node in nodes]
    for node, (_, outputs) in zip(nodes, wiring, strict=True):
        for name in outputs:
            if name:
                _new_value(graph, name, node)
    ops = [_op_from_node(graph, node, inputs, outputs, base_dir, detach)
           for node, (inputs, outputs) in zip(nodes, wiring, strict=True)]
    graph.adopt_ops(ops)
    for op in ops:
        subgraphs = op.subgraphs() if op.attrs else ()
        for sub in subgraphs:
            sub.owner = op
        if subgraphs:
            graph.refresh_captures(op)
    graph.value_info_names = []
    for vi in gp.value_info:
        _load_value_info(graph, vi)
    for vi in gp.output:
        value = graph.lookup(vi.name)
        if value is None:
            raise BadInputError(f"graph output {vi.name!r} is produced by no node (dangling output)")
        if value.graph is graph:
            read_value_info(value, vi, overwrite=value.original_type_blob() is None)
        graph.outputs.append(value)
    return graph


def _load_value_info(graph: Graph, vi: onnx.ValueInfoProto) -> None:
    graph.value_info_names.append(vi.name)
    value = graph._values.get(vi.name)
    if value is None:
        graph.orphan_value_info.append(vi.SerializeToString(deterministic=True))
        return
    read_value_info(value, vi)
    value.in_value_info = True


def _new_value(graph: Graph, name: str, what: str | onnx.NodeProto) -> Value:
    if name in graph._values:
        if isinstance(what, onnx.NodeProto):
            what = f"output of {what.op_type} {what.name!r}"
        raise BadInputError(f"value {name!r} is defined twice (again as {what})")
    return graph._register_value(Value(name))


def _load_initializers(graph: Graph, gp: onnx.GraphProto, base_dir: str | None, detach: bool,
                       payloads: dict) -> None:
    for index, tp in enumerate(gp.initializer):
        if tp.name in graph.initializers:
            raise BadInputError(f"initializer {tp.name!r} is defined twice")
        graph.add_initializer(tp.name, tensor_from_proto(tp, base_dir, payloads.get(index), detach), fresh=False)
    for sp in gp.sparse_initializer:
        from graphsurg.serde.sparse import sparse_tensor_from_proto

        name = sp.values.name
        if name in graph.initializers:
            raise BadInputError(f"initializer {name!r} is defined twice")
        graph.add_initializer(name, sparse_tensor_from_proto(sp, base_dir, detach), fresh=False)


def _op_from_node(graph: Graph, node: onnx.NodeProto, input_names: list[str], output_names: list[str],
                  base_dir: str | None, detach: bool) -> Op:
    """The op of a node, its inputs and outputs resolved (every node's outputs are registered
    first, since files need not list nodes in dataflow order); `Graph.adopt_ops` wires it."""
    local = graph._values
    inputs: list[Value | None] = []
    for name in input_names:
        value = local.get(name) if name else None
        if value is None and name:
            value = graph.lookup(name)
            if value is None:
                raise BadInputError(
                    f"node {node.name or node.op_type!r} reads {name!r}, which no node produces and is not an "
                    "input or initializer (dangling input)"
                )
        inputs.append(value)
    op = Op(node.op_type, node.domain, node.name, inputs=tuple(inputs),
            outputs=tuple(local[name] if name else None for name in output_names), doc_string=node.doc_string)
    op.rest_blob = _NODE_REST.blob(node)
    if node.attribute:
        op.attrs = {a.name: _attr_from_proto(a, graph, base_dir, detach) for a in node.attribute}
    return op


def _attr_from_proto(attr: onnx.AttributeProto, graph: Graph, base_dir: str | None, detach: bool) -> Attr:
    kind = _ATTR_KINDS.get(attr.type)
    if kind is None or attr.ref_attr_name:
        return Attr("opaque", attr.SerializeToString(deterministic=True))
    value: object
    if kind == "int":
        value = attr.i
    elif kind == "float":
        value = attr.f
    elif kind == "string":
        value = attr.s
    elif kind == "ints":
        value = list(attr.ints)
    elif kind == "floats":
        value = list(attr.floats)
    elif kind == "strings":
        value = list(attr.strings)
    elif kind == "tensor":
        value = tensor_from_proto(attr.t, base_dir, detach=detach)
    elif kind == "graph":
        value = _graph_from_proto(attr.g, graph, base_dir, detach)
    else:
        value = [_graph_from_proto(g, graph, base_dir, detach) for g in attr.graphs]
    return Attr(kind, value, doc_string=attr.doc_string)
