"""graphsurg: an ONNX graph-surgery toolchain."""

__version__ = "0.1.0"
