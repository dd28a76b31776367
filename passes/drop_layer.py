"""drop-layer: removes one layer, or one residual branch, whose input and output shapes agree."""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
from graphsurg.passes._excise_weights import constant_array, remove_dead, resolve_weight
from graphsurg.passes._util import read_in_subgraph

from graphsurg import serde
from graphsurg.errors import BadInputError
from graphsurg.ir import Graph, Model, Op, Value
from graphsurg.pipeline import Pass, PassContext, PassResult

_LAYERS = ("Conv", "Gemm", "MatMul")
_PASSIVE = ("Identity", "Dropout", "Cast")


@dataclass(frozen=True)
class DropLayerParams:
    node: str | None = None  # the op to remove (its name or its output's name)
    block: str | None = None  # "auto" (weakest residual branch) or the name of the branch's closing Add

    def __post_init__(self) -> None:
        if self.node is not None and self.block is not None:
            raise ValueError("give node=NAME or block=auto|NAME, not both")


@dataclass
class Branch:
    """A residual branch: `add` computes skip + f(skip); `ops` compute f (and nothing else)."""

    add: Op
    skip: Value
    out: Value
    ops: list[Op]
    score: float | None = None  # estimated output RMS for unit-variance inputs; None: unknown


class DropLayer(Pass):
    """Removes a layer or a residual branch, rewiring consumers to its input.

    Handles: `node=NAME`, any op with one non-constant input whose shape and dtype equal its
    output's (its weights go too); `block=NAME`, the residual branch closed by the Add named
    NAME; `block=auto` (the default), the residual branch with the smallest estimated output
    (RMS of its closing Conv/Gemm/MatMul rows for unit-variance inputs, through following
    BatchNorm, bias Add/Sub and constant Mul/Div; a branch whose last weights are zero scores 0
    and dropping it preserves the function). A branch is an Add(x, f(x)) whose f reads x and whose
    internal values nothing else reads; a transformer block is two such branches (drop each).
    A graph output keeps its name (an Identity takes the removed op's place).
    Refuses, with the reason: shapes or dtypes that differ, several non-constant inputs, values
    read inside If/Loop/Scan bodies, no residual branch found, branches whose output cannot be
    estimated (block=auto only considers estimated ones). Main graph only.
    """

    name = "drop-layer"
    Params = DropLayerParams

    def run(self, model: Model, ctx: PassContext, result: PassResult) -> None:
        serde.infer_shapes(model)
        before = set(model.graph.initializers)
        if self.params.node is not None:
            dropped = self._drop_node(model.graph, self.params.node, result)
        else:
            dropped = self._drop_block(model.graph, self.params.block or "auto", result)
        if dropped is None:
            result.summary = "nothing dropped: " + (result.refused[-1]["reason"] if result.refused else "no candidate")
            return
        removed = sorted(before - set(model.graph.initializers))
        result.modified = True
        result.changes.update({"dropped": dropped, "initializers_removed": removed})
        result.summary = f"dropped {dropped['kind']} {dropped['target']} ({len(dropped['ops'])} ops)"

    # ---- a single layer ------------------------------------------------------------------
    def _drop_node(self, graph: Graph, name: str, result: PassResult) -> dict | None:
        op = graph.find_op(name)
        if op is None:
            raise BadInputError(f"drop-layer: no op or value named {name!r}")
        data = [v for v in op.inputs if v is not None and constant_array(graph, v) is None]
        out = op.outputs[0]
        reason = None
        if len(data) != 1:
            reason = f"it has {len(data)} non-constant inputs (to drop a residual branch use block=NAME)"
        elif any(v is not None and graph.is_used(v) for v in op.outputs[1:]):
            reason = "it has more than one used output"
        else:
            reason = _mismatch(data[0], out)
        if reason:
            result.refuse(op.label, reason)
            return None
        _bypass(graph, op, data[0])
        return {"kind": "layer", "target": op.label, "ops": [op.label]}

    # ---- a residual branch ------------------------------------------------------------------
    def _drop_block(self, graph: Graph, block: str, result: PassResult) -> dict | None:
        branches = find_branches(graph, result)
        result.changes["candidates"] = [{"add": b.add.label, "ops": len(b.ops), "score": b.score} for b in branches]
        if block != "auto":
            chosen = next((b for b in branches if block in (b.add.name, b.out.name)), None)
            if chosen is None:
                if graph.find_op(block) is None:
                    raise BadInputError(f"drop-layer: no op or value named {block!r}")
                result.refuse(block, "it does not close a residual branch that can be dropped")
                return None
        else:
            scored = [b for b in branches if b.score is not None]
            if not scored:
                result.refuse("model", "no residual branch with an estimable output was found"
                              if branches else "no residual branch was found")
                return None
            chosen = min(scored, key=lambda b: b.score)
        labels = [op.label for op in chosen.ops] + [chosen.add.label]
        _bypass(graph, chosen.add, chosen.skip)
        return {"kind": "branch", "target": chosen.add.label, "ops": labels, "score": chosen.score}


def _mismatch(source: Value, out: Value) -> str | None:
    if source.dtype is not None and out.dtype is not None and source.dtype != out.dtype:
        return "its input and output dtypes differ"
    if source.shape is None or out.shape is None:
        return "the shapes of its input and output are unknown"
    # Shape inference names unknown sizes freshly (unk__N): two symbolic sizes are taken as equal,
    # a static size must match exactly.
    if len(source.shape) != len(out.shape) or any(
            a is None or b is None or (a != b and not (isinstance(a, str) and isinstance(b, str)))
            for a, b in zip(source.shape, out.shape, strict=True)):
        return f"its input shape {list(source.shape)} differs from its output shape {list(out.shape)}"
    return None


def _bypass(graph: Graph, op: Op, source: Value) -> None:
    """Consumers of op's output read `source`; a graph output keeps its name via an Identity."""
    out = op.outputs[0]
    inputs = [v for v in op.inputs if v is not None]
    if out in graph.outputs or read_in_subgraph(graph, out):
        graph.remove_op(op, remove_outputs=False)
        for extra in op.outputs[1:]:  # unused (checked by the caller): they go with the op
            if extra is not None:
                graph.remove_value(extra)
        graph.add_op("Identity", [source], [out])
    else:
        graph.replace_all_uses(out, source)
        graph.remove_op(op)
    remove_dead(graph, inputs)


def find_branches(graph: Graph, result: PassResult) -> list[Branch]:
    """Every Add(x, f(x)) whose branch f can go; the others are refused with their reason."""
    branches = []
    order = {op: i for i, op in enumerate(graph.topological_order())}
    for add in order:
        if add.op_type != "Add" or len(add.inputs) != 2 or any(constant_array(graph, v) is not None
                                                                for v in add.inputs):
            continue
        found = _branch(graph, add, order)
        if isinstance(found, str):
            result.refuse(add.label, found)
        elif found is not None:
            found.score = _score(graph, found)
            branches.append(found)
    return branches


def _branch(graph: Graph, add: Op, order: dict[Op, int]) -> Branch | str | None:
    a, b = add.inputs
    for skip, out in ((a, b), (b, a)):
        producer = graph.producer(out)
        downstream = nx.descendants(graph.nx, skip)
        if producer is None or out not in downstream:
            continue
        inside = {n for n in nx.ancestors(graph.nx, out) & downstream if isinstance(n, Op)} | {producer}
        for op in inside:
            for value in op.outputs:
                if value is None or value is out:
                    continue
                if value in graph.outputs or any(c not in inside for c, _ in graph.consumers(value)):
                    return f"the branch's value {value.name!r} is read outside it"
        if _mismatch(skip, add.outputs[0]):
            return "the skip input's shape differs from the Add's output"
        return Branch(add, skip, out, sorted(inside, key=order.__getitem__))
    return None


# ---- scoring ---------------------------------------------------------------------------------
def _score(graph: Graph, branch: Branch) -> float | None:
    """Output RMS of the branch for unit-variance uncorrelated inputs, from its closing layer."""
    followers, value = [], branch.out
    while True:
        op = graph.producer(value)
        if op is None or op not in branch.ops:
            return None
        if op.op_type in _LAYERS and resolve_weight(graph, op, 1) is not None:
            break
        followers.append(op)
        value = next((v for v in op.inputs if v is not None and constant_array(graph, v) is None), None)
        if value is None:
            return None
    layer = _layer_stats(graph, op)
    if layer is None:
        return None
    row_sq, scale, shift = layer
    for follower in reversed(followers):
        step = _follow(graph, follower, len(row_sq))
        if step is None:
            return None
        scale, shift = scale * step[0], shift * step[0] + step[1]
    return float(np.sqrt(np.mean(scale ** 2 * row_sq + shift ** 2)))


def _layer_stats(graph: Graph, op: Op) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    weight = np.asarray(resolve_weight(graph, op, 1).effective(), dtype=np.float64)
    if op.op_type == "Conv":
        row_sq = (weight ** 2).reshape(weight.shape[0], -1).sum(axis=1)
    elif op.op_type == "Gemm" and op.attr("transB", 0):
        row_sq = (weight ** 2).sum(axis=1)
    elif weight.ndim == 2:
        row_sq = (weight ** 2).sum(axis=0)
    else:
        return None
    bias = _per_channel(graph, op.inputs[2] if len(op.inputs) > 2 else None, len(row_sq))
    if bias is None:
        return None
    return row_sq, np.ones(len(row_sq)), bias


def _follow(graph: Graph, op: Op, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) of a per-channel affine op following the closing layer."""
    if op.op_type in _PASSIVE:
        return np.ones(channels), np.zeros(channels)
    if op.op_type == "BatchNormalization":
        gamma, beta, mean, var = (_per_channel(graph, v, channels) for v in op.inputs[1:5])
        if any(p is None for p in (gamma, beta, mean, var)):
            return None
        scale = gamma / np.sqrt(var + float(op.attr("epsilon", 1e-5)))
        return scale, beta - mean * scale
    const = next((_per_channel(graph, v, channels) for v in op.inputs if constant_array(graph, v) is not None), None)
    if const is None:
        return None
    table = {"Add": (np.ones(channels), const), "Sub": (np.ones(channels), -const), "Mul": (const, 0 * const)}
    if op.op_type == "Div" and constant_array(graph, op.inputs[1]) is not None:
        return 1.0 / const, 0 * const
    return table.get(op.op_type)


def _per_channel(graph: Graph, value: Value | None, channels: int) -> np.ndarray | None:
    if value is None:
        return np.zeros(channels)
    array = constant_array(graph, value)
    if array is None:
        return None
    flat = np.asarray(array, dtype=np.float64).reshape(-1)
    if flat.size == 1:
        return np.full(channels, flat[0])
    return flat if flat.size == channels else None
