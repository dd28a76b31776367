"""Every pass on every model of the onnx wheel's corpus and the bundled models: the result is a model
that onnx's checker accepts (and onnxruntime loads, where it loads the original), or a refusal in
one line with the exit code of bad input. Never a crash, never a broken model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from graphsurg.passes.widen import eligible_nodes

from graphsurg import serde
from graphsurg.errors import EXIT_BAD_INPUT, GraphsurgError
from graphsurg.pipeline import make_pass, run_passes

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
ROOT = Path(__file__).resolve().parents[2]
MODELS = sorted(DATA.glob("*/*/model.onnx")) + sorted((DATA / "light").glob("*.onnx")) + \
    sorted((ROOT / "models").glob("*.onnx")) + sorted((ROOT / "tests" / "fixtures" / "dynamo").glob("*/model.onnx"))
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


# ---- the passes that must not change the function, on the models that come with inputs -----------

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
import test_roundtrip_corpus as corpus  # noqa: E402

RUNNABLE = [c for c in corpus.CASES if (c.data_dir is not None or c.kind == "bundled")
            and c.name not in corpus.ORT_CANNOT_RUN]
PRESERVING = ["graft{after=auto}", "graft{after=auto,count=2}", "widen", "fold-constants",
              "convert-opset{version=21}"]


def _preserving_pass(spec: str, model) -> list:
    """The pass as a user would run it; widen on the first layer it can grow (it needs a node)."""
    if spec != "widen":
        return [make_pass(spec)]
    serde.infer_shapes(model)
    eligible = eligible_nodes(model.graph)
    return [make_pass(f"widen{{node={eligible[0][0].label},split=zero}}")] if eligible else []


def _close(want, got) -> bool:
    """Float outputs within 1e-5 (a widened or grafted layer may sum in another order)."""
    want, got = np.asarray(want), np.asarray(got)
    return want.dtype.kind == "f" and want.shape == got.shape and np.allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("spec", PRESERVING)
def test_function_preserving_passes_keep_onnxruntime_outputs_on_real_models(spec, run_ort, same_outputs, capsys):
    compared = 0
    for case in RUNNABLE:
        feeds = corpus.case_feeds(case)
        expected = run_ort(case.path, feeds)
        model = serde.load(case.path)
        try:
            result = run_passes(model, _preserving_pass(spec, model)).results
        except GraphsurgError as exc:
            assert exc.exit_code == EXIT_BAD_INPUT, f"{case}: {exc}"
            continue
        if not result or not result[0].modified:
            continue
        for want, got in zip(expected, run_ort(serde.to_bytes(model), feeds), strict=True):
            assert same_outputs(want, got) or _close(want, got), f"{spec} on {case}"
        compared += 1
    with capsys.disabled():
        print(f"\n{spec}: outputs compared on {compared} of {len(RUNNABLE)} runnable models")
    assert compared > 0
