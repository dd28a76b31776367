"""convert-opset: old exports become quantizable, outputs stay as onnxruntime computes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphsurg import serde
from graphsurg.errors import BadInputError
from graphsurg.pipeline import make_pass, run_passes

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = Path(__file__).resolve().parents[2] / "models"


def outputs(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the light models carry an unused initializer: onnxruntime says so
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_an_ir_3_opset_9_model_becomes_quantizable():
    """SqueezeNet from the onnx wheel (IR version 3, opset 9): quantize refuses it as it comes; after
    convert-opset{version=13} it passes the full checker, computes the same, and quantizes."""
    original = (LIGHT / "light_squeezenet.onnx").read_bytes()
    model = serde.load(original)
    refused = run_passes(model, [make_pass("quantize{activations=none}")]).results[0]
    assert not refused.modified and "opset 9" in refused.summary
    result = run_passes(model, [make_pass("convert-opset{version=13}")]).results[0]
    assert result.changes["opset"] == [9, 13] and result.changes["ir_version"] == [3, 7]
    assert model.opset == 13 and [v.name for v in model.graph.inputs] == ["data_0"]
    saved = onnx.load_from_string(serde.to_bytes(model))
    assert [i.name for i in saved.graph.input] == ["data_0"]  # IR 7: weights are no longer listed
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    np.testing.assert_allclose(outputs(serde.to_bytes(model), x), outputs(original, x), rtol=1e-5, atol=1e-6)
    run_passes(model, [make_pass("fold-constants")])
    quantized = run_passes(model, [make_pass("quantize{activations=none}")]).results[0]
    assert quantized.modified and len(quantized.changes["quantized_ops"]) == 26  # every Conv
    assert outputs(serde.to_bytes(model), x).shape == (1, 1000, 1, 1)  # SqueezeNet ends in a global pool


def test_an_upgrade_keeps_the_outputs_bit_exact():
    model = serde.load(MODELS / "digits_cnn.onnx")
    result = run_passes(model, [make_pass("convert-opset{version=21}")]).results[0]
    assert result.changes["opset"] == [17, 21] and model.opset == 21
    x = np.load(MODELS / "digits_test.npz")["input"][:32]
    np.testing.assert_array_equal(outputs(serde.to_bytes(model), x),
                                  outputs((MODELS / "digits_cnn.onnx").read_bytes(), x))


def test_an_op_without_an_adapter_is_refused_with_the_converters_reason():
    model = serde.load(MODELS / "digits_cnn.onnx")
    with pytest.raises(BadInputError, match=r"from opset 17 to 13: No Adapter From Version \$15 for BatchNorm"):
        run_passes(model, [make_pass("convert-opset{version=13}")])


def test_the_same_version_changes_nothing():
    model = serde.load(MODELS / "digits_mlp.onnx")
    result = run_passes(model, [make_pass("convert-opset{version=17}")]).results[0]
    assert not result.modified and result.summary == "already at opset 17"


def test_a_version_the_converter_does_not_know_is_refused_in_one_line():
    model = serde.load(MODELS / "digits_mlp.onnx")
    with pytest.raises(BadInputError, match=r"cannot take this model from opset 17 to 99: invalid version") as info:
        run_passes(model, [make_pass("convert-opset{version=99}")])
    assert "\n" not in str(info.value)
