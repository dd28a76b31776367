"""The IR's invariants, checked after every pass and on load."""

from __future__ import annotations

from graphsurg.ir.graph import CAPTURE, Graph, GraphError
from graphsurg.ir.nodes import Op, Value


def verify(graph: Graph) -> None:
    """Raises GraphError naming the first broken invariant.

    One producer per value, initializers and graph inputs have no producer, every input resolves
    (here or in an outer scope), edges agree with `Op.inputs`/`Op.outputs`, outer values read by
    a subgraph have their capture edge, outputs exist, acyclic; recursively for subgraphs.
    """
    inputs = set(graph.inputs)
    for value in graph.values():
        _check_value(graph, value, inputs)
    for op in graph.ops:
        _check_op(graph, op)
    for value in graph.outputs:
        if graph.lookup(value.name) is not value:
            raise GraphError(f"graph output {value.name!r} is not defined")
    graph.topological_order()
    for op in graph.ops:
        for sub in op.subgraphs():
            if sub.parent is not graph:
                raise GraphError(f"subgraph {sub.name!r} of {op.label} has the wrong parent")
            verify(sub)


def _check_value(graph: Graph, value: Value, inputs: set[Value]) -> None:
    if value not in graph.nx:
        raise GraphError(f"value {value.name!r} is missing from the graph's networkx vertices")
    producers = list(graph.nx._pred[value])
    if len(producers) > 1:
        raise GraphError(f"value {value.name!r} has {len(producers)} producers")
    if value.is_const and producers:
        raise GraphError(f"initializer {value.name!r} also has a producer")
    if producers and value in inputs:
        raise GraphError(f"graph input {value.name!r} also has a producer")
    if value.graph is not graph:
        raise GraphError(f"value {value.name!r} belongs to another graph")
    is_source = value.is_const or value in inputs
    if not producers and not is_source:
        raise GraphError(f"value {value.name!r} has no producer and is neither an input nor an initializer")


def _check_op(graph: Graph, op: Op) -> None:
    if op not in graph.nx:
        raise GraphError(f"op {op.label} is missing from the graph's networkx vertices")
    if op.graph is not graph:
        raise GraphError(f"op {op.label} belongs to another graph")
    expected = {(v, port) for port, v in enumerate(op.inputs) if v is not None and v.graph is graph}
    actual = {(u, key) for u, keys in graph.nx._pred[op].items() for key in keys if key != CAPTURE}
    if expected != actual:
        raise GraphError(f"edges of {op.label} disagree with its inputs")
    for value in op.inputs:
        if value is not None and graph.lookup(value.name) is not value:
            raise GraphError(f"{op.label} reads {value.name!r}, which is not defined (dangling input)")
    succ = graph.nx._succ[op]
    for port, value in enumerate(op.outputs):
        if value is not None and port not in succ.get(value, ()):
            raise GraphError(f"output {port} of {op.label} is not connected")
        if value is not None and value.graph is not graph:
            raise GraphError(f"output {port} of {op.label} belongs to another graph")
    pred = graph.nx._pred[op]
    for value in graph.captured_values(op):
        if CAPTURE not in pred.get(value, ()):
            raise GraphError(f"a subgraph of {op.label} reads {value.name!r} but the capture edge is missing")
