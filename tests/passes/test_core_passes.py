"""cleanup and fold-constants: edge cases beyond the corpus and property tests."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphsurg import serde
from graphsurg.ir import dtypes
from graphsurg.pipeline import make_pass, run_passes


def model(nodes, inputs, outputs, initializers=(), value_info=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers), value_info=list(value_info))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_cleanup_identity_to_output_keeps_the_declared_output_type(run_ort, same_outputs):
    out = f32("y", ["batch", 3])
    out.doc_string = "the model's answer"
    proto = model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["y"])],
                  [f32("x", ["batch", 3])], [out])
    loaded = serde.load(proto)
    run_passes(loaded, [make_pass("cleanup")])
    assert [op.op_type for op in loaded.graph.ops] == ["Relu"]
    saved = onnx.load_from_string(serde.to_bytes(loaded))
    assert saved.graph.output[0] == out
    feeds = {"x": np.array([[-1.0, 0.5, 2.0]], np.float32)}
    assert same_outputs(run_ort(saved.SerializeToString(), feeds), run_ort(proto.SerializeToString(), feeds))


def test_cleanup_refuses_input_to_output_identity():
    proto = model([helper.make_node("Identity", ["x"], ["y"])], [f32("x", [2])], [f32("y", [2])])
    loaded = serde.load(proto)
    record = run_passes(loaded, [make_pass("cleanup")])
    assert [op.op_type for op in loaded.graph.ops] == ["Identity"]
    assert record.results[0].refused and "input" in record.results[0].refused[0]["reason"]


def test_fold_integer_division_truncates_exactly():
    big = np.array([2**62 + 1, -(2**62) - 3, 7, -7, 7, -7], np.int64)
    divisor = np.array([3, 3, 2, 2, -2, -2], np.int64)
    proto = model([helper.make_node("Div", ["a", "b"], ["q"]), helper.make_node("Add", ["x", "q"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.INT64, [6])],
                  [helper.make_tensor_value_info("y", TensorProto.INT64, [6])],
                  [numpy_helper.from_array(big, "a"), numpy_helper.from_array(divisor, "b")])
    loaded = serde.load(proto)
    run_passes(loaded, [make_pass("fold-constants")])
    folded = loaded.graph.initializers["q"].const.numpy()
    expected = [int(a / b) if abs(a) < 2**52 else (abs(a) // abs(b)) * (1 if (a < 0) == (b < 0) else -1)
                for a, b in zip(big.tolist(), divisor.tolist(), strict=True)]
    assert folded.tolist() == expected


def test_fold_keeps_a_bfloat16_constant_and_refuses_arithmetic_on_it(run_ort):
    bits = np.array([0x3F80, 0x4000], np.uint16)  # 1.0 and 2.0 in bfloat16
    value = helper.make_tensor("v", TensorProto.BFLOAT16, [2], bits.tobytes(), raw=True)
    proto = model(
        [helper.make_node("Constant", [], ["c"], value=value),
         helper.make_node("Cast", ["c"], ["c32"], to=TensorProto.FLOAT),
         helper.make_node("Cast", ["half"], ["h16"], to=TensorProto.BFLOAT16),
         helper.make_node("Cast", ["h16"], ["h32"], to=TensorProto.FLOAT),
         helper.make_node("Add", ["x", "c32"], ["s"]), helper.make_node("Add", ["s", "h32"], ["y"])],
        [f32("x", [2])], [f32("y", [2])], [numpy_helper.from_array(np.array([0.5, 0.25], np.float32), "half")])
    loaded = serde.load(proto)
    record = run_passes(loaded, [make_pass("fold-constants"), make_pass("cleanup")])
    graph = loaded.graph
    assert graph.initializers["c"].const.dtype == dtypes.BY_NAME["bfloat16"].code
    reasons = {r["target"]: r["reason"] for r in record.results[0].refused}
    assert any("raw bits" in reason for reason in reasons.values())
    feeds = {"x": np.zeros(2, np.float32)}
    np.testing.assert_array_equal(run_ort(serde.to_bytes(loaded), feeds)[0], run_ort(proto.SerializeToString(),
                                                                                       feeds)[0])


def test_fold_constant_of_shape_weights_drops_the_shapes_only_it_read():
    """The folded op's constant inputs go when nothing else reads them; one still read elsewhere,
    and one that is also a graph input (the interface), stay."""
    shapes = [numpy_helper.from_array(np.array(dims, np.int64), name)
              for name, dims in (("w_shape", [3, 4]), ("v_shape", [4, 4]), ("u_shape", [4, 4]))]
    fill = helper.make_tensor("v", TensorProto.FLOAT, [1], [0.25])
    proto = model(
        [helper.make_node("ConstantOfShape", ["w_shape"], ["w"], value=fill),
         helper.make_node("ConstantOfShape", ["v_shape"], ["v"], value=fill),
         helper.make_node("ConstantOfShape", ["u_shape"], ["u"], value=fill),
         helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node("MatMul", ["a", "v"], ["b"]),
         helper.make_node("MatMul", ["b", "u"], ["y"]), helper.make_node("Mul", ["v_shape", "k"], ["n"])],
        [f32("x", [2, 3]), helper.make_tensor_value_info("k", TensorProto.INT64, [2]),
         helper.make_tensor_value_info("u_shape", TensorProto.INT64, [2])],
        [f32("y", [2, 4]), helper.make_tensor_value_info("n", TensorProto.INT64, [2])], shapes)
    loaded = serde.load(proto)
    record = run_passes(loaded, [make_pass("fold-constants")])
    assert record.results[0].changes["initializers_removed"] == ["w_shape"]
    assert {"v_shape", "u_shape"} <= set(loaded.graph.initializers) and "w_shape" not in loaded.graph.initializers
    assert loaded.graph.producer(loaded.graph.value("u")).op_type == "ConstantOfShape"  # its shape can be fed
    np.testing.assert_array_equal(loaded.graph.initializers["w"].const.numpy(), np.full((3, 4), 0.25, np.float32))


@pytest.mark.parametrize("max_mb, folded", [(1024.0, 1), (0.001, 0)])
def test_fold_respects_max_mb(max_mb, folded):
    proto = model(
        [helper.make_node("ConstantOfShape", ["s"], ["w"]), helper.make_node("Add", ["x", "w"], ["y"])],
        [f32("x", [64, 64])], [f32("y", [64, 64])], [numpy_helper.from_array(np.array([64, 64], np.int64), "s")])
    loaded = serde.load(proto)
    record = run_passes(loaded, [make_pass(f"fold-constants{{max_mb={max_mb}}}")])
    assert sum(record.results[0].changes["folded"].values()) == folded
