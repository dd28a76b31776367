"""excise: function preservation on tiny hand-built graphs, one per dependency case.

Each graph gets some channels (or heads) whose every outgoing weight is zero: they provably
contribute nothing, so excising exactly those must leave onnxruntime's outputs unchanged. A wrong
grouping (a residual member left unsliced, a Concat offset off by one, a depthwise channel
mapped to the wrong input) breaks the graph or changes the numbers.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphsurg import serde
from graphsurg.errors import ServiceUnavailable, UsageError
from graphsurg.pipeline import PassContext, make_pass, run_passes

RNG = np.random.default_rng(0)


def weights(*shape: int) -> np.ndarray:
    return RNG.normal(0, 0.5, shape).astype(np.float32)


def make_model(nodes, inputs, outputs, inits, opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def tensor(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def run(model: onnx.ModelProto | bytes, feeds: dict) -> list[np.ndarray]:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def excise(model: onnx.ModelProto, spec: str, ctx=None):
    ir = serde.load(model)
    record = run_passes(ir, [make_pass(spec)], ctx)  # validates: IR invariants and onnx's full check
    return ir, record.results[0]


def assert_preserved(model: onnx.ModelProto, spec: str, feeds: dict, ctx=None):
    ir, result = excise(model, spec, ctx)
    assert result.modified, result.summary
    before, after = run(model, feeds), run(serde.to_bytes(ir), feeds)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    return ir, result


def shape_of(ir, name: str) -> tuple[int, ...]:
    value = ir.graph.lookup(name)
    array = ir.graph.const_value(value)
    return tuple(array.shape)


def group(result, name: str) -> dict:
    return next(g for g in result.changes["groups"] if name in g["layers"])


def conv(name, x, w, out, group=1, pad=1):
    return helper.make_node("Conv", [x, w], [out], name=name, pads=[pad] * 4, group=group)


# ---- residual Add + BatchNorm ------------------------------------------------------------------
def residual_model(dead: list[int]) -> onnx.ModelProto:
    w0, w1, w2 = weights(8, 3, 3, 3), weights(8, 8, 3, 3), weights(5, 8, 3, 3)
    w1[:, dead] = 0  # the residual stream's dead channels feed nothing: not conv1 ...
    w2[:, dead] = 0  # ... and not conv2
    bn = {"g": RNG.uniform(0.5, 1.5, 8), "b": RNG.normal(0, 1, 8), "m": RNG.normal(0, 1, 8),
          "v": RNG.uniform(0.5, 1.5, 8)}
    nodes = [
        conv("conv0", "x", "w0", "a"), helper.make_node("Relu", ["a"], ["r"]),
        conv("conv1", "r", "w1", "c1"),
        helper.make_node("BatchNormalization", ["c1", "g", "b", "m", "v"], ["n1"], name="bn1"),
        helper.make_node("Add", ["r", "n1"], ["s"], name="residual"), helper.make_node("Relu", ["s"], ["t"]),
        conv("conv2", "t", "w2", "y"),
    ]
    inits = {"w0": w0, "w1": w1, "w2": w2, **{k: v.astype(np.float32) for k, v in bn.items()}}
    return make_model(nodes, [tensor("x", ["N", 3, 6, 6])], [tensor("y", ["N", 5, 6, 6])], inits)


def test_residual_add_and_batchnorm_remove_the_same_channels_everywhere():
    dead = [1, 2, 5, 6]
    ir, result = assert_preserved(residual_model(dead), "excise{ratio=0.5}",
                                  {"x": RNG.normal(size=(2, 3, 6, 6)).astype(np.float32)})
    entry = group(result, "conv0")
    assert entry["layers"] == ["conv0", "conv1"]  # coupled through the residual Add
    assert entry["removed"] == {"conv0": dead, "conv1": dead}
    assert shape_of(ir, "w0") == (4, 3, 3, 3) and shape_of(ir, "w1") == (4, 4, 3, 3)
    assert shape_of(ir, "w2") == (5, 4, 3, 3) and shape_of(ir, "g") == (4,) and shape_of(ir, "v") == (4,)
    assert {"w0", "w1", "w2", "g", "b", "m", "v"} <= set(result.touched)


# ---- Concat ----------------------------------------------------------------------------------
def test_concat_offsets_with_an_unprunable_segment_in_the_middle():
    wa, wb, w2 = weights(4, 2, 3, 3), weights(6, 2, 3, 3), weights(3, 12, 1, 1)
    # Concat(a[4], x[2], b[6]) -> conv2 reads 12 channels: a at 0..3, x at 4..5, b at 6..11.
    dead_a, dead_b = [1, 2], [0, 3, 4]
    w2[:, dead_a] = 0
    w2[:, [6 + i for i in dead_b]] = 0
    nodes = [
        conv("conv_a", "x", "wa", "a"), helper.make_node("Relu", ["a"], ["ra"]),
        conv("conv_b", "x", "wb", "b"), helper.make_node("Sigmoid", ["b"], ["rb"]),
        helper.make_node("Concat", ["ra", "x", "rb"], ["cat"], axis=1),
        conv("conv2", "cat", "w2", "y", pad=0),
    ]
    model = make_model(nodes, [tensor("x", ["N", 2, 5, 5])], [tensor("y", ["N", 3, 5, 5])],
                       {"wa": wa, "wb": wb, "w2": w2})
    ir, result = assert_preserved(model, "excise{ratio=0.5}", {"x": RNG.normal(size=(2, 2, 5, 5)).astype(np.float32)})
    assert group(result, "conv_a")["removed"] == {"conv_a": dead_a}
    assert group(result, "conv_b")["removed"] == {"conv_b": dead_b}
    assert shape_of(ir, "w2") == (3, 2 + 2 + 3, 1, 1)


# ---- depthwise Conv ----------------------------------------------------------------------------
@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_channels_follow_their_input(multiplier):
    w0, wd, w1 = weights(6, 3, 1, 1), weights(6 * multiplier, 1, 3, 3), weights(4, 6 * multiplier, 1, 1)
    dead = [0, 4, 5]
    for c in dead:  # depthwise output c*m .. c*m+m-1 comes from input channel c
        w1[:, c * multiplier:(c + 1) * multiplier] = 0
    nodes = [
        conv("conv0", "x", "w0", "a", pad=0),
        conv("dw", "a", "wd", "d", group=6),
        helper.make_node("Relu", ["d"], ["r"]),
        conv("conv1", "r", "w1", "y", pad=0),
    ]
    model = make_model(nodes, [tensor("x", ["N", 3, 5, 5])], [tensor("y", ["N", 4, 5, 5])],
                       {"w0": w0, "wd": wd, "w1": w1})
    ir, result = assert_preserved(model, "excise{ratio=0.5}", {"x": RNG.normal(size=(2, 3, 5, 5)).astype(np.float32)})
    assert group(result, "conv0")["removed"] == {"conv0": dead}
    assert shape_of(ir, "wd") == (3 * multiplier, 1, 3, 3)
    assert ir.graph.find_op("dw").attr("group") == 3


def test_grouped_conv_removes_the_same_positions_in_every_group():
    w0, wg, w2 = weights(8, 2, 1, 1), weights(6, 4, 3, 3), weights(3, 6, 1, 1)
    # group=2: input channels 0-3 feed outputs 0-2, 4-7 feed 3-5; position j of a group is
    # channel j (input) or 3*i + j (output) in group i.
    wg[:, [0, 2]] = 0  # input positions 0 and 2 are read by no output: conv0 channels 0, 2, 4, 6 are dead
    w2[:, [0, 1, 3, 4]] = 0  # output positions 0 and 1 feed nothing
    nodes = [conv("conv0", "x", "w0", "a", pad=0), helper.make_node("Relu", ["a"], ["r"]),
             conv("grouped", "r", "wg", "g", group=2), helper.make_node("Relu", ["g"], ["s"]),
             conv("conv2", "s", "w2", "y", pad=0)]
    model = make_model(nodes, [tensor("x", ["N", 2, 4, 4])], [tensor("y", ["N", 3, 4, 4])],
                       {"w0": w0, "wg": wg, "w2": w2})
    ir, result = assert_preserved(model, "excise{ratio=0.5}", {"x": RNG.normal(size=(2, 2, 4, 4)).astype(np.float32)})
    assert group(result, "conv0")["removed"] == {"conv0": [0, 2, 4, 6]}
    assert group(result, "grouped")["removed"] == {"grouped": [0, 1]}  # positions, in each of the 2 groups
    assert shape_of(ir, "wg") == (2, 2, 3, 3) and ir.graph.find_op("grouped").attr("group") == 2


# ---- Flatten / Reshape after a conv -----------------------------------------------------------
@pytest.mark.parametrize("flatten", ["Flatten", "Reshape"])
def test_flatten_after_conv_maps_each_channel_to_its_spatial_block(flatten):
    w0, wg = weights(4, 2, 3, 3), weights(7, 4 * 9)
    dead = [1, 3]
    for c in dead:
        wg[:, c * 9:(c + 1) * 9] = 0  # channel c occupies flattened positions c*9 .. c*9+8
    reshape = (helper.make_node("Flatten", ["r"], ["f"], axis=1) if flatten == "Flatten" else
               helper.make_node("Reshape", ["r", "shape"], ["f"]))
    nodes = [conv("conv0", "x", "w0", "a", pad=0), helper.make_node("Relu", ["a"], ["r"]), reshape,
             helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], name="fc", transB=1)]
    inits = {"w0": w0, "wg": wg, "bg": weights(7), "shape": np.array([-1, 36], dtype=np.int64)}
    model = make_model(nodes, [tensor("x", ["N", 2, 5, 5])], [tensor("y", ["N", 7])], inits)
    ir, result = assert_preserved(model, "excise{ratio=0.5}", {"x": RNG.normal(size=(3, 2, 5, 5)).astype(np.float32)})
    assert group(result, "conv0")["removed"] == {"conv0": dead}
    assert shape_of(ir, "wg") == (7, 18)
    if flatten == "Reshape":
        assert shape_of(ir, "shape") == (2,) and ir.graph.const_value(ir.graph.lookup("shape")).tolist() == [-1, 18]


def test_batchnorm_then_global_pool_then_gemm():
    w0, wg = weights(6, 2, 3, 3), weights(6, 3)
    dead = [0, 2, 3]
    wg[dead] = 0  # Gemm without transB: rows of the weight are input features
    nodes = [conv("conv0", "x", "w0", "a"),
             helper.make_node("BatchNormalization", ["a", "g", "b", "m", "v"], ["n"]),
             helper.make_node("Relu", ["n"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "wg"], ["y"], name="fc")]
    inits = {"w0": w0, "wg": wg, "g": np.ones(6, np.float32), "b": weights(6), "m": weights(6),
             "v": np.ones(6, np.float32)}
    model = make_model(nodes, [tensor("x", ["N", 2, 4, 4])], [tensor("y", ["N", 3])], inits)
    ir, _ = assert_preserved(model, "excise{ratio=0.5}", {"x": RNG.normal(size=(2, 2, 4, 4)).astype(np.float32)})
    assert shape_of(ir, "wg") == (3, 3) and shape_of(ir, "b") == (3,)


# ---- Split (GLU) and Slice ---------------------------------------------------------------------
def test_split_glu_removes_matching_halves_and_rewrites_split_sizes():
    w0, w1 = weights(8, 2, 1, 1), weights(3, 4, 1, 1)
    dead = [1, 2]  # GLU output j = a_j * sigmoid(b_j): conv0 channels j and 4 + j go together
    w1[:, dead] = 0
    nodes = [conv("conv0", "x", "w0", "a", pad=0),
             helper.make_node("Split", ["a", "sizes"], ["h0", "h1"], axis=1),
             helper.make_node("Sigmoid", ["h1"], ["g"]), helper.make_node("Mul", ["h0", "g"], ["m"]),
             conv("conv1", "m", "w1", "y", pad=0)]
    inits = {"w0": w0, "w1": w1, "sizes": np.array([4, 4], dtype=np.int64)}
    model = make_model(nodes, [tensor("x", ["N", 2, 3, 3])], [tensor("y", ["N", 3, 3, 3])], inits)
    ir, result = assert_preserved(model, "excise{ratio=0.5}", {"x": RNG.normal(size=(2, 2, 3, 3)).astype(np.float32)})
    assert group(result, "conv0")["removed"] == {"conv0": [1, 2, 5, 6]}
    assert ir.graph.const_value(ir.graph.lookup("sizes")).tolist() == [2, 2]


def test_slice_bounds_follow_the_kept_channels():
    w0, w1 = weights(8, 2, 1, 1), weights(3, 5, 1, 1)
    w1[:, [0, 3]] = 0  # conv1 reads channels 2..6 of conv0; 2 and 5 are dead
    w0[[0, 7]] *= 1e-3  # the unread channels are the weakest: they go first
    nodes = [conv("conv0", "x", "w0", "a", pad=0),
             helper.make_node("Slice", ["a", "starts", "ends", "axes"], ["s"]),
             conv("conv1", "s", "w1", "y", pad=0)]
    inits = {"w0": w0, "w1": w1, "starts": np.array([2], np.int64), "ends": np.array([7], np.int64),
             "axes": np.array([1], np.int64)}
    model = make_model(nodes, [tensor("x", ["N", 2, 3, 3])], [tensor("y", ["N", 3, 3, 3])], inits)
    ir, result = assert_preserved(model, "excise{ratio=0.5}", {"x": RNG.normal(size=(2, 2, 3, 3)).astype(np.float32)})
    assert group(result, "conv0")["removed"] == {"conv0": [0, 2, 5, 7]}
    assert ir.graph.const_value(ir.graph.lookup("starts")).tolist() == [1]
    assert ir.graph.const_value(ir.graph.lookup("ends")).tolist() == [4]


def test_bounds_read_from_a_shrunk_tensor_become_constants():
    """Slice(A, 0, Shape(B)[1]) keeps all of A's 8 channels; B shrinks to 4. The bound must not
    follow B's new size at run time: it is rewritten as the constant 8."""
    w3 = weights(3, 8, 1, 1)
    w3[:, [0, 2, 5, 7]] = 0
    nodes = [conv("conv0", "x", "w0", "a", pad=0), helper.make_node("Relu", ["a"], ["ra"]),
             conv("conv1", "x", "w1", "b", pad=0), helper.make_node("Relu", ["b"], ["rb"]),
             helper.make_node("Shape", ["rb"], ["shape_b"]),
             helper.make_node("Gather", ["shape_b", "one"], ["count"], axis=0),
             helper.make_node("Unsqueeze", ["count", "zero"], ["end"]),
             helper.make_node("Slice", ["ra", "zero", "end", "one_v"], ["s"]),
             conv("conv2", "s", "w2", "c2", pad=0), conv("conv3", "rb", "w3", "c3", pad=0),
             helper.make_node("Add", ["c2", "c3"], ["y"])]
    inits = {"w0": weights(8, 2, 1, 1), "w1": weights(8, 2, 1, 1), "w2": weights(3, 8, 1, 1), "w3": w3,
             "one": np.array(1, np.int64), "zero": np.array([0], np.int64), "one_v": np.array([1], np.int64)}
    model = make_model(nodes, [tensor("x", ["N", 2, 3, 3])], [tensor("y", ["N", 3, 3, 3])], inits)
    ir, result = assert_preserved(model, "excise{ratio=0.5,exclude=conv0}",
                                  {"x": RNG.normal(size=(2, 2, 3, 3)).astype(np.float32)})
    assert group(result, "conv1")["removed"] == {"conv1": [0, 2, 5, 7]}
    slice_op = next(op for op in ir.graph.ops if op.op_type == "Slice")
    assert ir.graph.const_value(slice_op.inputs[2]).tolist() == [8]


# ---- attention heads -----------------------------------------------------------------------
def attention_model(shape_style: str, dead_heads: list[int], heads=4, head_dim=4, seq=5) -> onnx.ModelProto:
    """x -> LayerNorm -> Q, K, V (MatMul + bias) -> heads -> softmax(QK^T/sqrt(d)) V -> merge ->
    output projection -> + x. `shape_style`: 'zeros' ([0, 0, H, d] initializers, symbolic batch
    and sequence) or 'constant' (Constant ops [-1, S, H, d] as the bundled ViT has)."""
    dim = heads * head_dim
    wo = weights(dim, dim)
    for h in dead_heads:
        wo[h * head_dim:(h + 1) * head_dim] = 0  # the head's output-projection rows
    nodes, inits = [helper.make_node("LayerNormalization", ["x", "ln_g", "ln_b"], ["n"], axis=-1)], {}
    if shape_style == "zeros":
        inits["split_shape"] = np.array([0, 0, heads, head_dim], np.int64)
        inits["merge_shape"] = np.array([0, 0, dim], np.int64)
        split, merge, x_shape = ["split_shape"] * 3, "merge_shape", ["N", "S", dim]
    else:
        for i in range(3):
            nodes.append(_constant(f"split{i}", [-1, seq, heads, head_dim]))
        nodes.append(_constant("merge", [-1, seq, dim]))
        split, merge, x_shape = ["split0", "split1", "split2"], "merge", ["N", seq, dim]
    for i, part in enumerate("qkv"):
        nodes += [helper.make_node("MatMul", ["n", f"w{part}"], [f"{part}_mm"], name=f"{part}_proj"),
                  helper.make_node("Add", [f"b{part}", f"{part}_mm"], [f"{part}_b"]),
                  helper.make_node("Reshape", [f"{part}_b", split[i]], [f"{part}_h"]),
                  helper.make_node("Transpose", [f"{part}_h"], [f"{part}_t"],
                                   perm=[0, 2, 3, 1] if part == "k" else [0, 2, 1, 3])]
        inits[f"w{part}"], inits[f"b{part}"] = weights(dim, dim), weights(dim)
    nodes += [helper.make_node("MatMul", ["q_t", "k_t"], ["scores"]),
              _constant("scale", np.float32(head_dim ** -0.5)),
              helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
              helper.make_node("Softmax", ["scaled"], ["probs"], axis=-1),
              helper.make_node("MatMul", ["probs", "v_t"], ["ctx"]),
              helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ctx_t", merge], ["merged"]),
              helper.make_node("MatMul", ["merged", "wo"], ["o_mm"], name="out_proj"),
              helper.make_node("Add", ["o_mm", "bo"], ["o"]), helper.make_node("Add", ["x", "o"], ["y"])]
    inits.update(wo=wo, bo=weights(dim), ln_g=np.ones(dim, np.float32), ln_b=np.zeros(dim, np.float32))
    return make_model(nodes, [tensor("x", x_shape)], [tensor("y", x_shape)], inits)


def _constant(name, value):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, dtype=(
        np.int64 if np.asarray(value).dtype.kind == "i" else np.float32))))


@pytest.mark.parametrize(("shape_style", "target"), [("zeros", "heads"), ("constant", "auto")])
def test_attention_heads_go_whole_with_their_reshape_constants(shape_style, target):
    model = attention_model(shape_style, dead_heads=[1, 3])
    feeds = {"x": RNG.normal(size=(2, 5, 16)).astype(np.float32)}
    ir, result = assert_preserved(model, f"excise{{ratio=0.5,target={target}}}", feeds)
    entry = group(result, "q_proj")
    assert entry["kind"] == "heads" and entry["layers"] == ["q_proj", "k_proj", "v_proj"]
    assert entry["removed_units"] == [1, 3]
    assert entry["removed"]["q_proj"] == [4, 5, 6, 7, 12, 13, 14, 15]
    for name in ("wq", "wk", "wv"):
        assert shape_of(ir, name) == (16, 8)
    assert shape_of(ir, "wo") == (8, 16)
    shapes = sorted(tuple(ir.graph.const_value(op.inputs[1]).tolist()) for op in ir.graph.ops
                    if op.op_type == "Reshape")
    expected = [(0, 0, 2, 4)] * 3 + [(0, 0, 8)] if shape_style == "zeros" else [(-1, 5, 2, 4)] * 3 + [(-1, 5, 8)]
    assert shapes == sorted(expected)
    # The residual stream meets the graph input and reaches the graph output: it stays, with reasons.
    reasons = next(r["reason"] for r in result.refused if r["target"] == "group out_proj")
    assert "no prunable channels" in reasons or "graph output" in reasons


def test_channels_target_refuses_head_splits_with_a_reason():
    _, result = excise(attention_model("zeros", dead_heads=[1]), "excise{ratio=0.5,target=channels}")
    assert not result.modified
    reasons = " ".join(r["reason"] for r in result.refused)
    assert "splits them into heads" in reasons and "target=heads or auto" in reasons


# ---- refusals, limits and parameters ---------------------------------------------------------
def test_softmax_over_channels_is_refused_and_nothing_changes():
    nodes = [conv("conv0", "x", "w0", "a"), helper.make_node("Softmax", ["a"], ["s"], axis=1),
             conv("conv1", "s", "w1", "y")]
    model = make_model(nodes, [tensor("x", ["N", 2, 4, 4])], [tensor("y", ["N", 3, 4, 4])],
                       {"w0": weights(4, 2, 3, 3), "w1": weights(3, 4, 3, 3)})
    ir, result = excise(model, "excise{ratio=0.5}")
    assert not result.modified
    assert any("normalizes across them" in r["reason"] for r in result.refused)
    assert shape_of(ir, "w0") == (4, 2, 3, 3)


def test_never_removes_the_last_unit_and_rounds_to_multiples():
    w1 = weights(3, 2, 1, 1)
    nodes = [conv("conv0", "x", "w0", "a", pad=0), conv("conv1", "a", "w1", "y", pad=0)]
    model = make_model(nodes, [tensor("x", ["N", 2, 3, 3])], [tensor("y", ["N", 3, 3, 3])],
                       {"w0": weights(2, 2, 1, 1), "w1": w1})
    ir, _ = excise(model, "excise{ratio=0.9}")
    assert shape_of(ir, "w0") == (1, 2, 1, 1)
    wide = make_model(nodes, [tensor("x", ["N", 2, 3, 3])], [tensor("y", ["N", 3, 3, 3])],
                      {"w0": weights(16, 2, 1, 1), "w1": weights(3, 16, 1, 1)})
    ir, _ = excise(wide, "excise{ratio=0.3,round_to=4}")  # 16 - round(4.8) = 11 kept -> 12
    assert shape_of(ir, "w0") == (12, 2, 1, 1)


def test_exclude_keeps_a_layer_whole():
    ir, result = excise(residual_model([1, 2]), "excise{ratio=0.5,exclude=conv1}")
    assert not result.modified
    assert any("conv1 is excluded" in r["reason"] for r in result.refused)


def test_weights_behind_transpose_and_in_constant_nodes():
    w_t, w_c, w_o = weights(6, 4), weights(6, 5), weights(3, 5)
    w_o[:, [0, 4]] = 0
    nodes = [helper.make_node("Transpose", ["w_t"], ["w_t_T"], perm=[1, 0]),
             helper.make_node("MatMul", ["x", "w_t_T"], ["h"], name="fc0"),  # W stored transposed
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Constant", [], ["w_c"], value=numpy_helper.from_array(w_c)),
             helper.make_node("MatMul", ["r", "w_c"], ["h2"], name="fc1"),  # weight in a Constant op
             helper.make_node("Gemm", ["h2", "w_o"], ["y"], name="fc2", transB=1)]
    w_c[[1, 2]] = 0  # fc0's channels 1 and 2 are dead too
    nodes[3] = helper.make_node("Constant", [], ["w_c"], value=numpy_helper.from_array(w_c))
    model = make_model(nodes, [tensor("x", ["N", 4])], [tensor("y", ["N", 3])], {"w_t": w_t, "w_o": w_o})
    feeds = {"x": RNG.normal(size=(4, 4)).astype(np.float32)}
    ir, result = assert_preserved(model, "excise{ratio=0.4}", feeds)
    assert group(result, "fc0")["removed"] == {"fc0": [1, 2]}
    assert group(result, "fc1")["removed"] == {"fc1": [0, 4]}
    assert shape_of(ir, "w_t") == (4, 4)  # sliced in place through the Transpose
    assert shape_of(ir, "w_c") == (4, 3)  # the Constant op's tensor itself
    assert "w_t" in result.touched


def test_weight_behind_a_reshape_of_a_flat_initializer():
    w0, w1 = weights(6, 2, 3, 3), weights(4, 6, 1, 1)
    w1[:, [1, 3, 4]] = 0
    nodes = [helper.make_node("Reshape", ["w0_flat", "w0_shape"], ["w0"]),  # stored as [6, 18]
             conv("conv0", "x", "w0", "a"), helper.make_node("Relu", ["a"], ["r"]),
             conv("conv1", "r", "w1", "y", pad=0)]
    inits = {"w0_flat": w0.reshape(6, 18), "w0_shape": np.array([6, 2, 3, 3], np.int64), "w1": w1}
    model = make_model(nodes, [tensor("x", ["N", 2, 4, 4])], [tensor("y", ["N", 4, 4, 4])], inits)
    ir, result = assert_preserved(model, "excise{ratio=0.5}", {"x": RNG.normal(size=(2, 2, 4, 4)).astype(np.float32)})
    assert group(result, "conv0")["removed"] == {"conv0": [1, 3, 4]}
    conv0 = ir.graph.find_op("conv0")
    assert ir.graph.const_value(conv0.inputs[1]).shape == (3, 2, 3, 3)  # its own initializer now
    assert ir.graph.lookup("w0_flat") is None and conv0.inputs[1].name in result.touched


def test_taylor_without_gradients_service_says_what_is_missing():
    model = residual_model([1])
    with pytest.raises(ServiceUnavailable, match="gradients.*train extra"):
        excise(model, "excise{importance=taylor}")


def test_taylor_ranks_by_weight_times_gradient():
    model = residual_model([])
    names = []

    def gradients(ir, params):  # a stand-in backend: large gradients on every channel except 3 and 4
        names.extend(params)
        grads = {}
        for name in params:
            grad = np.ones(ir.graph.lookup(name).shape, np.float32)
            if name in ("w0", "w1", "g"):  # g: the BatchNorm scale counts as a weight of the group
                grad[[3, 4]] = 1e-6
            if name in ("w1", "w2"):
                grad[:, [3, 4]] = 1e-6
            grads[name] = grad
        return grads

    ctx = PassContext(services={"gradients": gradients})
    _, result = excise(model, "excise{ratio=0.25,importance=taylor}", ctx)
    assert sorted(names) == ["g", "w0", "w1", "w2"]
    assert group(result, "conv0")["removed"]["conv0"] == [3, 4]


def test_l2_importance_and_bad_parameters():
    _, result = excise(residual_model([0, 7]), "excise{ratio=0.25,importance=l2}")
    assert group(result, "conv0")["removed"]["conv0"] == [0, 7]
    with pytest.raises(UsageError, match="ratio"):
        make_pass("excise{ratio=1.5}")
    with pytest.raises(UsageError, match="valid"):
        make_pass("excise{sparsity=0.5}")
