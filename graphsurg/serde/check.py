"""onnx's checker and shape inference, run on the IR without materializing weights."""

from __future__ import annotations

import os
import tempfile

import onnx

from graphsurg.ir import Model
from graphsurg.serde.save import to_proto
from graphsurg.serde.types import has_type

# Tensors up to this size go to the checker with their data (shape inference reads small
# constants such as Reshape's shape); larger ones as a header pointing at an empty stand-in file.
_INLINE_CHECK_BYTES = 1 << 16
_STUB_FILE = "graphsurg-no-data"


class CheckError(ValueError):
    """onnx's checker rejected the model."""


def check(model: Model, full: bool = True) -> None:
    """Runs onnx.checker (full_check adds strict shape inference); raises CheckError.

    Weights larger than 64 KiB are not read: the checker sees their type and shape, pointing at an
    empty external file (it checks that the file exists, not its contents), so checking costs no
    more memory than the graph whatever the size of the model.
    """
    proto = to_proto(model, stub_above=_INLINE_CHECK_BYTES)
    try:
        if not _has_stubs(proto.graph):
            onnx.checker.check_model(proto, full_check=full)
            return
        with tempfile.TemporaryDirectory(prefix="graphsurg-check-") as folder:
            open(os.path.join(folder, _STUB_FILE), "wb").close()
            path = os.path.join(folder, "model.onnx")
            with open(path, "wb") as handle:
                handle.write(proto.SerializeToString(deterministic=True))
            del proto
            onnx.checker.check_model(path, full_check=full)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise CheckError(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from None


def _has_stubs(gp: onnx.GraphProto) -> bool:
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in gp.initializer):
        return True
    return any(_has_stubs(a.g) if a.HasField("g") else any(_has_stubs(g) for g in a.graphs)
               for node in gp.node for a in node.attribute if a.HasField("g") or len(a.graphs))


def infer_shapes(model: Model) -> None:
    """Fills dtype and shape of values that lack them, from onnx shape inference.

    Small constants go in with their data (so Reshape targets and the like are known); large
    weights as headers only. Inferred shapes are not written back as value_info on save (the
    round trip stays lossless).
    """
    proto = to_proto(model, stub_above=_INLINE_CHECK_BYTES)
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
