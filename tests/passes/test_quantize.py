"""quantize: the QDQ layout in small graphs, fusion by onnxruntime, refusals, bundled models."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphsurg import serde
from graphsurg.errors import ServiceUnavailable
from graphsurg.ir import Model
from graphsurg.pipeline import make_pass, run_passes
from graphsurg.services import DataSpec, build_context

MODELS = Path(__file__).resolve().parents[2] / "models"
RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- helpers


def build(nodes, inputs, outputs, inits, opset: int = 17) -> Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    return serde.load(proto.SerializeToString())


def tensor(name: str, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def quantize(model: Model, spec: str = "quantize", data: Path | None = None, **extra):
    ctx = build_context(DataSpec(str(data)) if data else None, **extra)
    return run_passes(model, [make_pass(spec)], ctx).results[0]


def save_data(tmp_path: Path, **arrays) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def session(model: Model, optimized: Path | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(serde.to_bytes(model), options, providers=["CPUExecutionProvider"])


def fused_ops(model: Model, tmp_path: Path) -> Counter:
    """Op types of the graph onnxruntime actually runs (after its QDQ fusions)."""
    path = tmp_path / "optimized.onnx"
    session(model, path)
    return Counter(node.op_type for node in onnx.load(path).graph.node)


def op_types(model: Model) -> Counter:
    return Counter(op.op_type for op in model.graph.ops)


def producer_type(model: Model, value) -> str | None:
    op = model.graph.producer(value)
    return op.op_type if op is not None else None


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ---------------------------------------------------------------- Conv layout


def conv_relu_conv() -> Model:
    w1 = RNG.normal(size=(8, 3, 3, 3)).astype(np.float32) * 0.3
    b1 = RNG.normal(size=8).astype(np.float32) * 0.1
    w2 = RNG.normal(size=(4, 8, 3, 3)).astype(np.float32) * 0.2
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    return build(nodes, [tensor("x", ["n", 3, 8, 8])], [tensor("y", ["n", 4, 8, 8])],
                 {"w1": w1, "b1": b1, "w2": w2})


def test_conv_layout_is_exactly_the_fusable_one(tmp_path):
    model = conv_relu_conv()
    x = RNG.normal(size=(32, 3, 8, 8)).astype(np.float32)
    reference = session(model).run(None, {"x": x})[0]
    result = quantize(model, data=save_data(tmp_path, x=x))
    graph = model.graph
    conv1, conv2 = graph.find_op("conv1"), graph.find_op("conv2")
    relu = graph.find_op("relu1")
    # activations: one Q/DQ on x, one after the ReLU (shared), one after conv2 feeding the output
    assert op_types(model) == Counter(Conv=2, Relu=1, QuantizeLinear=3, DequantizeLinear=6)
    assert producer_type(model, conv1.inputs[0]) == "DequantizeLinear"
    assert relu.inputs[0] is conv1.outputs[0]  # QLinearConv absorbs the ReLU before the Q
    (q_op, _), = graph.consumers(relu.outputs[0])
    assert q_op.op_type == "QuantizeLinear"
    assert graph.producer(conv2.inputs[0]).inputs[0] is q_op.outputs[0]
    assert graph.outputs[0].name == "y" and producer_type(model, graph.outputs[0]) == "DequantizeLinear"
    # weights: int8 per output channel, float copies gone; bias: int32 with scale x_scale * w_scale
    w_dq = graph.producer(conv1.inputs[1])
    assert w_dq.attr("axis") == 0 and w_dq.inputs[0].const.numpy().dtype == np.int8
    assert w_dq.inputs[1].const.shape == (8,)
    b_dq = graph.producer(conv1.inputs[2])
    x_scale = graph.producer(graph.producer(conv1.inputs[0]).inputs[0]).inputs[1].const.numpy()
    assert b_dq.inputs[0].const.numpy().dtype == np.int32
    np.testing.assert_allclose(b_dq.inputs[1].const.numpy(), x_scale * w_dq.inputs[1].const.numpy(), rtol=1e-6)
    assert not {"w1", "b1", "w2"} & set(graph.initializers)
    assert result.changes["int32_biases"] == ["b1"] and result.changes["error_bound_holds"]
    # onnxruntime runs both convolutions as QLinearConv, and the result follows the float model
    fused = fused_ops(model, tmp_path)
    assert fused["QLinearConv"] == 2 and "Conv" not in fused and "Relu" not in fused
    assert relative_error(session(model).run(None, {"x": x})[0], reference) < 0.05


def test_conv_feeding_an_add_gets_its_output_quantized_for_every_reader(tmp_path):
    w = RNG.normal(size=(4, 4, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Add", ["c", "x"], ["y"], name="add")]
    model = build(nodes, [tensor("x", ["n", 4, 5, 5])], [tensor("y", ["n", 4, 5, 5])], {"w": w})
    x = RNG.normal(size=(16, 4, 5, 5)).astype(np.float32)
    quantize(model, data=save_data(tmp_path, x=x))
    add = model.graph.find_op("add")
    assert producer_type(model, add.inputs[0]) == "DequantizeLinear"  # the Conv output, quantized after the Conv
    assert add.inputs[1].name == "x"  # the residual path stays float
    assert fused_ops(model, tmp_path)["QLinearConv"] == 1


# ---------------------------------------------------------------- MatMul / Gemm / Gather


def test_one_shared_pair_per_tensor_and_float_readers_keep_the_float_tensor(tmp_path):
    w1, w2 = (RNG.normal(size=(16, 8)).astype(np.float32) for _ in range(2))
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"], name="mm1"),
             helper.make_node("MatMul", ["x", "w2"], ["b"], name="mm2"),
             helper.make_node("Add", ["a", "b"], ["s"], name="sum"),
             helper.make_node("ReduceSum", ["x", "axes"], ["t"], name="float_reader", keepdims=1),
             helper.make_node("Add", ["s", "t"], ["y"], name="out")]
    # 3-D activations: on 2-D ones onnxruntime would fuse MatMul + Add into a float Gemm first
    model = build(nodes, [tensor("x", ["n", 2, 16])], [tensor("y", ["n", 2, 8])],
                  {"w1": w1, "w2": w2, "axes": np.array([-1])}, opset=13)
    x = RNG.normal(size=(64, 2, 16)).astype(np.float32)
    reference = session(model).run(None, {"x": x})[0]
    quantize(model, data=save_data(tmp_path, x=x))
    graph = model.graph
    mm1, mm2 = graph.find_op("mm1"), graph.find_op("mm2")
    assert op_types(model)["QuantizeLinear"] == 1
    assert mm1.inputs[0] is mm2.inputs[0] and producer_type(model, mm1.inputs[0]) == "DequantizeLinear"
    assert graph.find_op("float_reader").inputs[0].name == "x"
    for op in (mm1, mm2):  # per output column of the [K, N] weight
        assert graph.producer(op.inputs[1]).attr("axis") == 1
    assert fused_ops(model, tmp_path)["MatMulIntegerToFloat"] == 2
    assert relative_error(session(model).run(None, {"x": x})[0], reference) < 0.02


def test_gemm_with_transposed_weight_and_bias_becomes_qgemm(tmp_path):
    w = RNG.normal(size=(6, 10)).astype(np.float32)
    c = RNG.normal(size=(1, 6)).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="gemm", transB=1, beta=0.5)
    model = build([node], [tensor("x", ["n", 10])], [tensor("y", ["n", 6])], {"w": w, "c": c})
    x = RNG.normal(size=(64, 10)).astype(np.float32)
    reference = session(model).run(None, {"x": x})[0]
    result = quantize(model, data=save_data(tmp_path, x=x))
    gemm = model.graph.find_op("gemm")
    assert model.graph.producer(gemm.inputs[1]).attr("axis") == 0  # transB: rows are output channels
    bias = model.graph.producer(gemm.inputs[2]).inputs[0].const.numpy()
    assert bias.dtype == np.int32 and bias.shape == (6,) and gemm.attr("beta", 1.0) == 1.0
    assert result.changes["quantized_ops"] == ["gemm"]
    assert fused_ops(model, tmp_path)["QGemm"] == 1
    assert relative_error(session(model).run(None, {"x": x})[0], reference) < 0.02


def test_zero_points_are_written_only_where_nonzero_or_onnxruntime_needs_them(tmp_path):
    w = RNG.normal(size=(8, 8)).astype(np.float32)
    b = RNG.normal(size=8).astype(np.float32)
    conv_w = RNG.normal(size=(8, 8, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g"], name="gemm", transB=1),
             helper.make_node("Relu", ["g"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "shape"], ["r4"], name="to_nchw"),
             helper.make_node("Conv", ["r4", "conv_w", "b"], ["y"], name="conv")]
    model = build(nodes, [tensor("x", ["n", 8])], [tensor("y", ["n", 8, 1, 1])],
                  {"w": w, "b": b, "conv_w": conv_w, "shape": np.array([-1, 8, 1, 1])})
    x = np.abs(RNG.normal(size=(64, 8))).astype(np.float32)  # >= 0: x and the ReLU output share zero point 0
    quantize(model, data=save_data(tmp_path, x=x))
    graph = model.graph
    gemm, conv = graph.find_op("gemm"), graph.find_op("conv")
    # symmetric Conv weight and int32 biases: DequantizeLinear's default zero point (0), no input
    for value in (conv.inputs[1], conv.inputs[2], gemm.inputs[2]):
        assert len(graph.producer(value).inputs) == 2
    # onnxruntime forms QGemm only from a weight DequantizeLinear with an explicit zero point
    gemm_w = graph.producer(gemm.inputs[1])
    assert len(gemm_w.inputs) == 3 and not gemm_w.inputs[2].const.numpy().any()
    # activations keep theirs, one initializer per distinct zero point
    pairs = [op for op in graph.ops if op.op_type == "QuantizeLinear"]
    zero_points = {op.inputs[2] for op in pairs}
    assert len(pairs) == 3 and len(zero_points) == len({int(z.const.numpy()) for z in zero_points}) < 3
    fused = fused_ops(model, tmp_path)
    assert fused["QGemm"] == 1 and fused["QLinearConv"] == 1


def test_embedding_table_is_gathered_as_int8_then_dequantized(tmp_path):
    table = RNG.normal(size=(50, 12)).astype(np.float32)
    w = RNG.normal(size=(12, 4)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
             helper.make_node("MatMul", ["e", "w"], ["y"], name="proj")]
    model = build(nodes, [tensor("ids", ["n", 7], TensorProto.INT64)], [tensor("y", ["n", 7, 4])],
                  {"table": table, "w": w})
    ids = RNG.integers(0, 50, size=(32, 7)).astype(np.int64)
    reference = session(model).run(None, {"ids": ids})[0]
    result = quantize(model, data=save_data(tmp_path, ids=ids))
    graph = model.graph
    gather = next(op for op in graph.ops if op.op_type == "Gather")
    assert gather.inputs[0].const.numpy().dtype == np.int8 and "table" not in graph.initializers
    (dq, _), = graph.consumers(gather.outputs[0])
    assert dq.op_type == "DequantizeLinear" and dq.attr("axis") == -1 and dq.inputs[1].const.shape == (12,)
    assert dq.outputs[0].name == "e"  # the gathered rows keep their name
    assert "table" in result.changes["weights"]
    assert relative_error(session(model).run(None, {"ids": ids})[0], reference) < 0.03


def attention_scores() -> Model:
    wq, wk = (RNG.normal(size=(8, 8)).astype(np.float32) for _ in range(2))
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"], name="q"),
             helper.make_node("MatMul", ["x", "wk"], ["k"], name="k"),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["y"], name="scores")]
    return build(nodes, [tensor("x", ["n", 5, 8])], [tensor("y", ["n", 5, 5])], {"wq": wq, "wk": wk})


def test_activation_by_activation_matmul_stays_float_unless_asked(tmp_path):
    x = RNG.normal(size=(16, 5, 8)).astype(np.float32)
    data = save_data(tmp_path, x=x)
    model = attention_scores()
    result = quantize(model, data=data)
    assert result.changes["quantized_ops"] == ["q", "k"]
    assert any(r["target"] == "scores" and "activation x activation" in r["reason"] for r in result.refused)
    scores = model.graph.find_op("scores")
    assert producer_type(model, scores.inputs[0]) == "MatMul"

    asked = attention_scores()
    result = quantize(asked, "quantize{act_matmul=true}", data=data)
    scores = asked.graph.find_op("scores")
    assert "scores" in result.changes["quantized_ops"]
    assert [producer_type(asked, v) for v in scores.inputs] == ["DequantizeLinear", "DequantizeLinear"]
    session(asked).run(None, {"x": x})


# ---------------------------------------------------------------- modes, refusals, opsets


def test_weights_only_needs_no_data():
    model = conv_relu_conv()
    x = RNG.normal(size=(4, 3, 8, 8)).astype(np.float32)
    reference = session(model).run(None, {"x": x})[0]
    result = quantize(model, "quantize{activations=none}")
    types = op_types(model)
    assert "QuantizeLinear" not in types and types["DequantizeLinear"] == 2
    assert not {"w1", "w2"} & set(model.graph.initializers)
    assert "b1" in model.graph.initializers  # without an activation scale the bias stays float
    assert result.changes["error_bound_holds"]
    assert relative_error(session(model).run(None, {"x": x})[0], reference) < 0.02


def test_activations_without_data_is_an_error_users_can_act_on():
    with pytest.raises(ServiceUnavailable, match="--data"):
        quantize(conv_relu_conv())


def test_ops_the_pass_does_not_know_stay_float_and_the_rest_is_quantized(tmp_path):
    w = RNG.normal(size=(8, 8)).astype(np.float32)
    e = RNG.normal(size=(8, 6)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="known"),
             helper.make_node("Einsum", ["a", "e"], ["b"], name="einsum", equation="ni,ij->nj"),
             helper.make_node("Hardmax", ["b"], ["h"], name="hardmax"),
             helper.make_node("CumSum", ["b", "axis"], ["c"], name="cumsum"),
             helper.make_node("LpNormalization", ["c"], ["y"], name="lpnorm")]
    model = build(nodes, [tensor("x", ["n", 8])], [tensor("y", ["n", 6]), tensor("h", ["n", 6])],
                  {"w": w, "e": e, "axis": np.array(1, np.int64)})
    x = RNG.normal(size=(32, 8)).astype(np.float32)
    reference = session(model).run(None, {"x": x})
    result = quantize(model, "quantize{ops=MatMul,Einsum,Hardmax}", data=save_data(tmp_path, x=x))
    assert result.changes["quantized_ops"] == ["known"]
    reasons = {r["target"]: r["reason"] for r in result.refused}
    assert "no integer-kernel QDQ layout" in reasons["Einsum"] and "Hardmax" in reasons
    assert op_types(model)["Einsum"] == 1 and producer_type(model, model.graph.find_op("einsum").inputs[1]) is None
    y, h = session(model).run(None, {"x": x})
    assert relative_error(y, reference[0]) < 0.05
    assert (h.argmax(1) == reference[1].argmax(1)).mean() >= 0.9


def test_excluded_ops_and_non_initializer_weights_are_refused_with_reasons(tmp_path):
    w = RNG.normal(size=(8, 8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="first"),
             helper.make_node("MatMul", ["a", "w"], ["b"], name="second"),
             helper.make_node("Transpose", ["w"], ["wt"], name="transpose"),
             helper.make_node("MatMul", ["b", "wt"], ["y"], name="computed_weight")]
    model = build(nodes, [tensor("x", ["n", 8])], [tensor("y", ["n", 8])], {"w": w})
    result = quantize(model, "quantize{exclude=second}", data=save_data(tmp_path, x=RNG.normal(size=(8, 8))
                                                                         .astype(np.float32)))
    reasons = {r["target"]: r["reason"] for r in result.refused}
    assert result.changes["quantized_ops"] == ["first"]
    assert "exclude" in reasons["second"]
    assert "fold-constants" in reasons["computed_weight"]
    assert "w" in model.graph.initializers  # still read by the float MatMul
    assert model.graph.find_op("second").inputs[1].name == "w"


@pytest.mark.parametrize(("extra", "raised"), [([], True), (["Softmax"], False)])
def test_opset_is_raised_for_per_channel_scales_only_when_safe(tmp_path, extra, raised):
    w = RNG.normal(size=(4, 2, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"])]
    nodes += [helper.make_node(op, ["r"], ["y"]) for op in extra] or [helper.make_node("Identity", ["r"], ["y"])]
    model = build(nodes, [tensor("x", ["n", 2, 6, 6])], [tensor("y", ["n", 4, 4, 4])], {"w": w}, opset=11)
    x = RNG.normal(size=(8, 2, 6, 6)).astype(np.float32)
    reference = session(model).run(None, {"x": x})[0]
    result = quantize(model, data=save_data(tmp_path, x=x))
    w_dq = model.graph.producer(model.graph.find_op("conv").inputs[1])
    assert model.opset == (13 if raised else 11)
    assert result.changes["per_channel"] is raised
    assert ("axis" in w_dq.attrs) is raised
    assert ("raised" if raised else "per-tensor") in result.changes["opset"]
    assert relative_error(session(model).run(None, {"x": x})[0], reference) < 0.05


# ---------------------------------------------------------------- SmoothQuant


def layernorm_matmul(outliers: float) -> Model:
    gamma = np.ones(16, np.float32)
    gamma[[3, 11]] = outliers  # two outlier channels, as trained transformers grow them
    w = np.random.default_rng(1).normal(size=(16, 16)).astype(np.float32) * 0.3
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], name="ln", axis=-1),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="proj")]
    return build(nodes, [tensor("x", ["n", 16])], [tensor("y", ["n", 16])],
                 {"gamma": gamma, "beta": np.zeros(16, np.float32), "w": w})


def test_smoothquant_moves_outliers_into_the_weights_and_folds_into_the_layernorm(tmp_path):
    x = RNG.normal(size=(256, 16)).astype(np.float32)
    data = save_data(tmp_path, x=x)
    reference = session(layernorm_matmul(60.0)).run(None, {"x": x})[0]
    plain, smoothed = layernorm_matmul(60.0), layernorm_matmul(60.0)
    quantize(plain, data=data)
    result = quantize(smoothed, "quantize{smooth=0.5}", data=data)
    record = result.changes["smoothquant"]
    assert [entry["tensor"] for entry in record["smoothed"]] == ["h"]
    assert record["smoothed"][0]["folded_into"] == "ln"
    gamma = smoothed.graph.find_op("ln").inputs[1].const.numpy()
    assert gamma[3] < 60.0 / 2  # the outlier channel was divided down
    error_plain = relative_error(session(plain).run(None, {"x": x})[0], reference)
    error_smoothed = relative_error(session(smoothed).run(None, {"x": x})[0], reference)
    assert error_smoothed < error_plain / 2


# ---------------------------------------------------------------- bundled models


# the int8 files' size against the float ones (0.349, 0.487 and 0.593 before the compact writing;
# the int8 weights' readable names cost 0.001-0.006 of it)
@pytest.mark.parametrize(("name", "max_ratio"), [("digits_mlp", 0.305), ("digits_cnn", 0.325), ("digits_vit", 0.475)])
def test_bundled_models_quantize_fuse_and_keep_their_predictions(name, max_ratio, tmp_path):
    model = serde.load(MODELS / f"{name}.onnx")
    names = {v.name for v in model.graph._values.values()} | {op.name for op in model.graph.ops}
    test = np.load(MODELS / "digits_test.npz")["input"]
    reference = session(model).run(None, {"input": test})[0]
    result = quantize(model, data=MODELS / "digits_val.npz")
    assert result.changes["error_bound_holds"]
    assert all(w["max_error_over_half_scale"] <= 1.0 + 1e-6 for w in result.changes["weights"].values())
    if name == "digits_cnn":
        assert len(result.changes["batchnorms_folded"]) == 4
    out = session(model).run(None, {"input": test})[0]
    assert (out.argmax(1) == reference.argmax(1)).mean() >= 0.98
    fused = fused_ops(model, tmp_path)
    assert not {"Conv", "Gemm"} & set(fused)  # every Conv and Gemm runs as an integer kernel
    assert len(serde.to_bytes(model)) <= max_ratio * (MODELS / f"{name}.onnx").stat().st_size
    inserted = [op for op in model.graph.ops if op.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert all(op.name == "" for op in inserted)
    int8 = set(result.touched)
    assert all(name.endswith("_int8") for name in int8)
    assert all(len(v.name) <= 4 for op in inserted for v in (*op.inputs, *op.outputs)
               if v is not None and v.name not in names and v.name not in int8)


def test_two_d_matmul_with_bias_becomes_qgemm(tmp_path):
    w = RNG.normal(size=(16, 8)).astype(np.float32)
    b = RNG.normal(size=8).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="mm"),
             helper.make_node("Add", ["a", "b"], ["y"], name="bias")]
    model = build(nodes, [tensor("x", ["n", 16])], [tensor("y", ["n", 8])], {"w": w, "b": b})
    x = RNG.normal(size=(64, 16)).astype(np.float32)
    reference = session(model).run(None, {"x": x})[0]
    result = quantize(model, data=save_data(tmp_path, x=x))
    assert result.changes["matmul_add_as_gemm"] == ["mm"] and result.changes["quantized_ops"] == ["mm"]
    assert fused_ops(model, tmp_path) == Counter(QuantizeLinear=1, QGemm=1)
    assert relative_error(session(model).run(None, {"x": x})[0], reference) < 0.02


def test_mse_weight_clipping_records_what_it_clips_and_keeps_the_bound(tmp_path):
    model = conv_relu_conv()
    x = RNG.normal(size=(16, 3, 8, 8)).astype(np.float32)
    result = quantize(model, "quantize{weight_clipping=mse}", data=save_data(tmp_path, x=x))
    records = result.changes["weights"]
    assert set(records) == {"w1", "w2"} and result.changes["error_bound_holds"]
    assert all(r["max_error_over_half_scale"] <= 1.0 + 1e-6 and r["clipped"] >= 0 for r in records.values())


def residual_layernorm(pre_ln: bool) -> Model:
    """x + MatMul(x) -> LayerNormalization; with pre_ln the sum also feeds the output (residual path)."""
    w = np.random.default_rng(4).normal(size=(16, 16)).astype(np.float32) * 0.2
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="proj"),
             helper.make_node("Add", ["x", "m"], ["s"], name="residual"),
             helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["n"], name="ln", axis=-1)]
    outputs = [tensor("n", ["b", 4, 16])]
    if pre_ln:
        nodes.append(helper.make_node("Add", ["s", "n"], ["y"], name="next_residual"))
        outputs = [tensor("y", ["b", 4, 16])]
    return build(nodes, [tensor("x", ["b", 4, 16])], outputs,
                 {"w": w, "gamma": np.ones(16, np.float32), "beta": np.zeros(16, np.float32)})


def test_layernorm_after_a_residual_add_gets_its_input_quantized_so_it_is_not_fused(tmp_path):
    x = RNG.normal(size=(32, 4, 16)).astype(np.float32)
    data = save_data(tmp_path, x=x)
    post, pre = residual_layernorm(False), residual_layernorm(True)
    assert fused_ops(post, tmp_path)["SkipLayerNormalization"] == 1  # what onnxruntime does to the float model
    reference = session(post).run(None, {"x": x})[0]
    result = quantize(post, data=data)
    assert result.changes["quantized_ops"] == ["proj", "ln"]
    assert producer_type(post, post.graph.find_op("ln").inputs[0]) == "DequantizeLinear"
    assert fused_ops(post, tmp_path)["SkipLayerNormalization"] == 0
    assert relative_error(session(post).run(None, {"x": x})[0], reference) < 0.02

    result = quantize(pre, data=data)
    assert result.changes["quantized_ops"] == ["proj"]
    assert any(r["target"] == "ln" and "read by it alone" in r["reason"] for r in result.refused)
    assert pre.graph.find_op("ln").inputs[0].name == "s"


def test_gathers_that_are_not_embedding_lookups_are_neither_quantized_nor_reported(tmp_path):
    w = RNG.normal(size=(8, 8)).astype(np.float32)
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "zero"], ["batch"], name="shape_gather", axis=0),
             helper.make_node("Gather", ["x", "idx"], ["cols"], name="activation_gather", axis=1),
             helper.make_node("MatMul", ["cols", "w"], ["y"], name="mm")]
    model = build(nodes, [tensor("x", ["n", 8])], [tensor("y", ["n", 8]), tensor("batch", [], TensorProto.INT64)],
                  {"w": w, "zero": np.array(0, np.int64), "idx": np.arange(8, dtype=np.int64)})
    result = quantize(model, data=save_data(tmp_path, x=RNG.normal(size=(8, 8)).astype(np.float32)))
    assert result.changes["quantized_ops"] == ["mm"] and result.refused == []
