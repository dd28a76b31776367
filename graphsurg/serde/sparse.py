"""Sparse initializers: kept as their proto, densified only when a pass reads them."""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from graphsurg.errors import BadInputError
from graphsurg.ir import DeferredTensor
from graphsurg.serde.tensors import tensor_from_proto


class SparseProtoTensor(DeferredTensor):
    def __init__(self, proto: onnx.SparseTensorProto):
        super().__init__(proto.values.data_type, tuple(proto.dims), lambda: _densify(proto))
        self.proto = proto


def _densify(proto: onnx.SparseTensorProto):
    import numpy as np

    values = numpy_helper.to_array(proto.values)
    indices = numpy_helper.to_array(proto.indices)
    dense = np.zeros(tuple(proto.dims), values.dtype)
    if indices.ndim == 1:
        dense.reshape(-1)[indices] = values
    else:
        dense[tuple(indices.T)] = values
    return dense


def sparse_tensor_from_proto(proto: onnx.SparseTensorProto, base_dir: str | None,
                             detach: bool = False) -> SparseProtoTensor:
    values = tensor_from_proto(proto.values, base_dir, detach=detach)
    if len(values.shape) != 1:
        raise BadInputError(f"sparse initializer {proto.values.name!r}: values must be 1-D")
    tensor_from_proto(proto.indices, base_dir, detach=detach)
    return SparseProtoTensor(proto)
