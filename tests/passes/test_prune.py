"""prune: magnitude zeroing, achieved sparsity, masks, scopes and refusals."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from graphsurg import serde
from graphsurg.errors import UsageError
from graphsurg.pipeline import make_pass, run_passes

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
from test_excise import make_model, tensor, weights  # noqa: E402

ROUNDING = 0.005


def prune(model, spec: str):
    ir = serde.load(model)
    record = run_passes(ir, [make_pass(spec)])  # onnx's full check runs after a modifying pass
    return ir, record.results[0], record


def initializer(ir, name: str) -> np.ndarray:
    return ir.graph.lookup(name).const.numpy()


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_bundled_models_reach_the_target_sparsity(bundled_model, scope, tmp_path):
    original = serde.load(bundled_model)
    ir, result, record = prune(bundled_model, f"prune{{sparsity=0.8,scope={scope}}}")
    assert abs(result.changes["sparsity"] - 0.8) <= ROUNDING
    for name, layer in result.changes["layers"].items():
        mask = result.arrays[f"mask/{name}"]
        pruned, before = initializer(ir, name), initializer(original, name)
        assert mask.dtype == bool and mask.shape == pruned.shape
        np.testing.assert_array_equal(pruned[~mask], 0)  # zeros where the mask drops ...
        np.testing.assert_array_equal(pruned[mask], before[mask])  # ... untouched where it keeps
        if scope == "layer":  # exact per layer up to rounding one element
            assert abs(layer["sparsity"] - 0.8) <= max(ROUNDING, 0.5 / layer["size"])
    assert set(result.touched) == set(result.changes["layers"])
    session = ort.InferenceSession(serde.to_bytes(ir), providers=["CPUExecutionProvider"])
    x = np.load(bundled_model.parent / "digits_test.npz")["input"][:4]
    assert session.run(None, {"input": x})[0].shape == (4, 10)
    record.save(tmp_path / "changes.json")
    saved = np.load(tmp_path / "changes.npz")
    assert sorted(saved.files) == sorted(f"0/mask/{n}" for n in result.changes["layers"])


def test_global_scope_ranks_all_weights_together():
    small, large = weights(4, 4) * 0.01, weights(4, 4)
    nodes = [helper.make_node("MatMul", ["x", "a"], ["h"], name="fc0"),
             helper.make_node("MatMul", ["h", "b"], ["y"], name="fc1")]
    model = make_model(nodes, [tensor("x", ["N", 4])], [tensor("y", ["N", 4])], {"a": small, "b": large})
    _, result, _ = prune(model, "prune{sparsity=0.5}")
    assert result.changes["layers"]["a"]["sparsity"] == 1.0  # the tiny layer goes first
    assert result.changes["layers"]["b"]["sparsity"] == 0.0
    _, result, _ = prune(model, "prune{sparsity=0.5,scope=layer}")
    assert result.changes["layers"]["a"]["sparsity"] == result.changes["layers"]["b"]["sparsity"] == 0.5


def test_threshold_zeros_exactly_the_small_magnitudes():
    w = np.array([[0.05, -0.2], [0.3, -0.01]], np.float32)
    expected = np.array([[0, -0.2], [0.3, 0]], np.float32)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [tensor("x", ["N", 2])],
                       [tensor("y", ["N", 2])], {"w": w})
    ir, result, _ = prune(model, "prune{threshold=0.1}")
    np.testing.assert_array_equal(initializer(ir, "w"), expected)
    assert result.changes["sparsity"] == 0.5


def test_ops_filter_exclude_and_weights_behind_chains():
    w_t, w_c, w_g = weights(6, 4), weights(6, 6), weights(3, 6)
    nodes = [helper.make_node("Transpose", ["w_t"], ["w_t_T"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "w_t_T"], ["h"], name="fc0"),
             helper.make_node("Constant", [], ["w_c"], value=numpy_helper.from_array(w_c)),
             helper.make_node("MatMul", ["h", "w_c"], ["h2"], name="fc1"),
             helper.make_node("Gemm", ["h2", "w_g"], ["y"], name="fc2", transB=1)]
    model = make_model(nodes, [tensor("x", ["N", 4])], [tensor("y", ["N", 3])], {"w_t": w_t, "w_g": w_g})
    ir, result, _ = prune(model, "prune{sparsity=0.5,scope=layer,ops=MatMul,Gemm,exclude=fc2}")
    assert sorted(result.changes["layers"]) == ["w_c", "w_t"]  # through the Transpose, and a Constant op
    assert (initializer(ir, "w_t") == 0).mean() == 0.5
    assert (ir.graph.const_value(ir.graph.lookup("w_c")) == 0).mean() == 0.5
    np.testing.assert_array_equal(initializer(ir, "w_g"), w_g)
    assert {"target": "fc2", "reason": "excluded"} in result.refused
    assert result.touched == ["w_t"]  # the Constant op's tensor is not an initializer


def test_shared_weight_is_left_when_another_op_reads_it():
    w = weights(4, 4)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"), helper.make_node("Add", ["h", "w"], ["y"])]
    model = make_model(nodes, [tensor("x", [4, 4])], [tensor("y", [4, 4])], {"w": w})
    _, result, _ = prune(model, "prune{sparsity=0.5}")
    assert not result.modified
    assert any("other ops read it" in r["reason"] for r in result.refused)


def test_parameters():
    assert make_pass("prune{ops=Conv,Gemm,MatMul}").params.ops == ("Conv", "Gemm", "MatMul")
    with pytest.raises(UsageError, match="not both"):
        make_pass("prune{sparsity=0.5,threshold=0.1}")
    with pytest.raises(UsageError, match="sparsity"):
        make_pass("prune{sparsity=2}")
    with pytest.raises(UsageError, match="scope"):
        make_pass("prune{scope=model}")
