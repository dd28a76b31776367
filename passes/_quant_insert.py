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
"""

from __future__ import annotations

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
        self.dropped: list[str] = []

    # ---- activations ---------------------------------------------------------------------
    def activation(self, value: Value) -> Value:
        """The DequantizeLinear output standing for `value` (made once per tensor)."""
        found = self._act.get(value.name)
        if found is not None:
            return found
        if value in self._dq_source:  # already the DQ of a tensor quantized for every reader
            return value
        scale, zero_point = self.qparams[value.name]
        base = value.name
        s = self.graph.add_initializer(f"{base}_scale", np.asarray(scale, np.float32))
        z = self.graph.add_initializer(f"{base}_zero_point", np.asarray(zero_point))
        q = self.graph.add_op("QuantizeLinear", [value, s, z], [self.graph.fresh_name(f"{base}_quantized")],
                              name=f"{base}_QuantizeLinear")
        dq = self.graph.add_op("DequantizeLinear", [q.outputs[0], s, z],
                               [self.graph.fresh_name(f"{base}_dequantized")], name=f"{base}_DequantizeLinear")
        out = dq.outputs[0]
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
    def weight(self, value: Value, axis: int | None, min_scale: np.ndarray | None = None,
               dq_axis: int | None = None) -> tuple[Value, QuantizedWeight]:
        """int8 initializer + DequantizeLinear for a weight (shared per weight and axis)."""
        key = (value.name, axis)
        if key in self._weights:
            return self._weights[key]
        qw = quantize_weight(value.const.numpy(), axis, self.settings.symmetric_weights, self.settings.mse_weights,
                             min_scale, pair_safe=self.settings.pair_safe and self.settings.act_dtype is not None)
        q_init, dq_out = self._dequantize(value.name, qw, dq_axis if dq_axis is not None else axis)
        self._weights[key] = (dq_out, qw)
        self._float_weights.add(value)
        self.log.weights[value.name] = {"axis": axis, "int8": q_init.name, **qw.report}
        return dq_out, qw

    def _dequantize(self, base: str, qw: QuantizedWeight, axis: int | None) -> tuple[Value, Value]:
        g = self.graph
        q_init = g.add_initializer(f"{base}_quantized", qw.q)
        s = g.add_initializer(f"{base}_scale", qw.scale)
        z = g.add_initializer(f"{base}_zero_point", qw.zero_point)
        attrs = {"axis": axis} if qw.axis is not None else {}
        dq = g.add_op("DequantizeLinear", [q_init, s, z], [g.fresh_name(f"{base}_dequantized")], attrs=attrs,
                      name=f"{base}_DequantizeLinear")
        return q_init, dq.outputs[0]

    def table(self, value: Value, axis: int | None) -> tuple[Value, QuantizedWeight]:
        """The int8 copy of an embedding table (shared by every Gather that reads it)."""
        key = (value.name, axis)
        if key not in self._weights:
            qw = quantize_weight(value.const.numpy(), axis, self.settings.symmetric_weights,
                                 self.settings.mse_weights)
            q_init = self.graph.add_initializer(f"{value.name}_quantized", qw.q)
            self._weights[key] = (q_init, qw)
            self._float_weights.add(value)
            self.log.weights[value.name] = {"axis": axis, "int8": q_init.name, **qw.report}
        return self._weights[key]

    def bias(self, value: Value, scale: np.ndarray) -> Value:
        """int32 bias with scale act_scale * weight_scale (zero point 0), the layout QLinearConv/QGemm take.

        A scalar `scale` (per-tensor weights) stays scalar, so no `axis` (opset 13) is needed."""
        b = value.const.numpy().astype(np.float64)
        scale = np.asarray(scale, np.float64).astype(np.float32)
        q = quantize_array(b, scale.astype(np.float64), 0, -INT32_MAX, INT32_MAX, np.int32)
        g = self.graph
        q_init = g.add_initializer(f"{value.name}_quantized", q)
        s = g.add_initializer(f"{value.name}_scale", scale)
        z = g.add_initializer(f"{value.name}_zero_point", np.zeros(scale.shape, np.int32))
        dq = g.add_op("DequantizeLinear", [q_init, s, z], [g.fresh_name(f"{value.name}_dequantized")],
                      attrs={"axis": 0} if scale.ndim else {}, name=f"{value.name}_DequantizeLinear")
        self._float_weights.add(value)
        self.log.int32_biases.append(value.name)
        return dq.outputs[0]

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
    table = op.inputs[0]
    q_init, qw = writer.table(table, target.weight_axis)
    out = op.outputs[0]
    gathered = graph.add_op("Gather", [q_init, op.inputs[1]], [graph.fresh_name(f"{out.name}_quantized")],
                            attrs={"axis": int(op.attr("axis", 0))}, name=f"{op.name or out.name}_int8")
    s = graph.add_initializer(f"{table.name}_scale", qw.scale)
    z = graph.add_initializer(f"{table.name}_zero_point", qw.zero_point)
    attrs = {"axis": -1} if qw.axis is not None else {}
    dq = graph.add_op("DequantizeLinear", [gathered.outputs[0], s, z], [graph.fresh_name(f"{out.name}_dq")],
                      attrs=attrs, name=f"{out.name}_DequantizeLinear")
    new = dq.outputs[0]
    new.dtype, new.shape = out.dtype, out.shape
    name = out.name
    graph.replace_all_uses(out, new)
    graph.remove_op(op)
    graph.rename_value(new, name)
