"""IR -> ONNX. Deterministic, atomic, and weights streamed tensor by tensor.

The file is protobuf's deterministic serialization of the model, written in pieces (see
stream.py): a weight is never copied into a protobuf message on the way out.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from graphsurg.errors import BadInputError
from graphsurg.ir import Attr, ExternalTensor, Graph, Model, Value, all_graphs
from graphsurg.serde.load import gc_paused
from graphsurg.serde.sparse import SparseProtoTensor
from graphsurg.serde.stream import ExternalWriter, Stream, TempFile, tensor_stream
from graphsurg.serde.tensors import header_proto, tensor_to_proto
from graphsurg.serde.types import write_value_info

__all__ = ["ExternalWriter", "model_stream", "save", "to_bytes", "to_proto", "wants_external"]

_PROTOBUF_LIMIT = 2**31 - 1
_AUTO_EXTERNAL_BYTES = 1_800_000_000
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_ATTR_TYPES = {
    "int": onnx.AttributeProto.INT, "float": onnx.AttributeProto.FLOAT, "string": onnx.AttributeProto.STRING,
    "ints": onnx.AttributeProto.INTS, "floats": onnx.AttributeProto.FLOATS,
    "strings": onnx.AttributeProto.STRINGS, "tensor": onnx.AttributeProto.TENSOR,
    "graph": onnx.AttributeProto.GRAPH, "graphs": onnx.AttributeProto.GRAPHS,
}


def save(
    model: Model,
    path: str | os.PathLike,
    external_data: bool | None = None,
    size_threshold: int = 1024,
    location: str | None = None,
    durable: bool = False,
) -> None:
    """Writes the model atomically, streaming weights tensor by tensor.

    `external_data=None` (the default) keeps each loaded weight where it was (external or inline;
    new weights of at least `size_threshold` bytes go external) when the model came with external
    data, and moves weights of `size_threshold` bytes and more out when the model would not fit
    in one protobuf. `True`/`False` force external (above the threshold) or inline. External
    weights go to `location` (default `<name>.data`) beside the output.

    Both files are written to temporary names and renamed into place only when complete (data
    first, then the model, back to back), so a failed or interrupted save leaves the previous
    files as they were. `durable` also flushes both to disk before the renames (survives a power
    cut; costs the time the disk takes to write them).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    keep_placement = external_data is None and _has_external(model)
    if external_data is None:
        external_data = keep_placement or _too_large_inline(model)
    location = _data_location(target, location) if external_data else None
    writer = ExternalWriter(target.parent / location, location, size_threshold, keep_placement) if location else None
    main = None
    try:
        with gc_paused():
            stream = model_stream(model, writer)
        if stream.size > _PROTOBUF_LIMIT:
            raise BadInputError(f"{target}: the model is over 2 GB inline; save it with external data")
        main = TempFile(target)
        stream.write_to(main.fd)
        main.finish(durable)
        if writer is not None and writer.offset:
            writer.finish(durable)
            writer.commit()
        elif writer is not None:
            writer.abort()
        main.commit()
        if durable:
            _sync_directory(target.parent)
    except BaseException:
        for temp in (writer, main):
            if temp is not None:
                temp.abort()
        raise


def _sync_directory(folder: Path) -> None:
    """Makes the renames themselves durable (POSIX: the directory entry is data of the folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _data_location(target: Path, location: str | None) -> str:
    location = location or f"{target.name}.data"
    if Path(location).is_absolute() or ".." in Path(location).parts or "\0" in location:
        raise BadInputError(f"external data location {location!r} must be a relative path inside the model's folder")
    (target.parent / location).parent.mkdir(parents=True, exist_ok=True)
    return location


def wants_external(model: Model) -> bool:
    """True when the model came with external data, or is too large for one protobuf."""
    return _has_external(model) or _too_large_inline(model)


def _too_large_inline(model: Model) -> bool:
    return sum(v.const.nbytes for g in all_graphs(model.graph) for v in g.initializers.values()) > _AUTO_EXTERNAL_BYTES


def _has_external(model: Model) -> bool:
    return any(isinstance(v.const, ExternalTensor) for g in all_graphs(model.graph) for v in g.initializers.values())


def to_bytes(model: Model) -> bytes:
    """The model file's bytes with every weight inline (what `save` writes without external data)."""
    with gc_paused():
        return model_stream(model, None).getvalue()


def model_stream(model: Model, writer: ExternalWriter | None = None) -> Stream:
    """The model file as a stream: ModelProto fields in number order, the graph's initializers
    spliced in one by one (external ones written to `writer` on the way)."""
    head, tail = onnx.ModelProto(), onnx.ModelProto()
    _model_scalars(model, head)
    _model_rest(model, tail)
    graph = _GraphWriter(writer, False, initializers_as_inputs=model.ir_version < 4).stream(model.graph)
    stream = Stream(head.SerializeToString(deterministic=True))
    stream.add_field(_MODEL_GRAPH, graph)
    stream.add(tail.SerializeToString(deterministic=True))
    return stream


def to_proto(model: Model, writer: ExternalWriter | None = None, headers_only: bool = False,
             stub_above: int | None = None) -> onnx.ModelProto:
    """Builds the ModelProto in memory. `headers_only` leaves weight data out (for shape
    inference); `stub_above` does so only for tensors larger than that many bytes."""
    proto = onnx.ModelProto()
    _model_scalars(model, proto)
    _model_rest(model, proto)
    if headers_only:
        stub_above = -1
    # IR version 3 requires every initializer to be listed as a graph input too.
    _GraphWriter(writer, stub_above, initializers_as_inputs=model.ir_version < 4).fill(model.graph, proto.graph)
    return proto


def _model_scalars(model: Model, proto: onnx.ModelProto) -> None:
    """ModelProto fields 1 to 6 (they precede the graph)."""
    proto.ir_version = model.ir_version
    for key in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        value = getattr(model, key)
        if value or key in model.explicit_fields:
            setattr(proto, key, value)


def _model_rest(model: Model, proto: onnx.ModelProto) -> None:
    """ModelProto fields after the graph."""
    if model.rest_blob:
        proto.MergeFromString(model.rest_blob)
    for domain, version in model.opset_imports.items():
        entry = proto.opset_import.add()
        if domain or "opset_import.domain" in model.explicit_fields:
            entry.domain = domain
        entry.version = version
    for key, value in model.metadata_props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    for blob in model.functions:
        proto.functions.add().ParseFromString(blob)


class _GraphWriter:
    """Writes graphs into protos (`fill`) or into a stream with the initializers spliced in
    (`stream`). `stub_above`: tensors larger than that many bytes are written as headers only
    (True: all of them, for shape inference; None: none)."""

    def __init__(self, external: ExternalWriter | None, stub_above: int | bool | None = None,
                 initializers_as_inputs: bool = False):
        self.external = external
        self.stub_above = -1 if stub_above is True else None if stub_above is False else stub_above
        self.initializers_as_inputs = initializers_as_inputs

    def fill(self, graph: Graph, gp: onnx.GraphProto) -> None:
        self._head(graph, gp)
        for value in graph.initializers.values():
            if not isinstance(value.const, SparseProtoTensor):
                self._initializer(value, gp.initializer.add())
        self._tail(graph, gp)

    def stream(self, graph: Graph) -> Stream:
        """GraphProto bytes in field-number order: node and name (1, 2), the initializers (5),
        then the rest (10 and up), so weights are written one at a time."""
        head, tail = onnx.GraphProto(), onnx.GraphProto()
        self._head(graph, head)
        self._tail(graph, tail)
        stream = Stream(head.SerializeToString(deterministic=True))
        for value in graph.initializers.values():
            if not isinstance(value.const, SparseProtoTensor):
                stream.add_field(_GRAPH_INITIALIZER, tensor_stream(value.const, value.name, self.external))
        stream.add(tail.SerializeToString(deterministic=True))
        return stream

    def _head(self, graph: Graph, gp: onnx.GraphProto) -> None:
        add = gp.node.add
        for op in graph.topological_order():
            self._node(op, add)
        gp.name = graph.name

    def _tail(self, graph: Graph, gp: onnx.GraphProto) -> None:
        if graph.rest_blob:
            gp.MergeFromString(graph.rest_blob)
        if graph.doc_string:
            gp.doc_string = graph.doc_string
        for value in graph.initializers.values():
            if isinstance(value.const, SparseProtoTensor):
                sparse = gp.sparse_initializer.add()
                sparse.CopyFrom(value.const.proto)
                sparse.values.name = value.name
        gp.input.extend(write_value_info(v) for v in _listed_inputs(graph, self.initializers_as_inputs))
        gp.output.extend(write_value_info(v) for v in graph.outputs)
        gp.value_info.extend(write_value_info(v) for v in _value_info_values(graph))
        for blob in graph.orphan_value_info:
            gp.value_info.add().ParseFromString(blob)

    def _initializer(self, value: Value, proto: onnx.TensorProto) -> None:
        tensor = value.const
        if self.stub_above is not None and tensor.nbytes > self.stub_above:
            proto.CopyFrom(header_proto(tensor, value.name))
        elif self.external is not None and self.external.wants(tensor):
            proto.CopyFrom(self.external.place(tensor, value.name))
        else:
            proto.CopyFrom(tensor_to_proto(tensor, value.name))

    def _node(self, op, add) -> None:
        """Appends the op's NodeProto with `add` (the graph's node.add). Its plain fields go in as
        keywords, one call into protobuf; empty optional ones are left unset, as protobuf would
        otherwise write them."""
        fields = {"input": [v.name if v is not None else "" for v in op.inputs],
                  "output": [v.name if v is not None else "" for v in op.outputs], "op_type": op.op_type}
        if op.name:
            fields["name"] = op.name
        if op.domain:
            fields["domain"] = op.domain
        if op.doc_string:
            fields["doc_string"] = op.doc_string
        node = add(**fields)
        if op.rest_blob:
            node.MergeFromString(op.rest_blob)
        for name, attr in op.attrs.items():
            self._attribute(name, attr, node.attribute.add())

    def _attribute(self, name: str, attr: Attr, proto: onnx.AttributeProto) -> None:
        if attr.kind == "opaque":
            proto.ParseFromString(attr.value)
            return
        proto.name = name
        proto.type = _ATTR_TYPES[attr.kind]
        if attr.doc_string:
            proto.doc_string = attr.doc_string
        if attr.kind == "int":
            proto.i = attr.value
        elif attr.kind == "float":
            proto.f = attr.value
        elif attr.kind == "string":
            proto.s = attr.value
        elif attr.kind == "ints":
            proto.ints.extend(attr.value)
        elif attr.kind == "floats":
            proto.floats.extend(attr.value)
        elif attr.kind == "strings":
            proto.strings.extend(attr.value)
        elif attr.kind == "tensor":
            proto.t.CopyFrom(tensor_to_proto(attr.value, None))
        elif attr.kind == "graph":
            self.fill(attr.value, proto.g)
        else:
            for sub in attr.value:
                self.fill(sub, proto.graphs.add())


def _listed_inputs(graph: Graph, with_initializers: bool) -> list[Value]:
    """The graph's inputs as the file lists them: with `with_initializers` (IR version < 4) every
    initializer too, in the order the file came with, then what is new."""
    if not with_initializers or graph.parent is not None:
        return list(graph.inputs)
    listed = {value.name: value for value in [*graph.inputs, *graph.initializers.values()]}
    ordered = [listed.pop(name) for name in graph.input_order if name in listed]
    return ordered + list(listed.values())


def _value_info_values(graph: Graph) -> list[Value]:
    seen: set[str] = set()
    ordered: list[Value] = []
    for name in graph.value_info_names:
        value = graph._values.get(name)
        if value is not None and value.in_value_info and name not in seen:
            ordered.append(value)
            seen.add(name)
    ordered.extend(v for v in graph.values() if v.in_value_info and v.name not in seen)
    return ordered
