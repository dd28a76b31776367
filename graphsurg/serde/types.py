"""ValueInfoProto <-> Value type, shape and documentation."""

from __future__ import annotations

import onnx

from graphsurg.ir import Value


def read_value_info(value: Value, vi: onnx.ValueInfoProto, overwrite: bool = True) -> None:
    if not overwrite and value.original_type_blob() is not None:
        return
    if vi.HasField("type"):
        value.dtype, value.shape = _tensor_type(vi.type)
        value.keep_type_blob(vi.type.SerializeToString(deterministic=True))
    if vi.doc_string:
        value.doc_string = vi.doc_string
    if vi.metadata_props:
        extra = onnx.ValueInfoProto()
        extra.metadata_props.extend(vi.metadata_props)
        value.meta_blob = extra.SerializeToString(deterministic=True)


def _tensor_type(tp: onnx.TypeProto):
    if tp.WhichOneof("value") != "tensor_type":
        return None, None
    tensor = tp.tensor_type
    dtype = tensor.elem_type or None
    if not tensor.HasField("shape"):
        return dtype, None
    dims = []
    for dim in tensor.shape.dim:
        kind = dim.WhichOneof("value")
        dims.append(dim.dim_value if kind == "dim_value" else dim.dim_param if kind == "dim_param" else None)
    return dtype, tuple(dims)


def write_value_info(value: Value, name: str | None = None) -> onnx.ValueInfoProto:
    vi = onnx.ValueInfoProto()
    vi.name = name or value.name
    blob = value.original_type_blob()
    if blob is not None:
        vi.type.ParseFromString(blob)
    elif value.dtype is not None:
        tensor = vi.type.tensor_type
        tensor.elem_type = value.dtype
        if value.shape is not None:
            shape = tensor.shape
            shape.SetInParent()
            for dim in value.shape:
                entry = shape.dim.add()
                if isinstance(dim, int):
                    entry.dim_value = dim
                elif isinstance(dim, str):
                    entry.dim_param = dim
    if value.doc_string:
        vi.doc_string = value.doc_string
    if value.meta_blob:
        vi.MergeFromString(value.meta_blob)
    return vi


def has_type(value: Value) -> bool:
    return value.dtype is not None or value.original_type_blob() is not None
