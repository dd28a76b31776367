"""ONNX -> IR. The only module besides save.py that reads onnx protobufs."""

from __future__ import annotations

import contextlib
import functools
import gc
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


def load(source: str | os.PathLike | bytes | onnx.ModelProto, base_dir: str | None = None) -> Model:
    """Loads a model from a path, serialized bytes or a ModelProto; weights stay lazy.

    From a path, large inline weights are not parsed at all: they stay in the file, memory-mapped
    on demand (see serde/scan.py), so loading costs the size of the graph, not of the weights.
    Raises BadInputError with one readable line for anything that is not a usable ONNX model.
    """
    payloads = None
    if isinstance(source, str | os.PathLike):
        proto, payloads = _parse_file(Path(source))
        if base_dir is None:
            base_dir = str(Path(source).resolve().parent)
    else:
        proto = parse(source)
    with gc_paused():
        return from_proto(proto, base_dir, _payloads=payloads)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Holds Python's cyclic garbage collector while a graph is built: tens of thousands of new
    objects would otherwise trigger full collections over the growing heap (a third of the time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
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


def from_proto(proto: onnx.ModelProto, base_dir: str | None = None, _payloads: dict | None = None) -> Model:
    """The IR of a parsed model. `base_dir` resolves external data locations."""
    graph = _graph_from_proto(proto.graph, None, base_dir, _payloads)
    try:
        graph.verify()
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
        rest_blob=_rest(proto, onnx.ModelProto, _MODEL_MODELED),
        source_dir=base_dir,
        explicit_fields=_explicit_fields(proto),
    )


def _explicit_fields(proto: onnx.ModelProto) -> frozenset[str]:
    """Fields present with an empty value, so that save writes them again (byte-exact round trip)."""
    present = {name for name in _MODEL_SCALARS if proto.HasField(name) and not getattr(proto, name)}
    if any(o.domain == "" and o.HasField("domain") for o in proto.opset_import):
        present.add("opset_import.domain")
    return frozenset(present)


def _rest(proto, cls, modeled) -> bytes | None:
    """The serialized fields of `proto` the IR does not model, or None when there are none.

    Only those fields are copied (never the modeled ones: a graph's nodes and weights stay put).
    """
    if not _has_unmodeled(proto, cls, modeled):
        return None
    rest = cls()
    for field, value in proto.ListFields():
        if field.name in modeled:
            continue
        if hasattr(value, "extend"):  # a repeated field
            getattr(rest, field.name).extend(value)
        elif hasattr(value, "CopyFrom"):  # a message
            getattr(rest, field.name).CopyFrom(value)
        else:
            setattr(rest, field.name, value)
    return rest.SerializeToString(deterministic=True) or None


def _has_unmodeled(proto, cls, modeled) -> bool:
    for name, repeated in _unmodeled_fields(cls, modeled):
        if (len(getattr(proto, name)) if repeated else proto.HasField(name)):
            return True
    return False


@functools.cache
def _unmodeled_fields(cls, modeled: frozenset[str]) -> tuple[tuple[str, bool], ...]:
    """(name, repeated) of the fields of `cls` the IR does not model, from its descriptor (so
    fields a newer onnx adds are kept too)."""
    fields = []
    for field in cls.DESCRIPTOR.fields:
        if field.name not in modeled:
            repeated = getattr(field, "is_repeated", None)
            if repeated is None:
                repeated = field.label == field.LABEL_REPEATED
            fields.append((field.name, bool(repeated)))
    return tuple(fields)


def _graph_from_proto(gp: onnx.GraphProto, parent: Graph | None, base_dir: str | None,
                      payloads: dict | None = None) -> Graph:
    graph = Graph(gp.name, parent)
    graph.doc_string = gp.doc_string
    graph.rest_blob = _rest(gp, onnx.GraphProto, _GRAPH_MODELED)
    _load_initializers(graph, gp, base_dir, payloads or {})
    for vi in gp.input:
        value = graph.initializers.get(vi.name) or _new_value(graph, vi.name, "graph input")
        read_value_info(value, vi)
        graph.inputs.append(value)
    nodes = list(gp.node)
    for node in nodes:
        for name in node.output:
            if name:
                _new_value(graph, name, node)
    for node in nodes:
        _load_node(graph, node, base_dir)
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


def _load_initializers(graph: Graph, gp: onnx.GraphProto, base_dir: str | None, payloads: dict) -> None:
    for index, tp in enumerate(gp.initializer):
        if tp.name in graph.initializers:
            raise BadInputError(f"initializer {tp.name!r} is defined twice")
        graph.add_initializer(tp.name, tensor_from_proto(tp, base_dir, payloads.get(index)), fresh=False)
    for sp in gp.sparse_initializer:
        from graphsurg.serde.sparse import sparse_tensor_from_proto

        name = sp.values.name
        if name in graph.initializers:
            raise BadInputError(f"initializer {name!r} is defined twice")
        graph.add_initializer(name, sparse_tensor_from_proto(sp, base_dir), fresh=False)


def _load_node(graph: Graph, node: onnx.NodeProto, base_dir: str | None) -> None:
    inputs = []
    lookup = graph.lookup
    for name in node.input:
        if not name:
            inputs.append(None)
            continue
        value = lookup(name)
        if value is None:
            raise BadInputError(
                f"node {node.name or node.op_type!r} reads {name!r}, which no node produces and is not an input "
                "or initializer (dangling input)"
            )
        inputs.append(value)
    outputs = [graph._values[name] if name else None for name in node.output]
    op = Op(node.op_type, node.domain, node.name, doc_string=node.doc_string)
    op.rest_blob = _rest(node, onnx.NodeProto, _NODE_MODELED)
    if node.attribute:
        op.attrs = {a.name: _attr_from_proto(a, graph, base_dir) for a in node.attribute}
    graph.adopt_op(op, inputs, outputs)
    subgraphs = op.subgraphs() if op.attrs else ()
    for sub in subgraphs:
        sub.owner = op
    if subgraphs:
        graph.refresh_captures(op)


def _attr_from_proto(attr: onnx.AttributeProto, graph: Graph, base_dir: str | None) -> Attr:
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
        value = tensor_from_proto(attr.t, base_dir)
    elif kind == "graph":
        value = _graph_from_proto(attr.g, graph, base_dir)
    else:
        value = [_graph_from_proto(g, graph, base_dir) for g in attr.graphs]
    return Attr(kind, value, doc_string=attr.doc_string)
