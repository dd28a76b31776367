"""TensorProto <-> IR tensors, with the size checks that keep a lying file from costing memory."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from graphsurg.errors import BadInputError
from graphsurg.ir import (
    DeferredTensor,
    DetachedTensor,
    ExternalLocation,
    ExternalTensor,
    MappedTensor,
    SourceFile,
    Tensor,
    dtypes,
)

_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
_MODELED = {"dims", "data_type", "name", "raw_data", "external_data", "data_location", *_TYPED_FIELDS}


def _shape(proto: onnx.TensorProto) -> tuple[int, ...]:
    # a slice of upb's repeated field is a list made in C: several times faster than iterating it
    return tuple(proto.dims[:])


class ProtoTensor(DeferredTensor):
    """A tensor decoded from an inline TensorProto; saved back as that proto while unchanged."""

    def __init__(self, proto: onnx.TensorProto):
        super().__init__(proto.data_type, _shape(proto), lambda: _decode(proto))
        self.proto = proto


def _decode(proto: onnx.TensorProto) -> np.ndarray:
    if proto.HasField("raw_data") and proto.data_type in _RAW_VIEWABLE:
        return np.frombuffer(proto.raw_data, dtypes.numpy_dtype(proto.data_type)).reshape(tuple(proto.dims))
    return numpy_helper.to_array(proto)


_RAW_VIEWABLE = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 24})


class ProtoFileTensor(MappedTensor):
    """A large weight stored inline in a model file: the tensor's proto without its raw_data
    (`header`), and the file range holding the raw bytes (read through the pinned `source`)."""

    def __init__(self, header: onnx.TensorProto, location: ExternalLocation, source: SourceFile):
        super().__init__(header.data_type, _shape(header), location, source)
        self.header = header


def has_raw_form(tensor: Tensor) -> bool:
    """True when the tensor's bytes can be written as one little-endian raw payload."""
    if isinstance(tensor, MappedTensor):
        return True
    if isinstance(tensor, ProtoTensor):
        return tensor.proto.HasField("raw_data") and tensor.dtype in _RAW_VIEWABLE
    return tensor.dtype in _RAW_VIEWABLE


def raw_payload(tensor: Tensor) -> bytes | memoryview:
    """The raw little-endian bytes of a non-mapped tensor with a raw form (see `has_raw_form`)."""
    if isinstance(tensor, ProtoTensor):
        return tensor.proto.raw_data
    array = np.asarray(tensor.numpy())
    little = array.astype(dtypes.numpy_dtype(tensor.dtype).newbyteorder("<"), copy=False)
    return memoryview(np.ascontiguousarray(little).reshape(-1).view(np.uint8))


def tensor_from_proto(proto: onnx.TensorProto, base_dir: str | None,
                      payload: tuple[SourceFile, int, int] | None = None, detach: bool = False) -> Tensor:
    """Builds a lazy tensor, refusing data whose size disagrees with the declared shape.

    `payload` (source, offset, length) is the raw data of a tensor whose proto came without it
    because the loader left it in the model file. `detach`: an external tensor's data file is
    neither opened nor required (see `load`).
    """
    shape = _shape(proto)
    if shape and min(shape) < 0:
        raise BadInputError(f"tensor {proto.name or '<unnamed>'!r} has a negative dimension {list(shape)}")
    if proto.data_type not in dtypes.BY_CODE:
        raise BadInputError(f"tensor {proto.name or '<unnamed>'!r} has unknown element type {proto.data_type}")
    count = math.prod(shape)
    if payload is not None:
        tensor: Tensor = _file_tensor(proto, payload, count)
    elif proto.data_location == onnx.TensorProto.EXTERNAL:
        tensor = _external_tensor(proto, base_dir, count, detach)
    else:
        _check_inline_size(proto, count)
        tensor = ProtoTensor(proto)
    if proto.doc_string or proto.metadata_props or proto.HasField("segment"):
        tensor.meta_blob = _meta_blob(proto)
    return tensor


def _meta_blob(proto: onnx.TensorProto) -> bytes:
    rest = onnx.TensorProto()
    rest.CopyFrom(proto)
    for field in _MODELED:
        rest.ClearField(field)
    return rest.SerializeToString(deterministic=True)


def _check_inline_size(proto: onnx.TensorProto, count: int) -> None:
    name = proto.name or "<unnamed>"
    if proto.data_type == onnx.TensorProto.STRING:
        held = len(proto.string_data)
        if held != count:
            raise BadInputError(f"tensor {name!r} declares {count} strings but holds {held}")
        return
    expected = dtypes.nbytes(proto.data_type, count)
    if proto.HasField("raw_data"):
        held = len(proto.raw_data)
        if held != expected:
            raise BadInputError(
                f"tensor {name!r} declares shape {list(proto.dims)} ({expected} bytes) but holds {held} bytes"
            )
        return
    held_items = sum(len(getattr(proto, field)) for field in _TYPED_FIELDS)
    per_item = 2 if proto.data_type in (14, 15) else 1  # complex numbers take two slots
    if dtypes.BY_CODE[proto.data_type].bits < 8:  # packing in int32_data varies by writer
        if held_items > count:
            raise BadInputError(f"tensor {name!r} declares {count} elements but holds {held_items}")
        return
    if held_items != count * per_item:
        raise BadInputError(
            f"tensor {name!r} declares {count} elements (shape {list(proto.dims)}) but holds {held_items}"
        )


def _file_tensor(proto: onnx.TensorProto, payload: tuple[SourceFile, int, int], count: int) -> ProtoFileTensor:
    source, offset, length = payload
    expected = dtypes.nbytes(proto.data_type, count)
    if length != expected:
        raise BadInputError(
            f"tensor {proto.name or '<unnamed>'!r} declares shape {list(proto.dims)} ({expected} bytes) "
            f"but holds {length} bytes"
        )
    return ProtoFileTensor(proto, ExternalLocation(source.path, offset, length), source)


def _external_tensor(proto: onnx.TensorProto, base_dir: str | None, count: int,
                     detach: bool) -> ExternalTensor | DetachedTensor:
    name = proto.name or "<unnamed>"
    info = {entry.key: entry.value for entry in proto.external_data}
    location = info.get("location")
    if not location:
        raise BadInputError(f"tensor {name!r} is external but names no location")
    if base_dir is None:
        raise BadInputError(f"tensor {name!r} has external data but the model was not loaded from a file")
    path = resolve_external_path(base_dir, location, name, must_exist=not detach)
    expected = dtypes.nbytes(proto.data_type, count)
    try:
        offset = int(info.get("offset", 0))
        length = int(info.get("length", expected))
    except ValueError:
        raise BadInputError(f"tensor {name!r} has a non-numeric external offset or length") from None
    if length != expected:
        raise BadInputError(f"tensor {name!r} declares {expected} bytes but its external length is {length}")
    if detach:
        return DetachedTensor(proto.data_type, _shape(proto), location, offset, length)
    source = SourceFile.open(path)
    size = source.size()
    if offset < 0 or offset + length > size:
        raise BadInputError(
            f"tensor {name!r} reads bytes {offset}..{offset + length} of {location!r}, which has only {size}"
        )
    return ExternalTensor(proto.data_type, _shape(proto), ExternalLocation(path, offset, length), source)


def resolve_external_path(base_dir: str, location: str, tensor_name: str, must_exist: bool = True) -> str:
    """The absolute path of an external data file; refuses locations outside the model's folder."""
    if "\0" in location:
        raise BadInputError(f"tensor {tensor_name!r}: external data location {location!r} holds a NUL byte")
    if os.path.isabs(location) or location.startswith(("/", "\\")):
        raise BadInputError(f"tensor {tensor_name!r}: external data location {location!r} is an absolute path")
    if ".." in Path(location).parts:
        raise BadInputError(f"tensor {tensor_name!r}: external data location {location!r} escapes the model's folder")
    base = os.path.realpath(base_dir)
    resolved = os.path.realpath(os.path.join(base, location))
    if os.path.commonpath([base, resolved]) != base:
        raise BadInputError(
            f"tensor {tensor_name!r}: external data location {location!r} links outside the model's folder"
        )
    if must_exist and not os.path.isfile(resolved):
        raise BadInputError(f"tensor {tensor_name!r}: external data file {location!r} is missing")
    return resolved


def tensor_to_proto(tensor: Tensor, name: str | None) -> onnx.TensorProto:
    """An inline TensorProto (external placement is done by the writer); name None keeps the
    loaded proto's own name (attribute tensors)."""
    if isinstance(tensor, ProtoTensor):
        proto = onnx.TensorProto()
        proto.CopyFrom(tensor.proto)
        if name is not None:
            proto.name = name
        return proto
    proto = _fresh_proto(tensor)
    if name:
        proto.name = name
    if tensor.meta_blob:
        proto.MergeFromString(tensor.meta_blob)
    return proto


def _fresh_proto(tensor: Tensor) -> onnx.TensorProto:
    array = tensor.numpy()
    code = tensor.dtype
    if code in _RAW_VIEWABLE and code != onnx.TensorProto.STRING:
        proto = onnx.TensorProto()
        proto.data_type = code
        proto.dims.extend(tensor.shape)
        little_endian = np.asarray(array, dtypes.numpy_dtype(code)).astype(
            dtypes.numpy_dtype(code).newbyteorder("<"), copy=False
        )
        proto.raw_data = np.ascontiguousarray(little_endian).tobytes()
        return proto
    if code == onnx.TensorProto.STRING:
        return numpy_helper.from_array(array)
    return onnx.helper.make_tensor("", code, list(tensor.shape), array.flatten().tolist())


def header_proto(tensor: Tensor, name: str) -> onnx.TensorProto:
    """A TensorProto carrying type and shape only, for shape inference without the weights."""
    proto = onnx.TensorProto()
    proto.name = name
    proto.data_type = tensor.dtype
    proto.dims.extend(tensor.shape)
    proto.data_location = onnx.TensorProto.EXTERNAL
    entry = proto.external_data.add()
    entry.key, entry.value = "location", "graphsurg-no-data"
    return proto

