"""Function-preserving rewrites the quantize pass runs first, so that onnxruntime can fuse the QDQ
layout into integer kernels: BatchNormalization folded into the Conv before it (a Conv followed by
a float BatchNormalization cannot become QLinearConv), Gemm's beta and bias shape normalized (QGemm
takes an int32 bias of shape [N] with beta = 1), and the opset raised to 13 for per-channel
QuantizeLinear/DequantizeLinear where no op in the model changed meaning between the versions.
"""

from __future__ import annotations

import numpy as np
from graphsurg.passes._quant_plan import weight_array

from graphsurg.ir import Graph, Model, Op

# Ops whose schema (inputs, attributes, semantics) is the same from opset 10 through 13, so raising
# the opset import to 13 cannot change what the model computes.
_STABLE_10_TO_13 = frozenset({
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh", "AveragePool",
    "BatchNormalization", "Cast", "Ceil", "Concat", "Constant", "ConstantOfShape", "Conv", "ConvTranspose",
    "Cos", "Cosh", "DequantizeLinear", "Div", "Elu", "Equal", "Erf", "Exp", "Expand", "Flatten",
    "Floor", "Gather", "Gemm", "GlobalAveragePool", "GlobalMaxPool", "Greater", "HardSigmoid", "Identity",
    "InstanceNormalization", "LRN", "LeakyRelu", "Less", "Log", "MatMul", "MatMulInteger", "Max", "MaxPool",
    "Mean", "Min", "Mul", "Neg", "Not", "OneHot", "Or", "PRelu", "Pow", "QuantizeLinear", "Reciprocal", "ReduceL1",
    "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd",
    "ReduceSumSquare", "Relu", "Reshape", "Selu", "Shape", "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Softplus",
    "Slice", "Softsign", "Sqrt", "Sub", "Sum", "Tan", "Tanh", "Tile", "TopK", "Transpose", "Where", "Xor",
})
PER_CHANNEL_OPSET = 13
QDQ_OPSET = 10


def ensure_opset(model: Model, per_channel: bool) -> tuple[bool, str | None]:
    """Makes the opset fit the QDQ layout. Returns (per_channel still possible, note for the record).

    Per-channel QuantizeLinear/DequantizeLinear (the `axis` attribute) needs opset 13. A lower
    opset is raised only when every op in the model has the same meaning at 13; otherwise weights
    fall back to per-tensor scales (opset 10 has QuantizeLinear without axis).
    """
    opset = model.opset
    if opset < QDQ_OPSET:
        return False, (f"opset {opset} has no QuantizeLinear/DequantizeLinear (needs >= {QDQ_OPSET}); "
                       f"run convert-opset{{version={PER_CHANNEL_OPSET}}} first")
    if not per_channel or opset >= PER_CHANNEL_OPSET:
        return per_channel, None
    unstable = sorted({op.op_type for op in model.graph.iter_all_ops()
                       if op.domain in ("", "ai.onnx") and op.op_type not in _STABLE_10_TO_13})
    if unstable:
        return False, (f"opset {opset} < {PER_CHANNEL_OPSET} and {', '.join(unstable[:5])} changed meaning by "
                       f"opset {PER_CHANNEL_OPSET}: weights use per-tensor scales")
    key = "ai.onnx" if "ai.onnx" in model.opset_imports and "" not in model.opset_imports else ""
    model.opset_imports[key] = PER_CHANNEL_OPSET
    return True, f"opset raised from {opset} to {PER_CHANNEL_OPSET} for per-channel scales"


def fold_batchnorms(graph: Graph) -> list[str]:
    """Folds inference-mode BatchNormalization into the Conv that feeds only it; returns the BN labels."""
    folded = []
    for op in graph.topological_order():
        conv = _foldable_conv(graph, op)
        if conv is None:
            continue
        _fold(graph, conv, op)
        folded.append(op.label)
    return folded


def _foldable_conv(graph: Graph, bn: Op) -> Op | None:
    if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx") or len(bn.inputs) != 5:
        return None
    if sum(v is not None for v in bn.outputs) != 1 or bn.attr("training_mode", 0):
        return None
    conv = graph.producer(bn.inputs[0])
    if conv is None or conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx"):
        return None
    if len(graph.consumers(bn.inputs[0])) != 1 or bn.inputs[0] in graph.outputs:
        return None
    params = [weight_array(graph, v) for v in (*bn.inputs[1:], conv.inputs[1])]
    bias = conv.inputs[2] if len(conv.inputs) > 2 else None
    if any(p is None for p in params) or (bias is not None and weight_array(graph, bias) is None):
        return None
    return conv if params[-1].dtype == np.float32 else None


def _fold(graph: Graph, conv: Op, bn: Op) -> None:
    gamma, beta, mean, var = (weight_array(graph, v).astype(np.float64) for v in bn.inputs[1:])
    eps = float(bn.attr("epsilon", 1e-5))
    w = weight_array(graph, conv.inputs[1]).astype(np.float64)
    bias_value = conv.inputs[2] if len(conv.inputs) > 2 else None
    b = weight_array(graph, bias_value).astype(np.float64) if bias_value is not None else np.zeros(w.shape[0])
    factor = gamma / np.sqrt(var + eps)
    new_w = w * factor.reshape(-1, *([1] * (w.ndim - 1)))
    new_b = (b - mean) * factor + beta
    w_init = graph.add_initializer(f"{conv.inputs[1].name}_bnfolded", new_w.astype(np.float32))
    b_init = graph.add_initializer(f"{bn.outputs[0].name}_bias", new_b.astype(np.float32))
    old_w = conv.inputs[1]
    graph.set_inputs(conv, [conv.inputs[0], w_init, b_init])
    out = bn.outputs[0]
    conv_out = conv.outputs[0]
    graph.replace_all_uses(out, conv_out)
    graph.remove_op(bn)
    if conv_out in graph.outputs:
        graph.rename_value(conv_out, out.name)
    for value in (old_w, bias_value, *bn.inputs[1:]):
        if value is not None and value.name in graph.initializers and not graph.is_used(value):
            graph.remove_value(value)


def normalize_gemm(graph: Graph, op: Op) -> str | None:
    """Makes a Gemm's bias a [N] initializer with beta = 1 (what QGemm takes); a reason if it cannot."""
    if len(op.inputs) < 3 or op.inputs[2] is None:
        return None
    c = weight_array(graph, op.inputs[2])
    if c is None:
        return "its bias C is not an initializer"
    b = weight_array(graph, op.inputs[1])
    if b is None or b.ndim != 2:
        return None
    n = b.shape[0] if op.attr("transB", 0) else b.shape[1]
    beta = float(op.attr("beta", 1.0))
    if c.ndim == 1 and c.shape[0] == n and beta == 1.0:
        return None
    if c.size not in (1, n) or (c.ndim == 2 and c.shape[0] != 1):
        return f"its bias C of shape {list(c.shape)} is not per output column"
    new_c = (np.broadcast_to(c.reshape(-1), (n,)).astype(np.float64) * beta).astype(np.float32)
    old = op.inputs[2]
    graph.set_input(op, 2, graph.add_initializer(f"{old.name}_bias", new_c))
    graph.set_attrs(op, beta=None)
    if not graph.is_used(old):
        graph.remove_value(old)
    return None


def matmuls_to_gemm(graph: Graph) -> list[str]:
    """MatMul(x, W) + Add(bias) on 2-D x becomes Gemm(x, W, bias); returns the MatMul labels.

    onnxruntime fuses a 2-D MatMul and the Add after it into a float Gemm before its QDQ fusions
    run, which would leave the quantized MatMul dequantized; as a Gemm it becomes QGemm.
    """
    rewritten = []
    for op in graph.topological_order():
        add = _gemm_candidate(graph, op)
        if add is None:
            continue
        bias_port = 1 if add.inputs[0] is op.outputs[0] else 0
        bias = weight_array(graph, add.inputs[bias_port]).reshape(-1)
        bias_value = graph.add_initializer(f"{add.inputs[bias_port].name}_gemm", bias.astype(np.float32))
        out = add.outputs[0]
        gemm = graph.add_op("Gemm", [op.inputs[0], op.inputs[1], bias_value], 1)
        gemm.outputs[0].dtype, gemm.outputs[0].shape = out.dtype, out.shape
        name = out.name
        graph.replace_all_uses(out, gemm.outputs[0])
        graph.remove_op(add)
        graph.remove_op(op)
        gemm.name = op.name  # the MatMul's name, now free, so reports keep naming the op users know
        graph.rename_value(gemm.outputs[0], name)
        for value in (add.inputs[bias_port],):
            if value.name in graph.initializers and not graph.is_used(value):
                graph.remove_value(value)
        rewritten.append(op.label)
    return rewritten


def _gemm_candidate(graph: Graph, op: Op) -> Op | None:
    if op.op_type != "MatMul" or op.domain not in ("", "ai.onnx"):
        return None
    x, w = op.inputs
    weight = weight_array(graph, w)
    if weight is None or weight.ndim != 2 or weight.dtype != np.float32 or x.rank != 2 or x.is_const:
        return None
    out = op.outputs[0]
    users = graph.consumers(out)
    if len(users) != 1 or out in graph.outputs or users[0][0].op_type != "Add":
        return None
    add = users[0][0]
    bias = weight_array(graph, add.inputs[1 - users[0][1]])
    if bias is None or bias.dtype != np.float32 or bias.size != weight.shape[1] or bias.shape[-1] != weight.shape[1]:
        return None
    return add if add.domain in ("", "ai.onnx") and bias.ndim <= 2 else None
