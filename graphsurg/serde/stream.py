"""The bytes of a model file as a stream of pieces, so that weights never sit in memory together.

A saved model is protobuf: a `TensorProto` inside the `GraphProto` inside the `ModelProto`. The
save path writes the small parts with protobuf itself and splices each weight's raw bytes in
between (kernel-to-kernel copies for file-backed tensors, the array's own memory for arrays), in
field-number order, so the file is byte-identical to protobuf's deterministic serialization of
the same model. External data goes through `ExternalWriter`, one tensor at a time.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import onnx

from graphsurg.ir import ExternalTensor, MappedTensor, Tensor
from graphsurg.serde.scan import encode_varint
from graphsurg.serde.tensors import (
    ProtoFileTensor,
    ProtoTensor,
    has_raw_form,
    header_proto,
    raw_payload,
    tensor_to_proto,
)

_PAGE = 4096
_DIRECT_COPY_BYTES = 1 << 20  # pieces this large are written (or copied file to file) on their own
_GATHER_BYTES = 4 << 20  # smaller ones are gathered up to this much per write
_TENSOR_RAW_DATA = 9
# TensorProto fields numbered below raw_data (9): they are written before the payload.
_TENSOR_HEAD_FIELDS = ("dims", "data_type", "segment", "float_data", "int32_data", "string_data", "int64_data",
                       "name")


class Stream:
    """Pieces of a file in order: bytes-like objects and file-backed tensors (copied on write)."""

    def __init__(self, *chunks: bytes) -> None:
        self.parts: list[bytes | memoryview | MappedTensor] = []
        self.size = 0
        for chunk in chunks:
            self.add(chunk)

    def add(self, data: bytes | memoryview) -> None:
        if len(data):
            self.parts.append(data)
            self.size += len(data)

    def add_mapped(self, tensor: MappedTensor) -> None:
        if tensor.location.length:
            self.parts.append(tensor)
            self.size += tensor.location.length

    def add_field(self, number: int, payload: Stream) -> None:
        """A length-delimited field holding `payload`."""
        self.add(encode_varint(number << 3 | 2) + encode_varint(payload.size))
        self.parts.extend(payload.parts)
        self.size += payload.size

    def write_to(self, fd: int) -> None:
        """Writes the pieces in order: small ones gathered into few large writes, large
        file-backed tensors copied kernel to kernel."""
        pending: list[bytes | memoryview] = []
        held = 0
        for part in self.parts:
            if isinstance(part, MappedTensor) and part.location.length >= _DIRECT_COPY_BYTES:
                _write_gathered(fd, pending)
                pending, held = [], 0
                part.copy_to(fd)
                continue
            data = _read_mapped(part) if isinstance(part, MappedTensor) else part
            if len(data) >= _DIRECT_COPY_BYTES:
                _write_gathered(fd, pending)
                pending, held = [], 0
                write_all(fd, memoryview(data))
                continue
            pending.append(data)
            held += len(data)
            if held >= _GATHER_BYTES:
                _write_gathered(fd, pending)
                pending, held = [], 0
        _write_gathered(fd, pending)

    def getvalue(self) -> bytes:
        return b"".join(_read_mapped(p) if isinstance(p, MappedTensor) else p for p in self.parts)


def _read_mapped(tensor: MappedTensor) -> bytes:
    start, length = tensor.location.offset, tensor.location.length
    chunks, done = [], 0
    with tensor.source.descriptor() as fd:
        while done < length:
            chunk = os.pread(fd, length - done, start + done)
            if not chunk:
                raise OSError(f"{tensor.location.path}: ends before byte {start + length}")
            chunks.append(chunk)
            done += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)  # b"" when empty


def _write_gathered(fd: int, pieces: list[bytes | memoryview]) -> None:
    if pieces:
        write_all(fd, memoryview(b"".join(pieces)))


def write_all(fd: int, data: memoryview) -> None:
    data = data.cast("B") if data.format != "B" or data.ndim != 1 else data
    while data:
        data = data[os.write(fd, data):]


class TempFile:
    """A temporary file beside `target`, renamed over it on `commit` (atomic on POSIX)."""

    def __init__(self, target: Path):
        self.target = target
        self.fd, self.path = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        self.closed = False

    def finish(self, durable: bool) -> None:
        """Flushes to disk when `durable`, and closes; the file is complete but not yet in place."""
        if durable:
            os.fsync(self.fd)
        os.close(self.fd)
        self.closed = True
        os.chmod(self.path, 0o644)

    def commit(self) -> None:
        os.replace(self.path, self.target)

    def abort(self) -> None:
        if not self.closed:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.closed = True
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class ExternalWriter:
    """Appends tensors to a temporary data file; `commit` renames it into place."""

    def __init__(self, target: Path, location: str, threshold: int, keep_placement: bool = False):
        self.target, self.location, self.threshold = target, location, threshold
        self.keep_placement = keep_placement
        self.file = TempFile(target)
        self.fd, self.tmp = self.file.fd, self.file.path
        self.offset = 0

    def wants(self, tensor: Tensor) -> bool:
        """External when large enough; with `keep_placement`, loaded tensors stay where they were
        (external ones external, inline ones inline) and only new tensors follow the threshold."""
        if tensor.dtype == onnx.TensorProto.STRING or not has_raw_form(tensor):
            return False
        if self.keep_placement:
            if isinstance(tensor, ExternalTensor):
                return True
            if isinstance(tensor, ProtoTensor | ProtoFileTensor):
                return False
        return tensor.nbytes >= self.threshold

    def place(self, tensor: Tensor, name: str) -> onnx.TensorProto:
        """Writes the tensor's bytes and returns the header proto that points at them."""
        self._pad_to(_PAGE if tensor.nbytes >= 65536 else 64)
        start = self.offset
        if isinstance(tensor, MappedTensor):
            tensor.copy_to(self.fd)
        else:
            payload = raw_payload(tensor)
            if len(payload) != tensor.nbytes:
                raise ValueError(f"tensor {name!r} holds {len(payload)} bytes, expected {tensor.nbytes}")
            write_all(self.fd, memoryview(payload))
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
            write_all(self.fd, memoryview(bytes(padding)))
            self.offset += padding

    def finish(self, durable: bool) -> None:
        self.file.finish(durable)

    def commit(self, durable: bool = True) -> None:
        if not self.file.closed:
            self.file.finish(durable)
        self.file.commit()

    def abort(self) -> None:
        self.file.abort()


def tensor_stream(tensor: Tensor, name: str, external: ExternalWriter | None) -> Stream:
    """The serialized TensorProto of an initializer (without its field key)."""
    if external is not None and external.wants(tensor):
        return Stream(external.place(tensor, name).SerializeToString(deterministic=True))
    if isinstance(tensor, ProtoTensor):
        proto = tensor.proto if tensor.proto.name == name else tensor_to_proto(tensor, name)
        return Stream(proto.SerializeToString(deterministic=True))
    if has_raw_form(tensor):
        split = _split_header(_raw_header(tensor, name))
        if split is not None:
            return _raw_stream(tensor, *split)
    return Stream(tensor_to_proto(tensor, name).SerializeToString(deterministic=True))


def _raw_header(tensor: Tensor, name: str) -> onnx.TensorProto:
    """Everything of the tensor's proto but its data."""
    if isinstance(tensor, ProtoFileTensor):
        if tensor.header.name == name:
            return tensor.header
        header = onnx.TensorProto()
        header.CopyFrom(tensor.header)
        header.name = name
        return header
    header = onnx.TensorProto()
    header.data_type = tensor.dtype
    header.dims.extend(tensor.shape)
    if name:
        header.name = name
    if tensor.meta_blob:
        header.MergeFromString(tensor.meta_blob)
    return header


def _split_header(header: onnx.TensorProto) -> tuple[bytes, bytes] | None:
    """The header's bytes before and after where raw_data goes, or None if protobuf does not
    order them as expected (then the tensor is serialized whole)."""
    full = header.SerializeToString(deterministic=True)
    if all(field.number < _TENSOR_RAW_DATA for field, _ in header.ListFields()):
        return full, b""  # the usual header (dims, type, name): nothing goes after the data
    rest = onnx.TensorProto()
    rest.CopyFrom(header)
    for field in _TENSOR_HEAD_FIELDS:
        rest.ClearField(field)
    tail = rest.SerializeToString(deterministic=True)
    if not full.endswith(tail):
        return None
    return full[: len(full) - len(tail)], tail


def _raw_stream(tensor: Tensor, head: bytes, tail: bytes) -> Stream:
    payload = Stream()
    if isinstance(tensor, MappedTensor):
        payload.add_mapped(tensor)
    else:
        data = raw_payload(tensor)
        if len(data) != tensor.nbytes:
            raise ValueError(f"tensor holds {len(data)} bytes, expected {tensor.nbytes}")
        payload.add(data)
    stream = Stream(head)
    stream.add_field(_TENSOR_RAW_DATA, payload)
    stream.add(tail)
    return stream
