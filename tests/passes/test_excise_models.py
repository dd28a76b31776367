"""excise and prune on the bundled models and the onnx wheel's pytorch-converted corpus: the
results pass onnx's full check (run_passes runs it after every modifying pass), run in
onnxruntime, reach the sparsity asked for, and keep exactly the parameters the widths imply."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from graphsurg import serde
from graphsurg.cli import main
from graphsurg.pipeline import make_pass, run_passes

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(onnx.__file__).parent / "backend" / "test" / "data" / "pytorch-converted"
WEIGHTED = sorted(p.name for p in CORPUS.iterdir()
                  if any(n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")
                         for n in onnx.load(str(p / "model.onnx")).graph.node)
                  and onnx.load(str(p / "model.onnx")).graph.initializer)


def kept(count: int, ratio: float) -> int:
    return count - math.floor(ratio * count + 0.5)


# Parameter counts of the bundled architectures as functions of their widths (models/build.py);
# the count at the original widths is checked too, so the formulas cannot drift from the files.
def mlp_params(h1=128, h2=64):
    return 64 * h1 + h1 + h1 * h2 + h2 + h2 * 10 + 10


def cnn_params(c1=16, c2=32):  # conv weights (no bias) + 4 BatchNorm vectors each, then the head
    return (c1 * 9 + 4 * c1) + 2 * (c1 * c1 * 9 + 4 * c1) + (c2 * c1 * 9 + 4 * c2) + 10 * c2 + 10


def vit_params(dim=32, heads=4, hidden=64, head_dim=8):
    width = heads * head_dim
    block = 2 * dim + 3 * (dim * width + width) + (width * dim + dim) + 2 * dim + (dim * hidden + hidden) \
        + (hidden * dim + dim)
    return (dim * 4 + dim) + 16 * dim + 2 * block + 2 * dim + 10 * dim + 10


EXPECTED = {
    "digits_mlp": lambda r: mlp_params(kept(128, r), kept(64, r)),
    "digits_cnn": lambda r: cnn_params(kept(16, r), kept(32, r)),
    "digits_vit": lambda r: vit_params(kept(32, r), kept(4, r), kept(64, r)),
}


def run_digits(model, path: Path) -> np.ndarray:
    session = ort.InferenceSession(serde.to_bytes(model), providers=["CPUExecutionProvider"])
    x = np.load(path.parent / "digits_test.npz")["input"][:16]
    return session.run(None, {"input": x})[0]


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_bundled_excise_keeps_the_parameters_the_widths_imply(bundled_model, ratio):
    name = bundled_model.stem
    model = serde.load(bundled_model)
    assert model.parameter_count() == EXPECTED[name](0.0)
    result = run_passes(model, [make_pass(f"excise{{ratio={ratio}}}")]).results[0]
    assert model.parameter_count() == EXPECTED[name](ratio), result.summary
    assert run_digits(model, bundled_model).shape == (16, 10)
    # Two-sided layers scale as (1 - r)^2 up to rounding; the whole model a little above it.
    assert (1 - ratio) ** 2 <= model.parameter_count() / EXPECTED[name](0.0) < 1 - ratio


def test_bundled_vit_heads_and_reshape_constants():
    model = serde.load(ROOT / "models" / "digits_vit.onnx")
    result = run_passes(model, [make_pass("excise{ratio=0.5}")]).results[0]
    heads = [g for g in result.changes["groups"] if g["kind"] == "heads"]
    assert len(heads) == 2 and all(g["units"] == 4 and len(g["removed_units"]) == 2 for g in heads)
    shapes = sorted({tuple(model.graph.const_value(op.inputs[1]).tolist()) for op in model.graph.ops
                     if op.op_type == "Reshape"})
    assert shapes == [(-1, 16, 2, 8), (-1, 16, 16)]


LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


@pytest.mark.parametrize(("name", "most"), [("light_resnet50", 0.3), ("light_densenet121", 0.32),
                                            ("light_inception_v2", 0.3), ("light_squeezenet", 0.4),
                                            ("light_shufflenet", 0.4)])
def test_real_architectures_from_the_onnx_wheel(name, most):
    """ResNet-50 (residual), DenseNet-121 (concat chains), Inception-v2 (branch concats),
    SqueezeNet (fire modules), ShuffleNet (grouped convs, channel shuffle by Reshape/Transpose):
    weights made by ConstantOfShape, folded first, then excised at ratio 0.5."""
    model = serde.load(LIGHT / f"{name}.onnx")
    run_passes(model, [make_pass("fold-constants")])
    before = model.parameter_count()
    result = run_passes(model, [make_pass("excise{ratio=0.5}")]).results[0]
    assert model.parameter_count() / before < most, result.summary
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the folded shape initializers are unused: onnxruntime says so
    session = ort.InferenceSession(serde.to_bytes(model), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    assert session.run(None, {session.get_inputs()[0].name: x})[0].shape[:2] == (1, 1000)


def session_or_none(model) -> ort.InferenceSession | None:
    try:
        return ort.InferenceSession(serde.to_bytes(model), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime lacks some opset-6 kernels (Gemm-6)
        if "NOT_IMPLEMENTED" not in str(exc):
            raise
        return None


@pytest.mark.parametrize("case", WEIGHTED)
def test_corpus_excise_and_prune(case):
    folder = CORPUS / case
    feeds = {"0": numpy_helper.to_array(onnx.load_tensor(str(folder / "test_data_set_0" / "input_0.pb")))}
    expected = numpy_helper.to_array(onnx.load_tensor(str(folder / "test_data_set_0" / "output_0.pb")))
    model = serde.load(folder / "model.onnx")
    runs = session_or_none(model) is not None
    before = model.parameter_count()
    result = run_passes(model, [make_pass("excise{ratio=0.5}")]).results[0]
    # One layer between the graph's input and output: nothing can go, and the record says why.
    assert not result.modified and model.parameter_count() == before
    assert result.refused and all(r["reason"] for r in result.refused)
    if runs:
        np.testing.assert_allclose(session_or_none(model).run(None, feeds)[0], expected, rtol=1e-4, atol=1e-5)
    result = run_passes(model, [make_pass("prune{sparsity=0.8,ops=Conv,ConvTranspose,Gemm,MatMul}")]).results[0]
    zeros, total = result.changes["zeros"], result.changes["weights"]
    assert abs(zeros / total - 0.8) <= max(0.005, 0.5 / total)  # exact up to one element
    if runs:
        assert session_or_none(model).run(None, feeds)[0].shape == expected.shape


def test_cli_writes_the_change_record(tmp_path, capsys):
    out, changes = tmp_path / "cnn.onnx", tmp_path / "changes.json"
    with pytest.raises(SystemExit) as done:
        main(["apply", str(ROOT / "models" / "digits_cnn.onnx"), "-o", str(out), "-p", "excise{ratio=0.5}",
              "--changes", str(changes)])
    assert done.value.code == 0
    record = json.loads(changes.read_text())["passes"][0]
    groups = record["changes"]["groups"]
    assert [g["status"] for g in groups] == ["excised", "excised", "excised", "refused"]
    assert groups[0]["layers"] == ["/net/net.0/net.0.0/Conv", "/net/net.2/conv2/conv2.0/Conv"]
    assert all(len(v) == 8 for v in groups[0]["removed"].values())
    assert record["refused"] == [{"target": "group /net/net.7/Gemm", "reason": "they reach the graph output 'logits'"}]
    assert "graph output 'logits'" in capsys.readouterr().err  # apply prints every reason
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


def test_cli_strict_exits_1_when_nothing_was_excised(tmp_path):
    with pytest.raises(SystemExit) as done:
        main(["apply", str(ROOT / "models" / "digits_cnn.onnx"), "-o", str(tmp_path / "o.onnx"),
              "-p", "excise{target=heads}", "--strict"])
    assert done.value.code == 1
