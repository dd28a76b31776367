"""ONNX <-> IR: the only layer that touches onnx protobufs."""

from graphsurg.serde.check import check, infer_shapes
from graphsurg.serde.convert import convert_opset
from graphsurg.serde.load import from_proto, load, parse
from graphsurg.serde.save import save, to_bytes, to_proto

__all__ = ["check", "convert_opset", "from_proto", "infer_shapes", "load", "parse", "save", "to_bytes", "to_proto"]
