"""IR -> ONNX. Deterministic, atomic, and external data streamed tensor by tensor."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import onnx

from graphsurg.errors import BadInputError
from graphsurg.fsutil import atomic_write
from graphsurg.ir import Attr, ExternalTensor, Graph, Model, Tensor, Value, all_graphs
from graphsurg.serde.sparse import SparseProtoTensor
from graphsurg.serde.tensors import header_proto, tensor_to_proto
from graphsurg.serde.types import write_value_info

_PROTOBUF_LIMIT = 2**31 - 1
_AUTO_EXTERNAL_BYTES = 1_800_000_000
_PAGE = 4096
_ATTR_TYPES = {
    "int": onnx.AttributeProto.INT, "float": onnx.AttributeProto.FLOAT, "string": onnx.AttributeProto.STRING,
    "ints": onnx.AttributeProto.INTS, "floats": onnx.AttributeProto.FLOATS,
    "strings": onnx.AttributeProto.STRINGS, "tensor": onnx.AttributeProto.TENSOR,
    "graph": onnx.AttributeProto.GRAPH, "graphs": onnx.AttributeProto.GRAPHS,
}


class ExternalWriter:
    """Appends tensors to a temporary data file; `commit` renames it into place."""

    def __init__(self, target: Path, location: str, threshold: int):
        self.target, self.location, self.threshold = target, location, threshold
        self.fd, self.tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        self.offset = 0

    def wants(self, tensor: Tensor) -> bool:
        return tensor.dtype != onnx.TensorProto.STRING and tensor.nbytes >= self.threshold

    def place(self, tensor: Tensor, name: str) -> onnx.TensorProto:
        self._pad_to(_PAGE if tensor.nbytes >= 65536 else 64)
        start = self.offset
        if isinstance(tensor, ExternalTensor):
            tensor.copy_to(self.fd)
        else:
            _write_all(self.fd, memoryview(tensor_to_proto(tensor, name).raw_data))
        self.offset += tensor.nbytes
        proto = header_proto(tensor, name)
        del proto.external_data[:]
        for key, value in (("location", self.location), ("offset", str(start)), ("length", str(tensor.nbytes))):
            entry = proto.external_data.add()
            entry.key, entry.value = key, value
        if tensor.meta_blob:
            proto.MergeFromString(tensor.meta_blob)
        return proto

    def _pad_to(self, alignment: int) -> None:
        padding = -self.offset % alignment
        if padding:
            _write_all(self.fd, memoryview(bytes(padding)))
            self.offset += padding

    def commit(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)
        os.chmod(self.tmp, 0o644)
        os.replace(self.tmp, self.target)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


def save(
    model: Model,
    path: str | os.PathLike,
    external_data: bool | None = None,
    size_threshold: int = 1024,
    location: str | None = None,
) -> None:
    """Writes the model atomically. `external_data=None` keeps weights external when they came
    external, or when the model would not fit in one protobuf."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if external_data is None:
        external_data = wants_external(model)
    writer = None
    if external_data:
        writer = ExternalWriter(target.parent / (location or f"{target.name}.data"), location or f"{target.name}.data",
                                size_threshold)
    try:
        payload = to_proto(model, writer=writer).SerializeToString(deterministic=True)
        if len(payload) > _PROTOBUF_LIMIT:
            raise BadInputError(f"{target}: the model is over 2 GB inline; save it with external data")
        if writer is not None:
            if writer.offset:
                writer.commit()
            else:
                writer.abort()
        with atomic_write(target) as handle:
            handle.write(payload)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise


def wants_external(model: Model) -> bool:
    tensors = [v.const for g in all_graphs(model.graph) for v in g.initializers.values()]
    if any(isinstance(t, ExternalTensor) for t in tensors):
        return True
    return sum(t.nbytes for t in tensors) > _AUTO_EXTERNAL_BYTES


def to_bytes(model: Model) -> bytes:
    return to_proto(model).SerializeToString(deterministic=True)


def to_proto(model: Model, writer: ExternalWriter | None = None, headers_only: bool = False) -> onnx.ModelProto:
    """Builds the ModelProto. `headers_only` leaves weight data out (for shape inference)."""
    proto = onnx.ModelProto()
    if model.rest_blob:
        proto.ParseFromString(model.rest_blob)
    proto.ir_version = model.ir_version
    for domain, version in model.opset_imports.items():
        entry = proto.opset_import.add()
        entry.domain, entry.version = domain, version
    for key, field in (("producer_name", model.producer_name), ("producer_version", model.producer_version),
                       ("domain", model.domain), ("doc_string", model.doc_string)):
        if field:
            setattr(proto, key, field)
    if model.model_version:
        proto.model_version = model.model_version
    for key, value in model.metadata_props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    for blob in model.functions:
        proto.functions.add().ParseFromString(blob)
    # IR version 3 requires every initializer to be listed as a graph input too.
    _GraphWriter(writer, headers_only, initializers_as_inputs=model.ir_version < 4).fill(model.graph, proto.graph)
    return proto


class _GraphWriter:
    def __init__(self, external: ExternalWriter | None, headers_only: bool, initializers_as_inputs: bool = False):
        self.external = external
        self.headers_only = headers_only
        self.initializers_as_inputs = initializers_as_inputs

    def fill(self, graph: Graph, gp: onnx.GraphProto) -> None:
        if graph.rest_blob:
            gp.ParseFromString(graph.rest_blob)
        gp.name = graph.name
        if graph.doc_string:
            gp.doc_string = graph.doc_string
        for op in graph.topological_order():
            self._node(op, gp.node.add())
        for value in graph.initializers.values():
            self._initializer(value, gp)
        gp.input.extend(write_value_info(v) for v in graph.inputs)
        if self.initializers_as_inputs and graph.parent is None:
            listed = set(graph.inputs)
            gp.input.extend(write_value_info(v) for v in graph.initializers.values() if v not in listed)
        gp.output.extend(write_value_info(v) for v in graph.outputs)
        gp.value_info.extend(write_value_info(v) for v in _value_info_values(graph))
        for blob in graph.orphan_value_info:
            gp.value_info.add().ParseFromString(blob)

    def _initializer(self, value: Value, gp: onnx.GraphProto) -> None:
        tensor = value.const
        if isinstance(tensor, SparseProtoTensor):
            sparse = gp.sparse_initializer.add()
            sparse.CopyFrom(tensor.proto)
            sparse.values.name = value.name
            return
        if self.headers_only:
            gp.initializer.append(header_proto(tensor, value.name))
        elif self.external is not None and self.external.wants(tensor):
            gp.initializer.append(self.external.place(tensor, value.name))
        else:
            gp.initializer.append(tensor_to_proto(tensor, value.name))

    def _node(self, op, node: onnx.NodeProto) -> None:
        if op.rest_blob:
            node.ParseFromString(op.rest_blob)
        node.input.extend(v.name if v is not None else "" for v in op.inputs)
        node.output.extend(v.name if v is not None else "" for v in op.outputs)
        if op.name:
            node.name = op.name
        node.op_type = op.op_type
        if op.domain:
            node.domain = op.domain
        if op.doc_string:
            node.doc_string = op.doc_string
        for name, attr in op.attrs.items():
            node.attribute.append(self._attribute(name, attr))

    def _attribute(self, name: str, attr: Attr) -> onnx.AttributeProto:
        proto = onnx.AttributeProto()
        if attr.kind == "opaque":
            proto.ParseFromString(attr.value)
            return proto
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
        return proto


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
