"""Broadcast chains copied per reader before dependency groups are built.

The dynamo exporter expands a key padding mask over the heads once, `(batch, 1, 1, seq) ->
(batch, heads, 1, seq)`, reshapes it, and adds the same tensor to the scores of every layer.
Its head axis gets labels (`_broadcast_axis` in `_excise_rules_ops`), so one shared tensor would
tie every layer's heads into one group, although each position of that axis holds the same
values and nothing couples the layers. Giving each reader its own copy of the Expand and the
layout ops after it (a function-preserving edit of a few tiny ops) keeps the layers independent.
"""

from __future__ import annotations

from graphsurg.passes._excise_rules_ops import repeated_unit_axes
from graphsurg.passes._excise_weights import const_ints

from graphsurg.ir import Graph, Op, Value

_LAYOUT = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Cast"})


def untie_broadcasts(graph: Graph) -> int:
    """Copies, per reader, every Expand that repeats a unit axis to a constant size, with the
    layout ops after it; returns how many copies were made."""
    expands = [op for op in graph.ops if op.op_type == "Expand" and op.domain in ("", "ai.onnx")
               and _repeats_unit_axis(op)]
    return sum(_untie(graph, op.outputs[0], [op]) for op in expands)


def _repeats_unit_axis(op: Op) -> bool:
    spec, shape = const_ints(op.graph, op.inputs[1]), op.inputs[0].shape
    return spec is not None and shape is not None and len(spec) >= len(shape) and \
        bool(repeated_unit_axes(spec, list(shape)))


def _untie(graph: Graph, value: Value, chain: list[Op]) -> int:
    """Gives every reader of `value` after the first its own copy of `chain` (the ops from the
    Expand down to `value`), then follows the layout ops among them."""
    if value in graph.outputs:
        return 0
    copies = 0
    for index, (reader, port) in enumerate(graph.consumers(value)):
        own = chain
        if index:
            own = _copy(graph, chain)
            graph.set_input(reader, port, own[-1].outputs[0])
            copies += 1
        if reader.op_type in _LAYOUT and port == 0 and reader.domain in ("", "ai.onnx"):
            copies += _untie(graph, reader.outputs[0], [*own, reader])
    return copies


def _copy(graph: Graph, chain: list[Op]) -> list[Op]:
    copies: list[Op] = []
    for op in chain:
        inputs = [copies[-1].outputs[0], *op.inputs[1:]] if copies else list(op.inputs)
        copy = graph.add_op(op.op_type, inputs, attrs=op.attrs, name=op.name or op.op_type, domain=op.domain)
        copy.outputs[0].dtype, copy.outputs[0].shape = op.outputs[0].dtype, op.outputs[0].shape
        copies.append(copy)
    return copies
