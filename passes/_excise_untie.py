"""Broadcast chains copied per reader before dependency groups are built.

The dynamo exporter expands a key padding mask over the heads once, `(batch, 1, 1, seq) ->
(batch, heads, 1, seq)`, reshapes it, and adds the same tensor to the scores of every layer.
Its head axis gets labels (`_broadcast_axis` in `_excise_rules_ops`), so one shared tensor would
tie every layer's heads into one group, although each position of that axis holds the same
values and nothing couples the layers. Giving each reader its own copy of the Expand and the
layout ops after it (a function-preserving edit of a few tiny ops) keeps the layers independent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from graphsurg.passes._excise_rules_ops import repeated_unit_axes
from graphsurg.passes._excise_weights import CHAIN_OPS, const_ints, copy_op

from graphsurg.ir import Graph, Op, Value


@dataclass
class Untied:
    """The copies made, so that a run which removes nothing can leave the graph as it found it."""

    copies: list[Op] = field(default_factory=list)
    rewired: list[tuple[Op, int, Value]] = field(default_factory=list)  # reader, port, what it read

    def undo(self, graph: Graph) -> None:
        for reader, port, value in self.rewired:
            graph.set_input(reader, port, value)
        for op in reversed(self.copies):
            graph.remove_op(op)
        self.copies, self.rewired = [], []


def untie_broadcasts(graph: Graph) -> Untied:
    """Copies, per reader, every Expand that repeats a unit axis to a constant size, with the
    layout ops after it."""
    expands = [op for op in graph.ops if op.op_type == "Expand" and op.domain in ("", "ai.onnx")
               and _repeats_unit_axis(op)]
    untied = Untied()
    for op in expands:
        _untie(graph, op.outputs[0], [op], untied)
    return untied


def _repeats_unit_axis(op: Op) -> bool:
    spec, shape = const_ints(op.graph, op.inputs[1]), op.inputs[0].shape
    return spec is not None and shape is not None and len(spec) >= len(shape) and \
        bool(repeated_unit_axes(spec, list(shape)))


def _untie(graph: Graph, value: Value, chain: list[Op], untied: Untied) -> None:
    """Gives every reader of `value` after the first its own copy of `chain` (the ops from the
    Expand down to `value`), then follows the layout ops among them."""
    if value in graph.outputs:
        return
    for index, (reader, port) in enumerate(graph.consumers(value)):
        own = chain
        if index:
            own = _copy(graph, chain)
            untied.copies.extend(own)
            untied.rewired.append((reader, port, value))
            graph.set_input(reader, port, own[-1].outputs[0])
        if reader.op_type in CHAIN_OPS and port == 0 and reader.domain in ("", "ai.onnx"):
            _untie(graph, reader.outputs[0], [*own, reader], untied)


def _copy(graph: Graph, chain: list[Op]) -> list[Op]:
    copies: list[Op] = []
    for op in chain:
        inputs = [copies[-1].outputs[0], *op.inputs[1:]] if copies else list(op.inputs)
        copies.append(copy_op(graph, op, inputs, op.op_type))
    return copies
