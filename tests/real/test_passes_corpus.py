"""Every pass on every model of the onnx wheel's corpus and the bundled models: the result is a model
that onnx's checker accepts (and onnxruntime loads, where it loads the original), or a refusal in
one line with the exit code of bad input. Never a crash, never a broken model."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from graphsurg import serde
from graphsurg.errors import EXIT_BAD_INPUT, GraphsurgError
from graphsurg.pipeline import make_pass, run_passes

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
MODELS = sorted(DATA.glob("*/*/model.onnx")) + sorted((DATA / "light").glob("*.onnx")) + \
    sorted((Path(__file__).resolve().parents[2] / "models").glob("*.onnx"))
SPECS = ["prune{sparsity=0.5}", "excise{ratio=0.5}", "graft{after=auto}", "drop-layer", "cleanup",
         "quantize{activations=none}", "head-swap{classes=5}", "convert-opset{version=21}"]
# what a user runs first: the light models make their weights with ConstantOfShape, and opset < 10
# has no QuantizeLinear
PREPARE = {"quantize{activations=none}": ["convert-opset{version=13}", "fold-constants"]}


def _loads_in_onnxruntime(model_bytes: bytes) -> bool:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - the corpus holds opset-6 models onnxruntime has no kernels for
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS)
def test_a_pass_on_every_corpus_model_edits_validly_or_refuses_in_one_line(spec, capsys):
    counts = {"modified": 0, "unchanged": 0, "refused": 0}
    for path in MODELS:
        original = path.read_bytes()
        model = serde.load(original, base_dir=str(path.parent))
        passes = [make_pass(s) for s in [*PREPARE.get(spec, ["fold-constants"]), spec]]
        try:
            result = run_passes(model, passes).results[-1]  # onnx's full checker runs after every edit
        except GraphsurgError as exc:
            assert exc.exit_code == EXIT_BAD_INPUT and "\n" not in str(exc), f"{path}: {exc}"
            counts["refused"] += 1
            continue
        counts["modified" if result.modified else "unchanged"] += 1
        if result.modified and _loads_in_onnxruntime(original):
            assert _loads_in_onnxruntime(serde.to_bytes(model)), f"{spec} on {path}: onnxruntime cannot load it"
    with capsys.disabled():
        print(f"\n{spec} on {len(MODELS)} models: {counts}")
    assert counts["modified"] > 0
