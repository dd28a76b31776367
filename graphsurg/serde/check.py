"""onnx's checker and shape inference, run on the IR without materializing weights."""

from __future__ import annotations

import onnx

from graphsurg.ir import Model, all_graphs
from graphsurg.serde.save import to_proto
from graphsurg.serde.types import has_type

_SMALL_MODEL_BYTES = 256 << 20


class CheckError(ValueError):
    """onnx's checker rejected the model."""


def check(model: Model, full: bool = True) -> None:
    """Runs onnx.checker (full_check adds strict shape inference); raises CheckError.

    Small models are checked with their weights inline; large ones with weight headers only, so
    the check costs no more memory than the graph.
    """
    inline = sum(v.const.nbytes for g in all_graphs(model.graph) for v in g.initializers.values())
    proto = to_proto(model, headers_only=inline > _SMALL_MODEL_BYTES)
    if inline > _SMALL_MODEL_BYTES:
        for tensor in _header_tensors(proto.graph):
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
    try:
        onnx.checker.check_model(proto, full_check=full)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise CheckError(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from None


def _header_tensors(gp: onnx.GraphProto):
    yield from gp.initializer


def infer_shapes(model: Model) -> None:
    """Fills dtype and shape of values that lack them, from onnx shape inference.

    Inferred shapes are not written back as value_info on save (the round trip stays lossless).
    """
    proto = to_proto(model, headers_only=True)
    for tensor in proto.graph.initializer:
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError):
        return
    _apply(model.graph, inferred.graph)


def _apply(graph, gp: onnx.GraphProto) -> None:
    from graphsurg.serde.types import read_value_info

    for vi in [*gp.value_info, *gp.output]:
        value = graph._values.get(vi.name)
        if value is None or value.is_const:
            continue
        if not has_type(value) or value.shape is None or any(d is None for d in value.shape):
            blob, in_vi = value.original_type_blob(), value.in_value_info
            read_value_info(value, vi)
            if blob is None:
                value.type_blob = None
            value.in_value_info = in_vi
