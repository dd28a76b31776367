"""Which ops the quantize pass turns into integer kernels, and in what layout.

A `Target` says, for one op, which inputs are activations to quantize (shared Q->DQ pairs), which
input is a weight (int8 initializer + DequantizeLinear, per channel along `weight_axis`), which is
a bias (int32 + DequantizeLinear), and which tensor after it needs its own Q->DQ so onnxruntime
can fuse the group (QLinearConv needs a QuantizeLinear on the Conv's output, or on the output of
a ReLU that follows, which the QuantizeLinear then makes redundant). Targets are keyed by the name
of the op's first output, which stays stable when a model is reloaded from bytes.

Every op of a requested type that is left in float gets a reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from graphsurg.passes._util import read_in_subgraph

from graphsurg.ir import Graph, Op, Value, dtypes

KNOWN_OPS = ("Conv", "Gemm", "MatMul", "Gather", "LayerNormalization")
_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    kind: str  # conv | gemm | matmul | act_matmul | gather | norm_input
    act_ports: tuple[int, ...] = ()
    weight_port: int | None = None
    weight_axis: int | None = None
    bias_port: int | None = None
    output: str | None = None  # tensor that gets a Q->DQ right after the op (fusion needs it)

    def find(self, graph: Graph) -> Op:
        """The op in `graph` (this model or a copy loaded from its bytes)."""
        return graph.producer(graph.value(self.key))

    def calibration_names(self, graph: Graph) -> list[str]:
        op = self.find(graph)
        names = [op.inputs[p].name for p in self.act_ports]
        return names + ([self.output] if self.output else [])


@dataclass
class Plan:
    targets: list[Target]
    refused: list[tuple[str, str]]

    def calibration_names(self, graph: Graph) -> list[str]:
        return list(dict.fromkeys(n for t in self.targets for n in t.calibration_names(graph)))


def op_key(op: Op) -> str:
    first = next((v for v in op.outputs if v is not None), None)
    return first.name if first is not None else op.label


def make_plan(graph: Graph, ops: Iterable[str], exclude: Iterable[str], per_channel: bool,
              weights_only: bool, act_matmul: bool) -> Plan:
    """Targets in topological order, and (label, reason) for each requested op left in float."""
    wanted, excluded = set(ops), set(exclude)
    plan = Plan([], [])
    for unknown in sorted(wanted - set(KNOWN_OPS)):
        if any(op.op_type == unknown for op in graph.ops):
            plan.refused.append((unknown, f"no integer-kernel QDQ layout is known for {unknown}; left in float"))
    for op in graph.topological_order():
        if op.op_type not in wanted or op.op_type not in KNOWN_OPS:
            _note_subgraphs(op, wanted, plan)
            continue
        if op.domain not in _DEFAULT_DOMAINS:
            continue
        if excluded & {op.name, op.label, op_key(op)}:
            plan.refused.append((op.label, "excluded by the exclude parameter"))
            continue
        target, reason = _target(graph, op, per_channel, weights_only, act_matmul)
        if target is not None:
            plan.targets.append(target)
        elif reason:  # no reason: the op is not of the quantizable kind at all (a Gather of shapes)
            plan.refused.append((op.label, reason))
    return plan


def _note_subgraphs(op: Op, wanted: set[str], plan: Plan) -> None:
    for sub in op.subgraphs():
        for inner in sub.iter_all_ops():
            if inner.op_type in wanted:
                plan.refused.append((inner.label, f"inside a subgraph of {op.label}; the pass works on the main graph"))


def weight_array(graph: Graph, value: Value | None) -> np.ndarray | None:
    """A constant weight: an initializer of this graph that is not also an (overridable) graph input."""
    if value is None or not graph.is_fixed(value) or value.name not in graph.initializers:
        return None
    return value.const.numpy()


def _is_float(value: Value | None) -> bool:
    return value is not None and value.dtype in (None, dtypes.FLOAT)


def _target(graph: Graph, op: Op, per_channel: bool, weights_only: bool,
            act_matmul: bool) -> tuple[Target | None, str]:
    builder = {"Conv": _conv, "Gemm": _gemm, "MatMul": _matmul, "Gather": _gather,
               "LayerNormalization": _layernorm}[op.op_type]
    return builder(graph, op, per_channel, weights_only, act_matmul)


def _computed_from_constants(graph: Graph, value: Value) -> bool:
    """Made by an op that reads only initializers (a Transpose of a weight, a Constant): foldable."""
    op = graph.producer(value)
    return op is not None and not op.subgraphs() and all(
        v is None or weight_array(graph, v) is not None for v in op.inputs)


def _weight_problem(graph: Graph, value: Value | None, what: str = "weight") -> str | None:
    w = weight_array(graph, value)
    if w is None:
        if value is not None and _computed_from_constants(graph, value):
            return f"its {what} is computed from constants at run time; run fold-constants first"
        return f"its {what} is not a constant initializer (it is a graph input or computed at run time)"
    if w.dtype != np.float32:
        return f"its {what} is {w.dtype}, only float32 weights are quantized"
    return None


def _output_tensor(graph: Graph, op: Op) -> Value:
    """The tensor to quantize after `op`: its output, or the output of a ReLU that alone reads it."""
    out = op.outputs[0]
    users = graph.consumers(out)
    if len(users) == 1 and out not in graph.outputs:
        relu = users[0][0]
        if relu.op_type == "Relu" and relu.domain in _DEFAULT_DOMAINS and not read_in_subgraph(graph, out):
            return relu.outputs[0]
    return out


def _conv(graph: Graph, op: Op, per_channel: bool, weights_only: bool, _act_matmul: bool):
    problem = _weight_problem(graph, op.inputs[1])
    if problem:
        return None, problem
    if not _is_float(op.inputs[0]):
        return None, "its input is not float32"
    bias = op.inputs[2] if len(op.inputs) > 2 else None
    if bias is not None and _weight_problem(graph, bias, "bias"):
        return None, _weight_problem(graph, bias, "bias")
    base = dict(key=_key(op), label=op.label, kind="conv", weight_port=1, weight_axis=0 if per_channel else None,
                bias_port=2 if bias is not None else None)
    if weights_only:
        return Target(**base), ""
    out = _output_tensor(graph, op)
    if read_in_subgraph(graph, out):
        return None, "its output is read inside a subgraph by name, so no QuantizeLinear can follow it"
    return Target(**base, act_ports=(0,), output=out.name), ""


def _gemm(graph: Graph, op: Op, per_channel: bool, weights_only: bool, _act_matmul: bool):
    problem = _weight_problem(graph, op.inputs[1])
    if problem:
        return None, problem
    w = weight_array(graph, op.inputs[1])
    if w.ndim != 2 or not _is_float(op.inputs[0]) or op.inputs[0].is_const:
        return None, "its A input is not a float activation or B is not a matrix"
    bias = op.inputs[2] if len(op.inputs) > 2 else None
    if bias is not None:
        c = weight_array(graph, bias)
        n = w.shape[0] if op.attr("transB", 0) else w.shape[1]
        if c is None or c.shape != (n,) or float(op.attr("beta", 1.0)) != 1.0:
            return None, "its bias is not a [N] initializer with beta = 1, which QGemm needs"
    axis = (0 if op.attr("transB", 0) else 1) if per_channel else None
    return Target(key=_key(op), label=op.label, kind="gemm", act_ports=() if weights_only else (0,),
                  weight_port=1, weight_axis=axis, bias_port=2 if bias is not None else None), ""


def _matmul(graph: Graph, op: Op, per_channel: bool, weights_only: bool, act_matmul: bool):
    a, b = op.inputs[0], op.inputs[1]
    wa, wb = weight_array(graph, a), weight_array(graph, b)
    if wa is not None:
        return None, "its left operand is a constant; only right-hand weights are quantized"
    if wb is None:
        if b.is_const or _computed_from_constants(graph, b):
            return None, _weight_problem(graph, b)
        if not act_matmul:
            return None, ("activation x activation MatMul (e.g. attention scores) kept in float; "
                          "set act_matmul=true to quantize it")
        if weights_only:
            return None, "activation x activation MatMul has no weights to quantize with activations=none"
        if not (_is_float(a) and _is_float(b)):
            return None, "its inputs are not float32"
        return Target(key=_key(op), label=op.label, kind="act_matmul", act_ports=(0, 1)), ""
    problem = _weight_problem(graph, b)
    if problem:
        return None, problem
    if wb.ndim > 2:
        return None, f"its weight has rank {wb.ndim}; only matrices (rank <= 2) are quantized"
    if not _is_float(a):
        return None, "its input is not float32"
    axis = 1 if per_channel and wb.ndim == 2 else None
    return Target(key=_key(op), label=op.label, kind="matmul", act_ports=() if weights_only else (0,),
                  weight_port=1, weight_axis=axis), ""


def _gather(graph: Graph, op: Op, per_channel: bool, _weights_only: bool, _act_matmul: bool):
    table = op.inputs[0]
    array = weight_array(graph, table)
    if array is None or array.dtype != np.float32 or array.ndim < 1:
        return None, None  # indexing shapes or activations, not an embedding table: nothing to say
    readers = {c.op_type for c, _ in graph.consumers(table)} | ({"graph output"} if table in graph.outputs else set())
    if readers != {"Gather"} or any(port != 0 for _, port in graph.consumers(table)):
        return None, f"its table is also read by {', '.join(sorted(readers - {'Gather'}))}; left in float"
    w = weight_array(graph, table)
    axis = int(op.attr("axis", 0)) % max(w.ndim, 1)
    # one scale per column of the table (its last axis) survives the gather as the last output axis
    last = w.ndim - 1 if per_channel and w.ndim >= 2 and axis != w.ndim - 1 else None
    return Target(key=_key(op), label=op.label, kind="gather", weight_port=0, weight_axis=last), ""


def _layernorm(graph: Graph, op: Op, _per_channel: bool, weights_only: bool, _act_matmul: bool):
    """A Q/DQ on the input of a LayerNormalization that follows a residual Add.

    onnxruntime fuses a float Add + LayerNormalization into SkipLayerNormalization, whose CPU kernel
    runs several times slower than the two ops apart (6.6x on [64, 16, 256] with onnxruntime 1.32 on
    AVX2); the Q/DQ keeps them apart, and the normalization divides most of the rounding error away.
    Other readers of the sum (the residual path) keep the float tensor.
    """
    if weights_only:
        return None, "it has no weights; with activations=none it stays as it is"
    x = op.inputs[0]
    producer = graph.producer(x)
    if producer is None or producer.op_type != "Add" or len(graph.consumers(x)) != 1 or x in graph.outputs:
        # onnxruntime fuses only an Add read by the LayerNormalization alone (post-LN blocks)
        return None, "its input is not a sum read by it alone (no SkipLayerNormalization to avoid)"
    if not _is_float(op.inputs[0]):
        return None, "its input is not float32"
    return Target(key=_key(op), label=op.label, kind="norm_input", act_ports=(0,)), ""


def _key(op: Op) -> str:
    return op_key(op)
