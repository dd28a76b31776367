"""The op table: ONNX op type -> builder. A builder reads the node's attributes (and constant
inputs such as shapes and axes) once, when the interpreter compiles the graph, and returns the
function that runs on every forward: `fn(*input_tensors) -> tensor | tuple of tensors`.

Omitted optional inputs arrive as None. Builders may call `node.static(port)` only for inputs
that never carry gradients (shapes, axes, pads, repeats): it reads the constant once at build time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from graphsurg.errors import BadInputError
from graphsurg.ir import Graph, Op

Builder = Callable[["Node"], Callable[..., Any]]
OPS: dict[str, Builder] = {}
DEFAULT_DOMAINS = ("", "ai.onnx")


class UnsupportedOpError(BadInputError):
    """The model uses an op the training backend has no torch implementation for."""


def register(*names: str) -> Callable[[Builder], Builder]:
    def add(builder: Builder) -> Builder:
        for name in names:
            OPS[name] = builder
        return builder
    return add


class Node:
    """What a builder sees: the op, the model's opset, and hooks into the module being built."""

    def __init__(self, op: Op, opset: int, host: Any):
        self.op = op
        self.opset = opset
        self.host = host  # the GraphModule: training flag, constants, compiling bodies

    def attr(self, name: str, default: Any = None) -> Any:
        return self.op.attr(name, default)

    @property
    def num_inputs(self) -> int:
        return len(self.op.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.op.outputs)

    def has_input(self, port: int) -> bool:
        return port < len(self.op.inputs) and self.op.inputs[port] is not None

    def has_output(self, port: int) -> bool:
        return port < len(self.op.outputs) and self.op.outputs[port] is not None

    def static(self, port: int) -> np.ndarray | None:
        """The value of a constant input (initializer or Constant output), else None."""
        if not self.has_input(port):
            return None
        value = self.op.inputs[port]
        graph: Graph | None = value.graph
        return graph.const_value(value) if graph is not None else None

    def static_ints(self, port: int) -> list[int] | None:
        array = self.static(port)
        return None if array is None else [int(v) for v in np.asarray(array).reshape(-1)]

    def fail(self, reason: str) -> BadInputError:
        return UnsupportedOpError(f"{self.op.op_type} node {self.op.label!r}: {reason}")


def builder_for(op: Op) -> Builder | None:
    if op.domain not in DEFAULT_DOMAINS:
        return None
    return OPS.get(op.op_type)


def _load_all() -> None:
    # Importing the modules fills OPS through their @register decorators.
    from graphsurg.train.ops import control, elementwise, nn, quant, reduce, tensor  # noqa: F401


_load_all()
