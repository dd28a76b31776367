"""The IR as a `torch.nn.Module` (the torch.fx Interpreter pattern: a table op type -> torch function).

`GraphModule(model)` compiles the graph once into a `Program` (slots, one step per op, the builder's
function for each) and runs it on every forward. Float initializers of the main graph become
`nn.Parameter`s named after their values (sanitized for torch; `onnx_name`/`torch_name` map
between the two), everything else a buffer. Frozen on purpose, as buffers: BatchNormalization
running statistics (they move only by their own update rule), quantization scales and zero points
(unless `learn_scales`), rank-0 float constants (formula constants such as GELU's sqrt(2) or an
attention scale) and initializers of If/Loop/Scan bodies. An integer weight read only by
DequantizeLinear gets a float shadow parameter (fake-quantized in forward, re-quantized on
write-back), so QAT also trains statically quantized weights. `write_back` puts the trained values
back into the IR by name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from graphsurg.errors import BadInputError
from graphsurg.ir import Graph, Model, Op, Value, dtypes
from graphsurg.train.ops import Node, UnsupportedOpError, builder_for
from graphsurg.train.ops.quant import per_axis
from graphsurg.train.tensors import INT_RANGES, to_numpy, to_torch

_FROZEN_PORTS = {"BatchNormalization": {3, 4}, "QuantizeLinear": {1, 2}, "DequantizeLinear": {1, 2}}
CONTROL_FLOW = ("If", "Loop", "Scan")  # their regions run forward only: no gradient reaches their inputs
_SCALE_PORTS = {"QuantizeLinear": 1, "DequantizeLinear": 1}


@dataclass
class Shadow:
    """An integer weight trained through a float copy: how to quantize it back."""

    low: int
    high: int
    scale: np.ndarray
    zero_point: np.ndarray | None
    axis: int
    scale_name: str = ""  # the scale's initializer: with learn_scales its trained value re-quantizes


class Program:
    """A compiled graph: values live in numbered slots; each step calls one op's function."""

    def __init__(self, graph: Graph, host: GraphModule, captured_names: Sequence[str] = ()):
        self.host = host
        self.graph = graph
        self.captured_names = list(captured_names)
        self.slots: dict[str, int] = {}
        # Slot 0 always holds None: omitted optional inputs read it.
        self.input_values = [v for v in graph.inputs if v.name not in graph.initializers]
        self.input_slots = [self._slot(v.name) for v in self.input_values]
        self.captured_slots = [self._slot(name) for name in self.captured_names]
        self.state_slots = [(self._slot(v.name), *host.state_entry(v)) for v in graph.initializers.values()
                            if host.state_entry(v) is not None]
        self.steps = [self._compile(op) for op in graph.topological_order()]
        self.output_slots = [self.slots[v.name] if v.name in self.slots else self._missing(v) for v in graph.outputs]
        self._plan_frees()

    def _slot(self, name: str) -> int:
        if name not in self.slots:
            self.slots[name] = len(self.slots) + 1
        return self.slots[name]

    def _missing(self, value: Value) -> int:
        raise BadInputError(f"graph output {value.name!r} is not computed by the graph")

    def _compile(self, op: Op):
        builder = builder_for(op)
        if builder is None:
            raise UnsupportedOpError(unsupported_message([op]))
        node = Node(op, self.host.opset_for(op), self.host)
        node.captures = sorted(set().union(*(sub.free_names() for sub in op.subgraphs()))) if op.subgraphs() else []
        for v in op.inputs:
            if v is not None and v.name not in self.slots:
                raise BadInputError(f"{op.label} reads {v.name!r}, which is not available in its scope")
        fn = builder(node)
        ins = [0 if v is None else self.slots[v.name] for v in op.inputs]
        ins += [self.slots[name] for name in node.captures]
        outs = [-1 if v is None else self._slot(v.name) for v in op.outputs]
        return [fn, ins, outs, (), op]

    def _plan_frees(self) -> None:
        """Drops each intermediate after its last reader, so forward holds only what autograd keeps."""
        keep = set(self.output_slots) | {0}
        last: dict[int, int] = {}
        for i, step in enumerate(self.steps):
            for slot in step[1]:
                last[slot] = i
        by_step: dict[int, list[int]] = {}
        for slot, i in last.items():
            if slot not in keep:
                by_step.setdefault(i, []).append(slot)
        for i, step in enumerate(self.steps):
            step[3] = tuple(by_step.get(i, ()))

    def run(self, inputs: Sequence, captured: Sequence = ()) -> list:
        env: list = [None] * (len(self.slots) + 1)
        for slot, x in zip(self.input_slots, inputs, strict=False):
            env[slot] = x
        for slot, x in zip(self.captured_slots, captured, strict=False):
            env[slot] = x
        for slot, table, key in self.state_slots:
            env[slot] = table[key]
        for fn, ins, outs, frees, op in self.steps:
            try:
                result = fn(*[env[i] for i in ins])
            except BadInputError:
                raise
            except Exception as exc:  # noqa: BLE001 - name the failing op, keep the cause chained
                raise BadInputError(f"{op.op_type} node {op.label!r} failed: {' '.join(str(exc).split())}") from exc
            if isinstance(result, tuple | list):
                for slot, r in zip(outs, result, strict=False):
                    if slot >= 0:
                        env[slot] = r
            else:
                env[outs[0]] = result
            for slot in frees:
                env[slot] = None
        return [env[s] for s in self.output_slots]


def unsupported_message(ops: Sequence[Op]) -> str:
    kinds = sorted({op.op_type if op.domain in ("", "ai.onnx") else f"{op.domain}::{op.op_type}" for op in ops})
    return (f"the training backend has no torch implementation of {', '.join(kinds)} "
            f"(first at node {ops[0].label!r})")


def unsupported_ops(model: Model) -> list[Op]:
    """Every op (bodies included) the op table cannot run."""
    return [op for op in model.graph.iter_all_ops() if builder_for(op) is None]


class GraphModule(nn.Module):
    """An IR model as a torch module. `forward(*inputs, **named_inputs)` returns a tuple of outputs.

    Args:
        model: the IR model; kept (not copied) so `write_back` can update its initializers.
        bn_mode: "train" runs BatchNormalization on batch statistics in training mode and updates the
            running statistics (synchronized across ranks under torch.distributed); "frozen" always
            uses the running statistics.
        learn_scales: quantization scales become parameters too (trained through the STE).
    """

    def __init__(self, model: Model, bn_mode: str = "train", learn_scales: bool = False):
        super().__init__()
        missing = unsupported_ops(model)
        if missing:
            raise UnsupportedOpError(unsupported_message(missing))
        self.model = model
        self.bn_mode = bn_mode
        self.learn_scales = learn_scales
        self.weights = nn.Module()  # parameters, keyed by sanitized initializer names
        self.state = nn.Module()  # buffers: frozen initializers and constants
        self.torch_names: dict[str, str] = {}  # initializer name -> qualified parameter/buffer name
        self.onnx_names: dict[str, str] = {}
        self.shadows: dict[str, Shadow] = {}
        self._values: dict[str, Value] = {}
        self._quant_consumers = _consumers_by_type(model.graph)
        self._register_state(model.graph, trainable=True)
        self.program = Program(model.graph, self)
        self.input_names = [v.name for v in self.program.input_values]
        self.output_names = [v.name for v in model.graph.outputs]

    # ---- building -----------------------------------------------------------------------
    def opset_for(self, op: Op) -> int:
        return self.model.opset

    def _register_state(self, graph: Graph, trainable: bool) -> None:
        for value in graph.initializers.values():
            if not graph.is_used(value):  # capture edges count as uses: body reads are kept
                continue
            role = self._role(graph, value) if trainable else "buffer"
            self._add(value, role)

    def _role(self, graph: Graph, value: Value) -> str:
        uses = graph.consumers(value)
        if not uses:
            return "buffer"  # read only inside a body (frozen) or a graph output
        if value.dtype not in dtypes.FLOAT_CODES:
            return "shadow" if self._shadow_for(graph, value, uses) else "buffer"
        if any(self._frozen_port(op, port) for op, port in uses):
            return "buffer"
        if value.const.shape == () and not (self.learn_scales and _all_scales(uses)):
            return "buffer"  # a formula constant (GELU's sqrt(2), an attention scale), not a weight
        if all(op.op_type in CONTROL_FLOW for op, _ in uses):
            return "buffer"  # read only by frozen regions: no gradient would ever reach it
        return "parameter"

    def _frozen_port(self, op: Op, port: int) -> bool:
        if op.domain not in ("", "ai.onnx") or port not in _FROZEN_PORTS.get(op.op_type, ()):
            return False
        return not (self.learn_scales and _SCALE_PORTS.get(op.op_type) == port)

    def _shadow_for(self, graph: Graph, value: Value, uses) -> bool:
        """An integer weight read only as DequantizeLinear's input 0, all with the same constant scale."""
        if not all(op.op_type == "DequantizeLinear" and port == 0 for op, port in uses):
            return False
        if value.dtype not in INT_RANGES or any(op.attr("block_size", 0) for op, _ in uses):
            return False
        consts = [_qparams(graph, op) for op, _ in uses]
        scale, zero_point, axis = consts[0]
        if scale is None or any(not _same_qparams(c, consts[0]) for c in consts):
            return False
        scale_value = uses[0][0].inputs[1]
        self.shadows[value.name] = Shadow(*INT_RANGES[value.dtype], scale, zero_point, axis, scale_value.name)
        return True

    def _add(self, value: Value, role: str) -> None:
        array = value.const.numpy()
        if role == "shadow":
            shadow = self.shadows[value.name]
            scale = torch.from_numpy(np.array(shadow.scale, np.float32))
            zero = None if shadow.zero_point is None else torch.from_numpy(shadow.zero_point.astype(np.float32))
            q = torch.from_numpy(array.astype(np.float32))
            tensor = (q - (per_axis(zero, q, shadow.axis) if zero is not None else 0)) * per_axis(scale, q, shadow.axis)
            self._store(value, nn.Parameter(tensor), self.weights)
        elif role == "parameter":
            self._store(value, nn.Parameter(to_torch(array, value.dtype)), self.weights)
        else:
            self._store(value, to_torch(array, value.dtype), self.state)

    def _store(self, value: Value, tensor: torch.Tensor, container: nn.Module) -> None:
        key = _sanitize(value.name, container)
        if isinstance(tensor, nn.Parameter):
            container.register_parameter(key, tensor)
        else:
            container.register_buffer(key, tensor)
        prefix = "weights" if container is self.weights else "state"
        self.torch_names[value.name] = f"{prefix}.{key}"
        self.onnx_names[f"{prefix}.{key}"] = value.name
        self._values[value.name] = value

    def state_entry(self, value: Value):
        """(table, key) where a registered initializer lives, or None when it is not registered."""
        qualified = self.torch_names.get(value.name)
        if qualified is None:
            return None
        prefix, key = qualified.split(".", 1)
        container = self.weights if prefix == "weights" else self.state
        return (container._parameters if prefix == "weights" else container._buffers), key

    def compile_body(self, graph: Graph) -> Program:
        self._register_state(graph, trainable=False)
        return Program(graph, self, sorted(graph.free_names()))

    def constant(self, name: str, tensor: torch.Tensor) -> Callable[[], torch.Tensor]:
        """Registers a Constant op's value as a (non-persistent) buffer so `.to(device)` moves it."""
        key = _sanitize(f"const_{name}", self.state)
        self.state.register_buffer(key, tensor, persistent=False)
        table = self.state._buffers
        return lambda: table[key]

    # ---- hooks the op builders use -------------------------------------------------------
    def is_state(self, value: Value | None) -> bool:
        return value is not None and value.name in self.torch_names

    def is_fake_quant(self, op: Op) -> bool:
        """A QuantizeLinear whose output only feeds DequantizeLinear ops keeps a float carrier."""
        out = op.outputs[0]
        readers = self._quant_consumers.get(out.name)
        return bool(readers) and all(t == "DequantizeLinear" for t in readers) and out not in op.graph.outputs

    def shadow_range(self, value: Value | None) -> tuple[int, int] | None:
        shadow = self.shadows.get(value.name) if value is not None else None
        return None if shadow is None else (shadow.low, shadow.high)

    def bn_training(self) -> bool:
        return self.training and self.bn_mode == "train"

    def batch_norm_train(self, x, scale, bias, running_mean, running_var, momentum: float, eps: float):
        from graphsurg.train import distributed

        if distributed.world_size() > 1:
            return distributed.sync_batch_norm(x, scale, bias, running_mean, running_var, momentum, eps)
        return F.batch_norm(x, running_mean, running_var, scale, bias, True, momentum, eps)

    # ---- running ------------------------------------------------------------------------
    def forward(self, *inputs: torch.Tensor, **named: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feeds = list(inputs) + [named[n] for n in self.input_names[len(inputs):] if n in named]
        if len(feeds) != len(self.input_names):
            raise BadInputError(f"the model takes inputs {self.input_names}; got {len(feeds)}")
        return tuple(self.program.run(feeds))

    def parameter_names(self) -> dict[str, str]:
        """Initializer name -> torch parameter name, for the trainable kind only."""
        return {self.onnx_names[f"weights.{k}"]: f"weights.{k}" for k in self.weights._parameters}

    def parameter(self, onnx_name: str) -> nn.Parameter:
        return self.weights._parameters[self.torch_names[onnx_name].split(".", 1)[1]]

    # ---- writing back -------------------------------------------------------------------
    def exported_array(self, onnx_name: str) -> np.ndarray:
        """The current value of an initializer as the IR stores it (shadows re-quantized)."""
        value = self._values[onnx_name]
        table, key = self.state_entry(value)
        tensor = table[key].detach().cpu()
        shadow = self.shadows.get(onnx_name)
        if shadow is not None:
            scale = per_axis(self._current_scale(shadow), tensor, shadow.axis)
            zero = 0.0 if shadow.zero_point is None else per_axis(
                torch.from_numpy(shadow.zero_point.astype(np.float32)), tensor, shadow.axis)
            tensor = torch.clamp(torch.round(tensor / scale) + zero, shadow.low, shadow.high)
        return to_numpy(tensor, value.dtype)

    def _current_scale(self, shadow: Shadow) -> torch.Tensor:
        scale_value = self._values.get(shadow.scale_name)
        if scale_value is not None and scale_value.name in self.torch_names:
            table, key = self.state_entry(scale_value)
            return table[key].detach().cpu().float()
        return torch.from_numpy(np.array(shadow.scale, np.float32))

    def write_back(self) -> list[str]:
        """Stores every registered main-graph initializer whose value changed into the IR; returns
        their names. Unchanged ones keep their (possibly lazy, memory-mapped) tensors."""
        changed = []
        for name, value in self._values.items():
            if value.graph is not self.model.graph:
                continue
            array = self.exported_array(name)
            if array.shape == value.const.shape and np.array_equal(array, value.const.numpy()):
                continue
            value.graph.set_const(value, array.reshape(value.const.shape))
            changed.append(name)
        return changed


def _sanitize(name: str, container: nn.Module) -> str:
    key = re.sub(r"\W", "_", name) or "_"
    key = f"_{key}" if key[0].isdigit() else key
    while key in container._parameters or key in container._buffers or hasattr(container, key):
        key += "_"
    return key


def _all_scales(uses) -> bool:
    return all(_SCALE_PORTS.get(op.op_type) == port for op, port in uses)


def _qparams(graph: Graph, op: Op) -> tuple:
    """(scale, zero point, axis) of a DequantizeLinear, constants or None."""
    zero_point = graph.const_value(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] is not None else None
    return graph.const_value(op.inputs[1]), zero_point, op.attr("axis", 1)


def _same_qparams(a: tuple, b: tuple) -> bool:
    (scale_a, zero_a, axis_a), (scale_b, zero_b, axis_b) = a, b
    if scale_a is None or scale_b is None or axis_a != axis_b or (zero_a is None) != (zero_b is None):
        return False
    return np.array_equal(scale_a, scale_b) and (zero_a is None or np.array_equal(zero_a, zero_b))


def _consumers_by_type(graph: Graph) -> dict[str, list[str]]:
    """Value name -> op types of its readers, over the whole model (bodies included)."""
    readers: dict[str, list[str]] = {}
    for op in graph.iter_all_ops():
        for v in op.inputs:
            if v is not None:
                readers.setdefault(v.name, []).append(op.op_type)
    return readers
