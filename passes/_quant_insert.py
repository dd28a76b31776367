"""Writes the QDQ layout of a plan into a graph.

Layout (what onnxruntime's CPU provider fuses into integer kernels):
- activation input x of a quantized op: x -> QuantizeLinear -> DequantizeLinear -> op, one pair
  per tensor shared by every quantized consumer; float consumers keep reading x itself, so the
  quantization noise stays out of residual paths and other float ops.
- weight: an int8 initializer -> DequantizeLinear (per-channel `axis`) -> op; the float weight
  is dropped once nothing else reads it.
- bias of Conv/Gemm: int32 initializer with scale act_scale * weight_scale -> DequantizeLinear.
- the tensor after a Conv (or after its ReLU): Q -> DQ that every consumer reads, so
  DQ -> Conv -> [ReLU] -> Q becomes QLinearConv.
- Gather on an embedding table: Gather reads the int8 table, DequantizeLinear follows it, so only
  the gathered rows are dequantized.

What is inserted is written compactly, since on small models it outweighs the int8 weights:
- all-zero zero points are left out (DequantizeLinear's default is 0: int32 biases, symmetric
  weights), except where onnxruntime needs them to fuse: the weight of a Gemm (without it QGemm
  does not form and the Gemm runs in float) and activations (without them neither QGemm nor
  QLinearConv forms); the tests check this on onnxruntime's optimized graph. Equal zero points
  share one initializer.
- inserted values get short generated names (q0, q1, ...) and inserted ops no name, except the
  int8 weights: `<weight>_int8`, the names users look for.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from graphsurg.passes._quant_calib import QuantizedWeight, quantize_array, quantize_weight
from graphsurg.passes._quant_plan import Target

from graphsurg.ir import Graph, Op, Value

INT32_MAX = 2**31 - 1


@dataclass
class QuantSettings:
    act_dtype: str | None  # "uint8" | "int8" | None (weights only)
    symmetric_weights: bool = True
    mse_weights: bool = False
    pair_safe: bool = True  # weight scales that keep x86 AVX2 u8s8 kernels from saturating


@dataclass
class WriteLog:
    weights: dict[str, dict[str, Any]] = field(default_factory=dict)
    activations: dict[str, dict[str, float]] = field(default_factory=dict)
    quantized_ops: list[str] = field(default_factory=list)
    int32_biases: list[str] = field(default_factory=list)


class QDQWriter:
    """Inserts shared Q/DQ pairs and quantized weights; remembers what it made so tensors and
    weights are quantized once whatever the number of consumers."""

    def __init__(self, graph: Graph, settings: QuantSettings, qparams: dict[str, tuple[np.float32, Any]]):
        self.graph = graph
        self.settings = settings
        self.qparams = qparams
        self.log = WriteLog()
        self._act: dict[str, Value] = {}
        self._dq_source: dict[Value, str] = {}  # DQ output -> the qparams key of the tensor it stands for
        self._weights: dict[tuple[str, int | None], tuple[Value, QuantizedWeight]] = {}
        self._float_weights: set[Value] = set()
        self._zero_points: dict[tuple[str, tuple[int, ...], bytes], Value] = {}
        self._serial = itertools.count()
        self.dropped: list[str] = []

    # ---- names and shared constants --------------------------------------------------------
    def name(self) -> str:
        """A short name for an inserted value (the graph makes it unique when it is added)."""
        return f"q{next(self._serial)}"

    def constant(self, array: np.ndarray) -> Value:
        return self.graph.add_initializer(self.name(), array)

    def int8_copy(self, weight: Value, array: np.ndarray) -> Value:
        """The int8 initializer of a weight, named after it: the tensors people look for in a viewer,
        a diff or the certificate's `touched` keep a name they recognise."""
        return self.graph.add_initializer(f"{weight.name}_int8", array)

    def zero_point(self, array: np.ndarray, required: bool) -> Value | None:
        """The zero-point input: None when it is all zero and not `required`; one initializer per
        distinct zero point (dtype, shape and values) otherwise."""
        array = np.asarray(array)
        if not required and not array.any():
            return None
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._zero_points:
            self._zero_points[key] = self.constant(array)
        return self._zero_points[key]

    def dequantize(self, x: Value, scale: Value, zero_point: Value | None, axis: int | None = None) -> Value:
        inputs = [x, scale] if zero_point is None else [x, scale, zero_point]
        dq = self.graph.add_op("DequantizeLinear", inputs, [self.name()], attrs={} if axis is None else {"axis": axis})
        return dq.outputs[0]

    # ---- activations ---------------------------------------------------------------------
    def activation(self, value: Value) -> Value:
        """The DequantizeLinear output standing for `value` (made once per tensor)."""
        found = self._act.get(value.name)
        if found is not None:
            return found
        if value in self._dq_source:  # already the DQ of a tensor quantized for every reader
            return value
        scale, zero_point = self.qparams[value.name]
        s = self.constant(np.asarray(scale, np.float32))
        z = self.zero_point(np.asarray(zero_point), required=True)
        q = self.graph.add_op("QuantizeLinear", [value, s, z], [self.name()])
        out = self.dequantize(q.outputs[0], s, z)
        out.dtype, out.shape = value.dtype, value.shape
        self._act[value.name] = out
        self._dq_source[out] = value.name
        self.log.activations[value.name] = {"scale": float(scale), "zero_point": int(zero_point)}
        return out

    def quantize_all_uses(self, value: Value) -> None:
        """Every reader of `value` (graph outputs included) reads its DequantizeLinear instead."""
        out = self.activation(value)
        q_op = self.graph.producer(self.graph.producer(out).inputs[0])
        for op, port in self.graph.consumers(value):
            if op is not q_op:
                self.graph.set_input(op, port, out)
        if value in self.graph.outputs:
            name = value.name
            self.graph.outputs = [out if v is value else v for v in self.graph.outputs]
            spare = self.graph.fresh_name(f"{name}_float")
            self.graph._names.discard(spare)  # fresh_name reserves it; rename_value claims it again
            self.graph.rename_value(value, spare)
            self._act[spare] = self._act.pop(name)
            self.graph.rename_value(out, name)

    def act_scale(self, value: Value) -> float:
        return float(self.qparams[self._dq_source[self.activation(value)]][0])

    # ---- weights ---------------------------------------------------------------------------
    def weight(self, value: Value, axis: int | None,
               min_scale: np.ndarray | None = None) -> tuple[Value, QuantizedWeight]:
        """int8 initializer + DequantizeLinear for a weight (shared per weight and axis)."""
        key = (value.name, axis)
        if key in self._weights:
            return self._weights[key]
        qw = quantize_weight(value.const.numpy(), axis, self.settings.symmetric_weights, self.settings.mse_weights,
                             min_scale, pair_safe=self.settings.pair_safe and self.settings.act_dtype is not None)
        q_init = self.int8_copy(value, qw.q)
        # QGemm forms only from a weight DequantizeLinear with an explicit zero point
        gemm = any(op.op_type == "Gemm" for op, _ in self.graph.consumers(value))
        dq_out = self.dequantize(q_init, self.constant(qw.scale), self.zero_point(qw.zero_point, required=gemm),
                                 axis if qw.axis is not None else None)
        self._weights[key] = (dq_out, qw)
        self._float_weights.add(value)
        self.log.weights[value.name] = {"axis": axis, "int8": q_init.name, **qw.report}
        return dq_out, qw

    def table(self, value: Value, axis: int | None) -> tuple[Value, QuantizedWeight]:
        """The int8 copy of an embedding table (shared by every Gather that reads it)."""
        key = (value.name, axis)
        if key not in self._weights:
            qw = quantize_weight(value.const.numpy(), axis, self.settings.symmetric_weights,
                                 self.settings.mse_weights)
            q_init = self.int8_copy(value, qw.q)
            self._weights[key] = (q_init, qw)
            self._float_weights.add(value)
            self.log.weights[value.name] = {"axis": axis, "int8": q_init.name, **qw.report}
        return self._weights[key]

    def bias(self, value: Value, scale: np.ndarray) -> Value:
        """int32 bias with scale act_scale * weight_scale (zero point 0, left out), the layout
        QLinearConv/QGemm take. A scalar `scale` (per-tensor weights) stays scalar, so no `axis`
        (opset 13) is needed."""
        b = value.const.numpy().astype(np.float64)
        scale = np.asarray(scale, np.float64).astype(np.float32)
        q = quantize_array(b, scale.astype(np.float64), 0, -INT32_MAX, INT32_MAX, np.int32)
        out = self.dequantize(self.constant(q), self.constant(scale), None, 0 if scale.ndim else None)
        self._float_weights.add(value)
        self.log.int32_biases.append(value.name)
        return out

    def drop_unused_float_weights(self) -> list[str]:
        for value in self._float_weights:
            if value.name in self.graph.initializers and not self.graph.is_used(value):
                self.dropped.append(value.name)
                self.graph.remove_value(value)
        self.dropped.sort()
        return self.dropped


def write_target(writer: QDQWriter, target: Target) -> None:
    """Quantizes one op as its target says."""
    graph = writer.graph
    op = target.find(graph)
    if target.kind == "gather":
        _write_gather(writer, op, target)
    else:
        _write_compute(writer, op, target)
    writer.log.quantized_ops.append(target.label)


def _write_compute(writer: QDQWriter, op: Op, target: Target) -> None:
    graph = writer.graph
    act_inputs = [op.inputs[p] for p in target.act_ports]
    for port, value in zip(target.act_ports, act_inputs, strict=True):
        graph.set_input(op, port, writer.activation(value))
    if target.weight_port is not None:
        x_scale = writer.act_scale(act_inputs[0]) if act_inputs else None
        w_value = op.inputs[target.weight_port]
        min_scale = _bias_floor(op, target, x_scale)
        dq_w, qw = writer.weight(w_value, target.weight_axis, min_scale)
        graph.set_input(op, target.weight_port, dq_w)
        if target.bias_port is not None and x_scale is not None:
            bias_value = op.inputs[target.bias_port]
            graph.set_input(op, target.bias_port, writer.bias(bias_value, x_scale * qw.scale.astype(np.float64)))
    if target.output:
        writer.quantize_all_uses(graph.value(target.output))


def _bias_floor(op: Op, target: Target, x_scale: float | None) -> np.ndarray | None:
    """Smallest weight scales that keep bias / (x_scale * w_scale) inside int32."""
    if target.bias_port is None or x_scale is None or x_scale <= 0:
        return None
    b = np.abs(op.inputs[target.bias_port].const.numpy().astype(np.float64))
    floor = b / (x_scale * INT32_MAX) * 1.0001
    return floor if target.weight_axis is not None else np.asarray([floor.max()])


def _write_gather(writer: QDQWriter, op: Op, target: Target) -> None:
    """Gather(int8 table) -> DequantizeLinear(axis -1): only the gathered rows are dequantized."""
    graph = writer.graph
    q_init, qw = writer.table(op.inputs[0], target.weight_axis)
    out = op.outputs[0]
    gathered = graph.add_op("Gather", [q_init, op.inputs[1]], [writer.name()], attrs={"axis": int(op.attr("axis", 0))})
    new = writer.dequantize(gathered.outputs[0], writer.constant(qw.scale),
                            writer.zero_point(qw.zero_point, required=False), -1 if qw.axis is not None else None)
    new.dtype, new.shape = out.dtype, out.shape
    name = out.name
    graph.replace_all_uses(out, new)
    graph.remove_op(op)
    graph.rename_value(new, name)
