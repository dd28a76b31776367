"""Lossless round trip: everything the IR does not change comes back exactly.

Each model is built with onnx.helper; the check is the strongest there is: the saved bytes equal
protobuf's deterministic serialization of the original (so every field, its order and its
presence survived), plus targeted assertions on what the IR exposes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphsurg import serde
from graphsurg.ir import ExternalTensor
from graphsurg.pipeline import make_pass, run_passes


def canonical(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString(deterministic=True)


def round_trip_bytes(model: onnx.ModelProto) -> bytes:
    return serde.to_bytes(serde.load(canonical(model)))


def rich_model() -> onnx.ModelProto:
    """IR version, opsets, producer, doc strings, metadata, a model-local function, value_info,
    a custom-domain op with attributes, a sparse initializer, typed-field and raw tensors."""
    function = helper.make_function(
        "local", "AddRelu", ["a", "b"], ["c"],
        [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Relu", ["s"], ["c"])],
        opset_imports=[helper.make_opsetid("", 17)], doc_string="a model-local function",
    )
    sparse_values = helper.make_tensor("sp", TensorProto.FLOAT, [2], [1.5, -2.0])
    sparse_indices = helper.make_tensor("sp_idx", TensorProto.INT64, [2], [1, 6])
    sparse = helper.make_sparse_tensor(sparse_values, sparse_indices, [2, 4])
    weight = numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(2, 4), "w")
    weight.doc_string = "a documented weight"
    typed = helper.make_tensor("bias", TensorProto.FLOAT, [4], [0.5, 0.25, 0.125, 1.0])  # float_data, not raw
    nodes = [
        helper.make_node("AddRelu", ["x", "w"], ["h"], domain="local", name="call", doc_string="calls the function"),
        helper.make_node("Custom", ["h"], ["k"], domain="com.example", name="custom", alpha=0.5, tag="t",
                         modes=[1, 2, 3]),
        helper.make_node("Add", ["h", "sp"], ["h2"], name="add_sparse"),
        helper.make_node("Add", ["h2", "bias"], ["y"], name="add_bias"),
    ]
    graph = helper.make_graph(
        nodes, "rich", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("k", TensorProto.FLOAT, None)],
        [weight, typed], doc_string="graph doc",
        value_info=[helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", 4], doc_string="hidden")],
        sparse_initializer=[sparse],
    )
    model = helper.make_model(
        graph, producer_name="unit-test", producer_version="9.9", doc_string="model doc", domain="org.test",
        model_version=42, ir_version=8, functions=[function],
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1),
                       helper.make_opsetid("com.example", 3)],
    )
    helper.set_model_props(model, {"author": "graphsurg", "license": "Apache-2.0"})
    return model


def test_rich_model_round_trips_byte_exact():
    model = rich_model()
    assert round_trip_bytes(model) == canonical(model)


def test_fields_the_ir_does_not_model_round_trip_byte_exact():
    """Node, graph and model fields kept as serialized blobs, an optional one present but empty."""
    model = rich_model()
    custom, add = model.graph.node[1], model.graph.node[2]
    custom.metadata_props.add(key="origin", value="unit-test")
    add.overload = ""  # present though empty: written again
    model.graph.metadata_props.add(key="graph-key", value="graph-value")
    annotation = model.graph.quantization_annotation.add(tensor_name="h")
    annotation.quant_parameter_tensor_names.add(key="SCALE_TENSOR", value="w")
    model.training_info.add().algorithm.name = "training"
    assert round_trip_bytes(model) == canonical(model)
    loaded = serde.load(canonical(model))
    assert loaded.graph.find_op("custom").rest_blob and loaded.graph.find_op("add_sparse").rest_blob
    assert loaded.graph.find_op("call").rest_blob is None  # nothing to keep: no blob


def test_rich_model_fields_in_the_ir():
    loaded = serde.load(canonical(rich_model()))
    assert loaded.ir_version == 8
    assert loaded.opset_imports == {"": 17, "local": 1, "com.example": 3}
    assert (loaded.producer_name, loaded.producer_version) == ("unit-test", "9.9")
    assert loaded.doc_string == "model doc" and loaded.graph.doc_string == "graph doc"
    assert loaded.metadata_props == {"author": "graphsurg", "license": "Apache-2.0"}
    assert len(loaded.functions) == 1
    custom = loaded.graph.find_op("custom")
    assert (custom.domain, custom.attr("alpha"), custom.attr("modes")) == ("com.example", 0.5, [1, 2, 3])
    assert loaded.graph.find_op("call").doc_string == "calls the function"
    assert loaded.graph.value("h").doc_string == "hidden"
    sparse = loaded.graph.initializers["sp"].const
    assert sparse.shape == (2, 4)
    dense = np.zeros(8, np.float32)
    dense[[1, 6]] = [1.5, -2.0]
    np.testing.assert_array_equal(sparse.numpy(), dense.reshape(2, 4))


def test_value_info_edits_still_lossless_elsewhere():
    """Changing one value's shape rewrites that value's type only."""
    loaded = serde.load(canonical(rich_model()))
    loaded.graph.value("h").shape = (3, 4)
    again = onnx.load_from_string(serde.to_bytes(loaded))
    (hidden,) = [vi for vi in again.graph.value_info if vi.name == "h"]
    assert [d.dim_value for d in hidden.type.tensor_type.shape.dim] == [3, 4]
    assert hidden.doc_string == "hidden"
    original = rich_model()
    again.graph.ClearField("value_info")
    original.graph.ClearField("value_info")
    assert canonical(again) == canonical(original)


def test_ir_version_3_lists_initializers_as_inputs():
    weight = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "v3",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])], [weight],
    )
    model = helper.make_model(graph, ir_version=3, opset_imports=[helper.make_opsetid("", 8)])
    assert round_trip_bytes(model) == canonical(model)
    loaded = serde.load(canonical(model))
    loaded.graph.add_initializer("extra", np.zeros(2, np.float32))  # a new initializer is listed too
    saved = onnx.load_from_string(serde.to_bytes(loaded))
    assert [i.name for i in saved.graph.input] == ["x", "w", "extra"]
    onnx.checker.check_model(saved, full_check=True)


def _listed_initializer_model(ir_version: int) -> onnx.ModelProto:
    """y = x @ w with w an initializer listed first among the graph inputs."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "listed",
        [helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 4]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4), "w")])
    return helper.make_model(graph, ir_version=ir_version, opset_imports=[helper.make_opsetid("", 8)])


def test_ir_version_3_initializers_are_constants_not_inputs():
    """Below IR version 4 the listing is a formality (onnxruntime offers no such input): the IR's
    inputs are what can be fed, passes treat the weights as weights, and the file keeps its order."""
    old = _listed_initializer_model(3)
    loaded = serde.load(canonical(old))
    assert [v.name for v in loaded.graph.inputs] == ["x"] and loaded.graph.is_fixed(loaded.graph.value("w"))
    assert round_trip_bytes(old) == canonical(old)
    result = run_passes(loaded, [make_pass("prune{sparsity=0.5}")]).results[0]
    assert result.modified and np.count_nonzero(loaded.graph.initializers["w"].const.numpy()) == 8
    saved = onnx.load_from_string(serde.to_bytes(loaded))
    assert [i.name for i in saved.graph.input] == ["w", "x"]


def test_from_ir_version_4_a_listed_initializer_is_a_default_input():
    new = _listed_initializer_model(4)
    loaded = serde.load(canonical(new))
    assert [v.name for v in loaded.graph.inputs] == ["w", "x"] and not loaded.graph.is_fixed(loaded.graph.value("w"))
    result = run_passes(loaded, [make_pass("prune{sparsity=0.5}")]).results[0]
    assert not result.modified  # a weight the caller may feed is not the model's to prune
    assert round_trip_bytes(new) == canonical(new)


def control_flow_model() -> onnx.ModelProto:
    """If and Loop whose bodies read outer values, one of them two levels up (nested If)."""
    f = TensorProto.FLOAT
    inner_then = helper.make_graph([helper.make_node("Mul", ["a", "a"], ["it"])], "inner_then", [],
                                   [helper.make_tensor_value_info("it", f, [3])])
    inner_else = helper.make_graph([helper.make_node("Neg", ["a"], ["ie"])], "inner_else", [],
                                   [helper.make_tensor_value_info("ie", f, [3])])
    then = helper.make_graph(
        [helper.make_node("If", ["c"], ["nested"], then_branch=inner_then, else_branch=inner_else),
         helper.make_node("Add", ["nested", "x"], ["t"])],
        "then", [], [helper.make_tensor_value_info("t", f, [3])])
    other = helper.make_graph([helper.make_node("Sub", ["a", "x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", f, [3])])
    body = helper.make_graph(
        [helper.make_node("Add", ["v", "a"], ["v2"]), helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v", f, [3])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v2", f, [3])])
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["a"], name="outer_a"),
        helper.make_node("If", ["c"], ["branch"], then_branch=then, else_branch=other, name="if"),
        helper.make_node("Loop", ["trip", "", "x"], ["looped"], body=body, name="loop"),
        helper.make_node("Add", ["branch", "looped"], ["y"], name="sum"),
    ]
    graph = helper.make_graph(
        nodes, "control",
        [helper.make_tensor_value_info("x", f, [3]), helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("trip", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", f, [3])],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _control_feeds(cond: bool) -> dict:
    return {"x": np.array([1.0, -2.0, 3.5], np.float32), "c": np.array(cond), "trip": np.array(3, np.int64)}


def test_if_loop_bodies_with_outer_references_round_trip(run_ort, same_outputs):
    model = control_flow_model()
    data = round_trip_bytes(model)
    assert data == canonical(model)
    for cond in (True, False):
        assert same_outputs(run_ort(data, _control_feeds(cond)), run_ort(canonical(model), _control_feeds(cond)))


def test_outer_values_read_only_by_bodies_are_live():
    """`a` is read only inside the If/Loop bodies: capture edges keep it (and its producer) alive
    through cleanup, and order it before the ops that read it."""
    loaded = serde.load(canonical(control_flow_model()))
    graph = loaded.graph
    a = graph.value("a")
    assert graph.consumers(a) == []  # no direct use ...
    assert graph.is_used(a)  # ... but captured
    record = run_passes(loaded, [make_pass("cleanup")])
    assert graph.value("a") is a and graph.producer(a) is graph.find_op("outer_a")
    order = graph.topological_order()
    assert order.index(graph.find_op("outer_a")) < order.index(graph.find_op("if"))
    assert record.results[0].changes["dead_ops_removed"] == {}


def test_cleanup_keeps_control_flow_outputs(run_ort, same_outputs):
    loaded = serde.load(canonical(control_flow_model()))
    run_passes(loaded, [make_pass("cleanup")])
    data = serde.to_bytes(loaded)
    for cond in (True, False):
        assert same_outputs(run_ort(data, _control_feeds(cond)), run_ort(canonical(control_flow_model()),
                                                                         _control_feeds(cond)))


def test_subgraph_edit_updates_captures():
    """Pointing a body op at another outer value moves the capture edge with it."""
    loaded = serde.load(canonical(control_flow_model()))
    graph = loaded.graph
    loop = graph.find_op("loop")
    (body,) = loop.subgraphs()
    add = body.producer(body.value("v2"))
    x, a = graph.value("x"), graph.value("a")
    body.set_input(add, 1, x)
    assert graph.nx.has_edge(x, loop, key="capture")
    assert not graph.nx.has_edge(a, loop, key="capture")
    graph.verify()


def external_model(tmp_path, location="weights.bin") -> tuple[onnx.ModelProto, dict]:
    rng = np.random.default_rng(0)
    arrays = {f"w{i}": rng.standard_normal((64, 64)).astype(np.float32) for i in range(3)}
    arrays["b"] = rng.standard_normal(64).astype(np.float16)
    nodes = [helper.make_node("MatMul", [f"x{i}", f"w{i}"], [f"x{i + 1}"]) for i in range(3)]
    nodes += [helper.make_node("Cast", ["b"], ["b32"], to=TensorProto.FLOAT), helper.make_node("Add", ["x3", "b32"],
                                                                                                ["y"])]
    graph = helper.make_graph(
        nodes, "ext", [helper.make_tensor_value_info("x0", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])],
        [numpy_helper.from_array(a, k) for k, a in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "src" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=location,
              size_threshold=0)
    return onnx.load(path, load_external_data=False), arrays


def test_external_data_round_trip_lossless(tmp_path):
    original, arrays = external_model(tmp_path)
    src = tmp_path / "src" / "model.onnx"
    loaded = serde.load(src)
    assert all(isinstance(loaded.graph.initializers[k].const, ExternalTensor) for k in arrays)
    for key, array in arrays.items():
        np.testing.assert_array_equal(loaded.graph.initializers[key].const.numpy(), array)
    out = tmp_path / "out" / "model.onnx"
    serde.save(loaded, out, location="weights.bin")
    assert out.read_bytes() == src.read_bytes(), "same tensors at the same offsets: the same bytes"
    assert (tmp_path / "out" / "weights.bin").read_bytes() == (tmp_path / "src" / "weights.bin").read_bytes()
