"""cleanup: dead ops, unused initializers, Identity elimination."""

from __future__ import annotations

from collections import Counter

from graphsurg.passes._util import read_in_subgraph

from graphsurg.ir import Graph, Model, Op, Value
from graphsurg.pipeline import NoParams, Pass, PassContext, PassResult


class Cleanup(Pass):
    """Removes what does not contribute to the outputs.

    Handles: Identity ops (consumers read the Identity's input; an Identity that feeds a graph
    output hands the output's name to its input's producer), ops whose outputs nothing reads
    (repeatedly, so whole dead chains go), initializers nothing reads.
    Refuses: an Identity whose output or input is read inside an If/Loop/Scan body by name, or
    that maps one graph input or output straight to another (the interface must keep both
    names). Graph inputs are never removed (they are the model's interface). Works on the main
    graph; bodies of If/Loop/Scan are left as they are.
    """

    name = "cleanup"
    Params = NoParams

    def run(self, model: Model, ctx: PassContext, result: PassResult) -> None:
        graph = model.graph
        identities = self._remove_identities(graph, result)
        dead = self._remove_dead_ops(graph)
        unused = self._remove_unused_initializers(graph)
        result.modified = bool(identities or dead or unused)
        result.changes = {"identities_removed": identities, "dead_ops_removed": dict(dead),
                          "initializers_removed": unused}
        result.summary = (f"removed {identities} Identity, {sum(dead.values())} dead ops, "
                          f"{len(unused)} unused initializers")

    def _remove_identities(self, graph: Graph, result: PassResult) -> int:
        removed = 0
        for op in graph.topological_order():
            if op.op_type != "Identity" or op.domain not in ("", "ai.onnx") or op.inputs[0] is None:
                continue
            reason = self._identity_blocker(graph, op)
            if reason:
                result.refuse(op.label, reason)
                continue
            source, target = op.inputs[0], op.outputs[0]
            is_output = target in graph.outputs
            graph.replace_all_uses(target, source)
            name = target.name
            graph.remove_op(op)
            if is_output:
                graph.rename_value(source, name)
                _take_interface_type(source, target)
            removed += 1
        return removed

    def _identity_blocker(self, graph: Graph, op: Op) -> str | None:
        source, target = op.inputs[0], op.outputs[0]
        if read_in_subgraph(graph, target) or read_in_subgraph(graph, source):
            return "a subgraph reads its input or output by name"
        if target in graph.outputs:
            if source in graph.outputs or source in graph.inputs or source.is_const or source.graph is not graph:
                return "it maps an input, initializer or output straight to a graph output"
        return None

    def _remove_dead_ops(self, graph: Graph) -> Counter:
        removed: Counter = Counter()
        for op in reversed(graph.topological_order()):
            if not any(v is not None and graph.is_used(v) for v in op.outputs):
                removed[op.op_type] += 1
                graph.remove_op(op, remove_outputs=True)
        return removed

    def _remove_unused_initializers(self, graph: Graph) -> list[str]:
        unused = [v for v in graph.initializers.values() if not graph.is_used(v)]
        for value in unused:
            graph.remove_value(value)
        return [v.name for v in unused]


def _take_interface_type(source: Value, target: Value) -> None:
    """The graph output keeps the type it declared (the Identity's output's), documentation too."""
    blob = target.original_type_blob()
    source.dtype, source.shape = target.dtype or source.dtype, target.shape or source.shape
    if blob is not None:
        source.keep_type_blob(blob)
    source.doc_string = source.doc_string or target.doc_string
    source.meta_blob = source.meta_blob or target.meta_blob
