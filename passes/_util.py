"""Helpers shared by passes: constant replacement that keeps value names stable."""

from __future__ import annotations

import numpy as np

from graphsurg.ir import Graph, Op, Tensor, Value


def replace_with_constant(graph: Graph, op: Op, output: Value, array: np.ndarray | Tensor) -> Value:
    """Turns `output` of `op` into an initializer of the same name holding `array` (an array, or
    a tensor kept as it is).

    The op must produce nothing else that is still used; it is removed.
    """
    name = output.name
    init = graph.add_initializer(f"{name}__folded", array if isinstance(array, Tensor) else np.asarray(array))
    graph.replace_all_uses(output, init)
    for other in op.outputs:
        if other is not None and other is not output and graph.is_used(other):
            raise ValueError(f"{op.label} has another used output")
    graph.remove_op(op)
    graph.rename_value(init, name)
    return init


def read_in_subgraph(graph: Graph, value: Value) -> bool:
    """True when a subgraph of some op reads `value` by name (so it cannot simply be rewired)."""
    return any(value.name in sub.free_names() for op in graph.ops for sub in op.subgraphs())
