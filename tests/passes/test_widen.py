"""widen: Net2WiderNet on every eligible layer of the bundled models keeps their outputs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from graphsurg.passes.widen import eligible_nodes
from onnx import TensorProto, helper, numpy_helper

from graphsurg import serde
from graphsurg.errors import UsageError

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
from _graft_support import TOLERANCE, apply, digits_inputs, load, make, max_diff, run  # noqa: E402

# Layers whose units reach a consumer layer only through per-unit ops. The others are refused:
# residual Adds (cnn first/second conv), attention Reshapes and LayerNorms (vit), graph outputs.
ELIGIBLE = {
    "digits_mlp": ["/net/net.1/Gemm", "/net/net.3/Gemm"],
    "digits_cnn": ["/net/net.2/conv1/conv1.0/Conv", "/net/net.3/net.3.0/Conv"],
    "digits_vit": ["/blocks/blocks.0/mlp/mlp.0/MatMul", "/blocks/blocks.1/mlp/mlp.0/MatMul"],
}
CASES = [(name, node) for name, nodes in ELIGIBLE.items() for node in nodes]


def tolerance(reference: np.ndarray) -> float:
    """The issue's 1e-5, or four float32 ulps of the largest output where that is coarser.

    Net2Net is exact in real arithmetic; in float32 a consumer that sums each copied unit's
    contribution as two halves rounds differently from the original single term. The hidden
    activations match bit for bit (see test_hidden_units_are_exact_copies); the MLP's logits
    reach 34.5, where one ulp is 3.8e-6.
    """
    return max(TOLERANCE, 4 * float(np.spacing(np.float32(np.abs(reference).max()))))


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return digits_inputs()


@pytest.mark.parametrize("name", sorted(ELIGIBLE))
def test_eligible_nodes_are_found(name):
    model = load(name)
    serde.infer_shapes(model)
    assert [op.name for op, _ in eligible_nodes(model.graph)] == ELIGIBLE[name]


@pytest.mark.parametrize("split", ["divide", "zero"])
@pytest.mark.parametrize(("name", "node"), CASES)
def test_widening_preserves_the_function(name, node, split, x):
    model = load(name)
    before = run(model, x)[0]
    op = model.graph.find_op(node)
    units = model.graph.const_value(op.inputs[1]).shape[0 if op.op_type in ("Conv", "Gemm") else 1]
    result = apply(model, f"widen{{node={node},split={split}}}")
    change = result.changes
    assert change["from"] == units and change["to"] == round(units * 1.5) and change["split"] == split
    assert len(change["copied_from"]) == change["to"] - units and len(result.arrays["mapping"]) == change["to"]
    assert set(result.touched) == set(change["parameters"]) and len(change["consumers"]) == 1
    after = run(model, x)[0]
    assert np.array_equal(before.argmax(1), after.argmax(1))
    if split == "zero":
        assert np.array_equal(before, after)  # within the 1e-5 with no ulp allowance: bit for bit
    else:
        assert max_diff(before, after) <= tolerance(before)


@pytest.mark.parametrize("factor", [2, 3.5, 8])
@pytest.mark.parametrize(("name", "node"), CASES)
def test_zero_split_is_bit_exact_at_any_width(name, node, factor, x):
    model = load(name)
    before = run(model, x)[0]
    apply(model, f"widen{{node={node},factor={factor},split=zero}}")
    assert np.array_equal(before, run(model, x)[0])


def test_zero_split_keeps_the_originals_weights():
    model = load("digits_mlp")
    original = model.graph.const_value(model.graph.find_op("/net/net.5/Gemm").inputs[1]).copy()
    result = apply(model, "widen{node=/net/net.3/Gemm,width=100,split=zero}")
    weight = model.graph.const_value(model.graph.find_op("/net/net.5/Gemm").inputs[1])
    assert weight.shape[1] == len(result.arrays["mapping"]) == 100
    np.testing.assert_array_equal(weight[:, :64], original)  # (out, in): torch exports Gemm with transB=1
    assert not weight[:, 64:].any()


@pytest.mark.parametrize(("name", "node", "hidden"), [
    ("digits_mlp", "/net/net.3/Gemm", "/net/net.4/Relu_output_0"),
    ("digits_cnn", "/net/net.3/net.3.0/Conv", "/net/net.6/Flatten_output_0"),
    ("digits_vit", "/blocks/blocks.0/mlp/mlp.0/MatMul", "/blocks/blocks.0/mlp/mlp.1/Mul_1_output_0"),
])
def test_hidden_units_are_exact_copies(name, node, hidden, x):
    model = load(name)
    (before,) = run(model, x, (hidden,))[1:]
    result = apply(model, f"widen{{node={node},factor=2}}")
    (after,) = run(model, x, (hidden,))[1:]
    mapping = result.arrays["mapping"]
    assert after.shape[-1] == len(mapping) == 2 * before.shape[-1]
    assert np.array_equal(after, before[..., mapping])  # copies, BatchNorm and GELU included, bit for bit


def test_batchnorm_and_consumer_are_rewritten(x):
    model = load("digits_cnn")
    result = apply(model, "widen{node=/net/net.2/conv1/conv1.0/Conv,width=40}")
    graph = model.graph
    bn = graph.find_op("/net/net.2/conv1/conv1.1/BatchNormalization")
    assert all(graph.const_value(v).shape == (40,) for v in bn.inputs[1:])
    consumer = graph.find_op("/net/net.2/conv2/conv2.0/Conv")
    weight = graph.const_value(consumer.inputs[1])
    assert weight.shape == (16, 40, 3, 3)
    mapping = result.arrays["mapping"]
    counts = np.bincount(mapping)
    # the copies of each input channel add back up to the original kernel
    original = load("digits_cnn").graph.initializers["net.2.conv2.0.weight"].const.numpy()
    summed = np.zeros_like(original)
    np.add.at(summed, (slice(None), mapping), weight)
    np.testing.assert_allclose(summed, original, rtol=1e-6, atol=1e-7)
    assert set(counts) == {2, 3} and graph.value("/net/net.2/Relu_output_0").shape == ("batch", 40, 8, 8)


def test_large_factor_replicates_units_several_times(x):
    model = load("digits_vit")
    before = run(model, x)[0]
    result = apply(model, "widen{node=/blocks/blocks.1/mlp/mlp.0/MatMul,factor=3.5}")
    assert result.changes["to"] == 224 and np.bincount(result.arrays["mapping"]).max() >= 3
    assert max_diff(before, run(model, x)[0]) <= tolerance(before)


def test_noise_breaks_symmetry_deterministically(x):
    outputs = []
    for seed in (0, 0, 1):
        model = load("digits_mlp")
        apply(model, f"widen{{node=/net/net.1/Gemm,noise=0.1,seed={seed}}}")
        outputs.append(run(model, x)[0])
    before = run(load("digits_mlp"), x)[0]
    assert np.array_equal(outputs[0], outputs[1]) and not np.array_equal(outputs[0], outputs[2])
    assert max_diff(before, outputs[0]) > 1e-3


@pytest.mark.parametrize(("name", "node", "reason"), [
    ("digits_cnn", "/net/net.0/net.0.0/Conv", "residual"),
    ("digits_cnn", "/net/net.2/conv2/conv2.0/Conv", "residual"),
    ("digits_vit", "/blocks/blocks.0/attn/q/MatMul", "Reshape"),
    ("digits_vit", "/blocks/blocks.0/mlp/mlp.2/MatMul", "LayerNormalization"),
    ("digits_vit", "/blocks/blocks.0/attn/MatMul", "not a Gemm/MatMul/Conv with a constant weight"),
    ("digits_mlp", "/net/net.5/Gemm", "graph output 'logits'"),
    ("digits_mlp", "/net/net.2/Relu", "is a Relu"),
    ("digits_mlp", "nope", "no node named 'nope'"),
])
def test_ineligible_nodes_are_refused_with_the_reason(name, node, reason):
    with pytest.raises(UsageError, match="refused|no node") as caught:
        apply(load(name), f"widen{{node={node}}}")
    assert reason in str(caught.value)


def test_missing_node_lists_the_eligible_ones():
    with pytest.raises(UsageError, match="node=NAME; eligible nodes: /net/net.1/Gemm, /net/net.3/Gemm"):
        apply(load("digits_mlp"), "widen")


@pytest.mark.parametrize(("spec", "message"), [
    ("widen{node=/net/net.1/Gemm,width=100}", "must exceed the current 128"),
    ("widen{node=/net/net.1/Gemm,factor=0.5}", "factor must be greater than 1"),
    ("widen{node=/net/net.1/Gemm,noise=-1}", "noise must not be negative"),
])
def test_bad_widths_are_usage_errors(spec, message):
    with pytest.raises(UsageError, match=message):
        apply(load("digits_mlp"), spec) if "width" in spec else make(spec)


def test_shared_weights_are_not_altered_for_their_other_reader():
    """A consumer weight another layer also reads (tied weights) is copied, not rewritten."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1, name="grow"),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2"], ["y"], transB=1, name="reader"),
             helper.make_node("Gemm", ["x", "w2"], ["z"], transB=1, name="tied")]
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
             for n, s in (("w1", (4, 4)), ("w2", (3, 4)))]
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", 3]) for n in "yz"], inits)
    model = serde.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    data = rng.normal(size=(5, 4)).astype(np.float32)
    before = run(model, data)
    result = apply(model, "widen{node=grow,width=7}")
    after = run(model, data)
    assert model.graph.find_op("tied").inputs[1].name == "w2" and model.graph.value("w2").shape == (3, 4)
    reader_weight = model.graph.find_op("reader").inputs[1]
    assert reader_weight.name != "w2" and reader_weight.shape == (3, 7) and reader_weight.name in result.touched
    assert all(max_diff(b, a) <= TOLERANCE for b, a in zip(before, after, strict=True))
