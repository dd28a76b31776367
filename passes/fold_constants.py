"""fold-constants: Constant ops and constant subgraphs become initializers."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from graphsurg.passes._excise_weights import remove_dead
from graphsurg.passes._numpy_ops import KERNELS
from graphsurg.passes._util import read_in_subgraph, replace_with_constant

from graphsurg.ir import Graph, Model, Op, Tensor, dtypes
from graphsurg.pipeline import Pass, PassContext, PassResult

# Folding these would undo quantization or randomness the user asked for.
_NEVER_FOLD = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "RandomNormal", "RandomUniform",
               "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
_BIT_VIEWS = {16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26}  # carried as raw integer views; never cast


@dataclass(frozen=True)
class FoldParams:
    max_mb: float = 1024.0  # leave a folded tensor as computation when it would be larger


class FoldConstants(Pass):
    """Evaluates ops whose inputs are all constant and stores their results as initializers.

    Handles: Constant (every value_* form), ConstantOfShape-generated weights, and chains of
    shape arithmetic (Shape of a constant, Gather, Concat, Reshape, Unsqueeze, Cast, Slice,
    elementwise math, ...; see passes/_numpy_ops.py). Folded values keep their names; initializers
    that only folded ops read are removed with them (inputs that can be fed stay: they are the interface).
    Refuses, with the reason recorded: ops without a NumPy kernel, quantize/dequantize and random
    ops (folding them would undo the model's intent), results larger than `max_mb`, values read
    by name inside an If/Loop/Scan body. Never folds through an initializer that is also a graph
    input (a default the caller may feed). Main graph only.
    """

    name = "fold-constants"
    Params = FoldParams

    def run(self, model: Model, ctx: PassContext, result: PassResult) -> None:
        graph, folded, orphans = model.graph, Counter(), []
        for op in graph.topological_order():
            if self._foldable(graph, op, result):
                outputs = self._evaluate(op, model.opset, result)
                if outputs is not None:
                    inputs = [v for v in op.inputs if v is not None]
                    self._replace(graph, op, outputs)
                    orphans += remove_dead(graph, inputs)  # onnxruntime warns about each unused initializer
                    folded[op.op_type] += 1
        result.modified = bool(folded)
        result.changes = {"folded": dict(folded), "initializers_removed": orphans}
        result.summary = f"folded {sum(folded.values())} ops into initializers"

    def _foldable(self, graph: Graph, op: Op, result: PassResult) -> bool:
        if op.domain not in ("", "ai.onnx") or op.subgraphs() or op.op_type in _NEVER_FOLD:
            return False
        if not all(v is None or graph.is_fixed(v) for v in op.inputs) or not op.outputs:
            return False
        if _bit_view_types(op):
            result.refuse(op.label, "bfloat16/float8/int4 data is carried as raw bits; NumPy cannot compute on it")
            return False
        if any(v is None for v in op.outputs) or len(op.outputs) != 1:
            result.refuse(op.label, "ops with several or optional outputs are not folded")
            return False
        if read_in_subgraph(graph, op.outputs[0]):
            result.refuse(op.label, "its output is read by name inside a subgraph")
            return False
        return True

    def _evaluate(self, op: Op, opset: int, result: PassResult) -> list[np.ndarray | Tensor] | None:
        if op.op_type == "Constant":
            constant = _constant_value(op)
            if constant is None:
                result.refuse(op.label, "Constant holds a sparse tensor; left as is")
                return None
            return [constant]
        kernel = KERNELS.get(op.op_type)
        if kernel is None:
            result.refuse(op.label, f"no constant folder for {op.op_type}")
            return None
        inputs = [v.const.numpy() if v is not None else None for v in op.inputs]
        outputs = kernel(op, inputs, opset)
        size = sum(np.asarray(o).nbytes for o in outputs)
        if size > self.params.max_mb * 2**20:
            result.refuse(op.label, f"folded result would be {size / 2**20:.0f} MB (max_mb={self.params.max_mb})")
            return None
        return outputs

    def _replace(self, graph: Graph, op: Op, outputs: list[np.ndarray | Tensor]) -> None:
        value = op.outputs[0]
        if isinstance(outputs[0], Tensor):  # a Constant's own tensor: its element type is kept exactly
            replace_with_constant(graph, op, value, outputs[0])
            return
        array = np.asarray(outputs[0])
        if value.dtype in dtypes.BY_CODE and dtypes.BY_CODE[value.dtype].numpy not in (None, array.dtype) \
                and value.dtype not in _BIT_VIEWS:
            array = array.astype(dtypes.numpy_dtype(value.dtype))  # numpy may widen; keep the declared type
        replace_with_constant(graph, op, value, array)


def _bit_view_types(op: Op) -> bool:
    """True when the op reads or makes a type NumPy only holds as raw bits (folding would compute
    on the bits, or give the result the wrong element type)."""
    if op.op_type == "Constant":
        return False  # its tensor is moved as it is
    if any(v is not None and v.const.dtype in _BIT_VIEWS for v in op.inputs):
        return True
    if op.op_type == "Cast" and op.attr("to") in _BIT_VIEWS:
        return True
    value = op.attrs.get("value")
    return value is not None and value.kind == "tensor" and value.value.dtype in _BIT_VIEWS


def _constant_value(op: Op) -> np.ndarray | Tensor | None:
    for key, attr in op.attrs.items():
        if key == "value" and attr.kind == "tensor":
            return attr.value
        if key == "value_float":
            return np.array(attr.value, np.float32)
        if key == "value_floats":
            return np.array(attr.value, np.float32)
        if key == "value_int":
            return np.array(attr.value, np.int64)
        if key == "value_ints":
            return np.array(attr.value, np.int64)
        if key == "value_string":
            return np.array(attr.value, object)
        if key == "value_strings":
            return np.array(attr.value, object)
    return None
