"""Single-tensor protobuf files (ONNX test data `input_0.pb`, `output_0.pb`) -> numpy.

Lives in serde because it parses onnx protobufs; the evaluator's datasets call it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from graphsurg.errors import BadInputError
from graphsurg.serde.tensors import tensor_from_proto


def read_tensor_file(path: str | os.PathLike) -> tuple[str, np.ndarray]:
    """The name (may be '') and array of a serialized TensorProto; sizes are checked like weights."""
    source = Path(path)
    proto = onnx.TensorProto()
    try:
        proto.ParseFromString(source.read_bytes())
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise BadInputError(f"{source}: not a serialized ONNX tensor ({exc})") from None
    if not proto.dims and not proto.raw_data and proto.data_type == 0:
        raise BadInputError(f"{source}: not a serialized ONNX tensor (no type; a sequence or map?)")
    tensor = tensor_from_proto(proto, str(source.parent))
    return proto.name, np.asarray(tensor.numpy())
