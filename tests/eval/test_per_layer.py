"""Known damage, measured: one layer's weights perturbed with growing noise; per-layer first jump;
models with extra or fewer nodes; matching through a change record's value map."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from graphsurg import serde
from graphsurg.eval import evaluate
from graphsurg.eval.compare import value_map_from_record

MODELS = Path(__file__).resolve().parents[2] / "models"
TEST = MODELS / "digits_test.npz"
LEVELS = (0.003, 0.03, 0.1, 0.3, 1.0)  # noise std relative to the weight's std

# model -> (the weight to perturb, the output of the op that reads it)
CASES = {
    "digits_mlp": ("net.3.weight", "/net/net.3/Gemm_output_0"),
    "digits_cnn": ("net.2.conv1.0.weight", "/net/net.2/conv1/conv1.0/Conv_output_0"),
    "digits_vit": ("onnx::MatMul_144", "/blocks/blocks.0/attn/v/MatMul_output_0"),
}


def perturbed(name: str, weight: str, level: float):
    """The bundled model with `weight` + level * std(weight) * one fixed seeded noise tensor."""
    model = serde.load(MODELS / f"{name}.onnx")
    value = model.graph.initializers[weight]
    array = value.const.numpy()
    noise = np.random.default_rng(0).standard_normal(array.shape)
    model.graph.set_const(value, (array + level * array.std() * noise).astype(array.dtype))
    return model


@pytest.mark.parametrize("name", sorted(CASES))
def test_metrics_degrade_monotonically_with_noise(name):
    weight, _ = CASES[name]
    ref = MODELS / f"{name}.onnx"
    rows = [evaluate(perturbed(name, weight, level), str(TEST), ref=ref, batch_size=180)["metrics"]
            for level in LEVELS]
    sqnr = [m["sqnr_db"] for m in rows]
    kl = [m["kl"] for m in rows]
    cosine = [m["cosine"] for m in rows]
    mean_abs = [m["mean_abs"] for m in rows]
    agreement = [m["agreement"] for m in rows]
    assert all(a > b for a, b in zip(sqnr, sqnr[1:], strict=False)), sqnr
    assert all(a < b for a, b in zip(kl, kl[1:], strict=False)), kl
    assert all(a > b for a, b in zip(cosine, cosine[1:], strict=False)), cosine
    assert all(a < b for a, b in zip(mean_abs, mean_abs[1:], strict=False)), mean_abs
    assert all(a >= b for a, b in zip(agreement, agreement[1:], strict=False)), agreement
    assert agreement[-1] < 1.0 and sqnr[0] > sqnr[-1] + 40  # 1.0 hurts; 0.003 is 50 dB quieter


@pytest.mark.parametrize("name", sorted(CASES))
def test_per_layer_names_the_perturbed_layer_as_first_jump(name):
    weight, output = CASES[name]
    result = evaluate(perturbed(name, weight, 0.1), str(TEST), ref=MODELS / f"{name}.onnx", per_layer=True,
                      batch_size=180)
    layers = result["per_layer"]
    assert layers["first_jump"] == output
    rows = layers["tensors"]
    index = next(i for i, row in enumerate(rows) if row["name"] == output)
    assert all(row["sqnr_infinite"] for row in rows[:index])  # upstream of the damage: bit-identical
    assert rows[index]["jump"] and 10 < rows[index]["sqnr_db"] < 40  # 0.1 relative noise: 18-30 dB here
    assert not layers["unmatched"]["model"] and not layers["unmatched"]["ref"]


def test_extra_nodes_are_unmatched_and_noise_is_found_downstream():
    model = serde.load(MODELS / "digits_mlp.onnx")
    graph = model.graph
    relu = graph.value("/net/net.2/Relu_output_0")
    noise = graph.add_initializer("noise", np.full((1, 128), 0.05, np.float32))
    scale = graph.add_initializer("one", np.ones((1,), np.float32))
    graph.insert_after(graph.value("/net/net.1/Gemm_output_0"), "Mul", [scale])  # extra, harmless
    added = graph.insert_after(relu, "Add", [noise])  # extra, adds an offset after the first Relu
    result = evaluate(model, str(TEST), ref=MODELS / "digits_mlp.onnx", per_layer=True, batch_size=360)
    layers = result["per_layer"]
    assert set(layers["unmatched"]["model"]) == {added.outputs[0].name, graph.ops[-2].outputs[0].name}
    assert layers["first_jump"] == "/net/net.3/Gemm_output_0"  # the first matched tensor after the Add
    assert {row["name"]: row["sqnr_infinite"] for row in layers["tensors"]}["/net/net.2/Relu_output_0"]


def test_fewer_nodes_mark_the_next_matched_tensor():
    model = serde.load(MODELS / "digits_mlp.onnx")
    graph = model.graph
    relu = graph.find_op("/net/net.4/Relu")
    graph.replace_all_uses(relu.outputs[0], relu.inputs[0])
    graph.remove_op(relu)
    result = evaluate(model, str(TEST), ref=MODELS / "digits_mlp.onnx", per_layer=True, batch_size=360)
    layers = result["per_layer"]
    assert layers["unmatched"]["ref"] == ["/net/net.4/Relu_output_0"] and not layers["unmatched"]["model"]
    assert layers["first_jump"] == "logits"


def test_value_map_from_change_record(tmp_path):
    model = serde.load(MODELS / "digits_cnn.onnx")
    graph = model.graph
    graph.rename_value(graph.value("/net/net.1/Relu_output_0"), "stem_out")
    record = {"passes": [{"pass": "a", "changes": {"value_map": {"/net/net.1/Relu_output_0": "tmp"}}},
                         {"pass": "b", "changes": {"value_map": {"tmp": "stem_out"}}}]}
    path = tmp_path / "changes.json"
    path.write_text(json.dumps(record))
    mapping = value_map_from_record(path)
    assert mapping["/net/net.1/Relu_output_0"] == "stem_out"
    ref = MODELS / "digits_cnn.onnx"
    plain = evaluate(model, None, ref=ref, per_layer=True, samples=8)["per_layer"]
    assert "stem_out" in plain["unmatched"]["model"]
    mapped = evaluate(model, None, ref=ref, per_layer=True, samples=8, value_map=mapping)["per_layer"]
    row = next(r for r in mapped["tensors"] if r["name"] == "stem_out")
    assert row["ref_name"] == "/net/net.1/Relu_output_0" and row["sqnr_infinite"]
    assert not mapped["unmatched"]["model"] and mapped["first_jump"] is None
