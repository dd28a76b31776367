"""drop-layer: removing a layer or a residual branch, rewiring, scoring and refusals."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

from graphsurg import serde
from graphsurg.errors import BadInputError, UsageError
from graphsurg.pipeline import make_pass, run_passes

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
from test_excise import RNG, make_model, run, tensor, weights  # noqa: E402


def drop(model, spec: str):
    ir = serde.load(model)
    result = run_passes(ir, [make_pass(spec)]).results[0]
    return ir, result


def two_branch_model(zero_branch: int) -> tuple:
    """x -> [x + conv(relu(conv(x)))] -> [.. + conv(relu(conv(..)))] -> conv -> y; one branch's
    closing conv (and bias) is zero, so that branch contributes nothing."""
    nodes, inits, current = [], {}, "x"
    for i in range(2):
        w_close, b_close = weights(4, 4, 3, 3), weights(4)
        if i == zero_branch:
            w_close[:], b_close[:] = 0, 0
        inits.update({f"wa{i}": weights(4, 4, 3, 3), f"wb{i}": w_close, f"bb{i}": b_close})
        nodes += [helper.make_node("Conv", [current, f"wa{i}"], [f"a{i}"], pads=[1] * 4),
                  helper.make_node("Relu", [f"a{i}"], [f"r{i}"]),
                  helper.make_node("Conv", [f"r{i}", f"wb{i}", f"bb{i}"], [f"b{i}"], pads=[1] * 4),
                  helper.make_node("Add", [current, f"b{i}"], [f"s{i}"], name=f"res{i}")]
        current = f"s{i}"
    nodes.append(helper.make_node("Conv", [current, "wh"], ["y"], name="head"))
    inits["wh"] = weights(2, 4, 1, 1)
    model = make_model(nodes, [tensor("x", ["N", 4, 5, 5])], [tensor("y", ["N", 2, 5, 5])], inits)
    return model, {"x": RNG.normal(size=(2, 4, 5, 5)).astype(np.float32)}


@pytest.mark.parametrize("zero_branch", [0, 1])
def test_auto_drops_the_branch_that_contributes_nothing(zero_branch):
    model, feeds = two_branch_model(zero_branch)
    ir, result = drop(model, "drop-layer{block=auto}")
    assert result.changes["dropped"]["target"] == f"res{zero_branch}"
    assert result.changes["dropped"]["score"] == 0.0
    assert sorted(result.changes["initializers_removed"]) == sorted(f"{p}{zero_branch}" for p in ("wa", "wb", "bb"))
    np.testing.assert_allclose(run(serde.to_bytes(ir), feeds)[0], run(model, feeds)[0], rtol=1e-5, atol=1e-5)
    assert len([op for op in ir.graph.ops if op.op_type == "Conv"]) == 3


def test_block_by_name_and_default_is_auto():
    model, _ = two_branch_model(zero_branch=0)
    ir, result = drop(model, "drop-layer{block=res1}")
    assert result.changes["dropped"]["target"] == "res1"
    assert ir.graph.find_op("res1") is None and ir.graph.find_op("res0") is not None
    _, result = drop(model, "drop-layer")
    assert result.changes["dropped"]["target"] == "res0"


def test_node_with_matching_shapes_is_bypassed_and_graph_output_keeps_its_name():
    eps = 1e-5
    ones, zeros = np.ones(3, np.float32), np.zeros(3, np.float32)
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("BatchNormalization", ["r", "g", "b", "m", "v"], ["y"], name="bn", epsilon=eps)]
    model = make_model(nodes, [tensor("x", ["N", 3, 4])], [tensor("y", ["N", 3, 4])],
                       {"g": ones, "b": zeros, "m": zeros, "v": ones - eps})  # an identity BatchNorm
    feeds = {"x": RNG.normal(size=(2, 3, 4)).astype(np.float32)}
    ir, result = drop(model, "drop-layer{node=bn}")
    assert result.modified and [op.op_type for op in ir.graph.ops] == ["Relu", "Identity"]
    assert [v.name for v in ir.graph.outputs] == ["y"]
    assert set(result.changes["initializers_removed"]) == {"g", "b", "m", "v"}
    np.testing.assert_allclose(run(serde.to_bytes(ir), feeds)[0], run(model, feeds)[0], rtol=1e-5, atol=1e-5)


def test_refusals_carry_reasons():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="down", strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["y"])]
    model = make_model(nodes, [tensor("x", ["N", 2, 4, 4])], [tensor("y", ["N", 3, 2, 2])], {"w": weights(3, 2, 1, 1)})
    ir, result = drop(model, "drop-layer{node=down}")
    assert not result.modified and "differs from its output shape" in result.refused[0]["reason"]
    _, result = drop(model, "drop-layer{block=auto}")
    assert not result.modified and result.refused[-1]["reason"] == "no residual branch was found"
    with pytest.raises(BadInputError, match="no op or value named 'nope'"):
        drop(model, "drop-layer{node=nope}")
    with pytest.raises(UsageError, match="not both"):
        make_pass("drop-layer{node=down,block=auto}")


def test_bundled_models_lose_a_branch_and_still_run(bundled_model):
    ir, result = drop(bundled_model, "drop-layer{block=auto}")
    if "mlp" in bundled_model.name:
        assert not result.modified and result.refused
        return
    assert result.modified and result.changes["dropped"]["kind"] == "branch"
    x = np.load(bundled_model.parent / "digits_test.npz")["input"][:4]
    assert run(serde.to_bytes(ir), {"input": x})[0].shape == (4, 10)
    assert ir.parameter_count() < serde.load(bundled_model).parameter_count()
