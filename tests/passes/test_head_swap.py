"""head-swap: a fresh N-way head on the bundled models and on small hand-built heads."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphsurg import serde
from graphsurg.cli import main
from graphsurg.errors import UsageError
from graphsurg.ir import Model

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
from _graft_support import BUNDLED, MODELS, apply, digits_inputs, load, run  # noqa: E402

HEADS = {"digits_mlp": "/net/net.5/Gemm", "digits_cnn": "/net/net.7/Gemm", "digits_vit": "/head/Gemm"}
FEATURES = {"digits_mlp": "/net/net.4/Relu_output_0", "digits_cnn": "/net/net.6/Flatten_output_0",
            "digits_vit": "/ReduceMean_output_0"}


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return digits_inputs()


def test_cnn_five_way_head_passes_the_full_checker(x):
    model = load("digits_cnn")
    (features_before,) = run(model, x, (FEATURES["digits_cnn"],))[1:]
    result = apply(model, "head-swap{classes=5}")  # runs onnx's full checker after the pass
    onnx.checker.check_model(serde.to_proto(model), full_check=True)
    logits, features = run(model, x, (FEATURES["digits_cnn"],))
    assert logits.shape == (len(x), 5) and model.graph.outputs[0].shape == ("batch", 5)
    assert result.new_parameters == ["net.7.weight", "net.7.bias"] == result.touched
    assert result.changes["classes"] == {"from": 10, "to": 5} and result.changes["outputs"] == {"logits": ["batch", 5]}
    weight, bias = (model.graph.initializers[n].const.numpy() for n in result.new_parameters)
    np.testing.assert_array_equal(features, features_before)  # the backbone computes what it did
    np.testing.assert_allclose(logits, features @ weight.T + bias, rtol=1e-5, atol=1e-5)
    assert not bias.any()


def test_only_the_head_parameters_change():
    original = load("digits_cnn")
    model = load("digits_cnn")
    result = apply(model, "head-swap{classes=5}")
    for name, value in model.graph.initializers.items():
        if name not in result.new_parameters:
            assert np.array_equal(value.const.numpy(), original.graph.initializers[name].const.numpy()), name


@pytest.mark.parametrize("name", BUNDLED)
def test_every_bundled_model_gets_a_new_head(name, x):
    model = load(name)
    result = apply(model, "head-swap{classes=3,init=zeros}")
    assert result.changes["head"] == HEADS[name]
    logits = run(model, x)[0]
    assert logits.shape == (len(x), 3) and not logits.any()  # zero weights and bias


def test_xavier_init_is_seeded_and_bounded():
    weights = []
    for seed in (0, 0, 7):
        model = load("digits_mlp")
        apply(model, f"head-swap{{classes=4,seed={seed}}}")
        weights.append(model.graph.initializers["net.5.weight"].const.numpy())
    assert weights[0].shape == (4, 64) and np.array_equal(weights[0], weights[1])
    assert not np.array_equal(weights[0], weights[2])
    limit = np.sqrt(6 / (64 + 4))
    assert np.abs(weights[0]).max() <= limit and weights[0].std() > limit / 3


def _with_softmax_output(name: str) -> Model:
    model = load(name)
    graph = model.graph
    graph.insert_after(graph.outputs[0], "Softmax", attrs={"axis": 1}, name="probs")  # output keeps "logits"
    return model


def test_softmax_is_kept_or_removed(x):
    kept = _with_softmax_output("digits_mlp")
    apply(kept, "head-swap{classes=5}")
    probs = run(kept, x)[0]
    assert probs.shape == (len(x), 5)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    dropped = _with_softmax_output("digits_mlp")
    result = apply(dropped, "head-swap{classes=5,keep_softmax=false}")
    assert result.changes["removed"] == ["probs"] and "Softmax" not in {op.op_type for op in dropped.graph.ops}
    assert result.changes["value_map"] == {"logits": None, "logits_1": "logits"}  # probabilities gone, logits back
    assert [v.name for v in dropped.graph.outputs] == ["logits"]
    assert dropped.graph.producer(dropped.graph.outputs[0]).name == "/net/net.5/Gemm"
    assert run(dropped, x)[0].shape == (len(x), 5)


def _with_second_head() -> Model:
    model = load("digits_mlp")
    graph = model.graph
    weight = graph.add_initializer("aux.weight", np.ones((2, 64), np.float32))
    features = graph.value("/net/net.4/Relu_output_0")
    aux = graph.add_op("Gemm", [features, weight], ["aux_logits"], {"transB": 1}, name="aux")
    aux.outputs[0].dtype, aux.outputs[0].shape = 1, ("batch", 2)
    graph.outputs.append(aux.outputs[0])
    return model


def test_several_heads_need_head(x):
    listed = r"several candidate heads: /net/net.5/Gemm \(-> logits\), aux \(-> aux_logits\)"
    with pytest.raises(UsageError, match=listed):
        apply(_with_second_head(), "head-swap{classes=5}")
    model = _with_second_head()
    aux_before = run(model, x)[1]
    apply(model, "head-swap{classes=5,head=/net/net.5/Gemm}")
    logits, aux = run(model, x)
    assert logits.shape == (len(x), 5) and np.array_equal(aux, aux_before)


@pytest.mark.parametrize(("head", "reason"), [
    ("/net/net.3/Gemm", "is not a head"),
    ("/net/net.2/Relu", "is not a head"),
    ("nowhere", "no node named 'nowhere'"),
])
def test_named_non_heads_are_usage_errors(head, reason):
    with pytest.raises(UsageError, match=reason):
        apply(load("digits_mlp"), f"head-swap{{classes=5,head={head}}}")


def test_classes_is_required():
    with pytest.raises(UsageError, match="classes=N is required"):
        apply(load("digits_mlp"), "head-swap")


def _tiny(nodes, initializers, out_shape, in_shape=("n", 4)) -> Model:
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
        [numpy_helper.from_array(np.asarray(a, np.float32 if a.dtype.kind == "f" else a.dtype), n)
         for n, a in initializers.items()])
    return serde.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


def test_matmul_head_with_bias_add():
    rng = np.random.default_rng(0)
    model = _tiny([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["b", "m"], ["a"]),
                   helper.make_node("LogSoftmax", ["a"], ["y"], axis=-1)],
                  {"w": rng.normal(size=(4, 6)), "b": rng.normal(size=6)}, ("n", 6))
    result = apply(model, "head-swap{classes=2}")
    assert result.new_parameters == ["w", "b"] and model.graph.outputs[0].shape == ("n", 2)
    assert run(model, rng.normal(size=(3, 4)).astype(np.float32))[0].shape == (3, 2)


def test_conv_head_through_pooling_and_a_pinned_reshape():
    rng = np.random.default_rng(1)
    model = _tiny([helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[1, 1]),
                   helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
                   helper.make_node("Reshape", ["p", "shape"], ["y"])],
                  {"w": rng.normal(size=(6, 3, 1, 1)), "b": rng.normal(size=6), "shape": np.array([-1, 6])},
                  ("n", 6), ("n", 3, 5, 5))
    result = apply(model, "head-swap{classes=2}")
    assert result.changes["op_type"] == "Conv" and model.graph.outputs[0].shape == ("n", 2)
    assert list(model.graph.const_value(model.graph.find_op("y").inputs[1])) == [-1, 2]
    assert run(model, rng.normal(size=(3, 3, 5, 5)).astype(np.float32))[0].shape == (3, 2)


def test_cli_records_new_parameters(tmp_path, capsys):
    out, changes = tmp_path / "five.onnx", tmp_path / "changes.json"
    with pytest.raises(SystemExit) as done:
        main(["apply", str(MODELS / "digits_cnn.onnx"), "-o", str(out), "-p", "head-swap{classes=5}",
              "--changes", str(changes)])
    assert done.value.code == 0, capsys.readouterr().err
    record = json.loads(changes.read_text())["passes"][0]
    assert record["new_parameters"] == ["net.7.weight", "net.7.bias"]
    onnx.checker.check_model(onnx.load(out), full_check=True)
