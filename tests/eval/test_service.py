"""evaluate(): bundled accuracies, self-comparison, the PassContext service, test-data references."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from graphsurg import serde
from graphsurg.eval import evaluate
from graphsurg.services import DataSpec, build_context

MODELS = Path(__file__).resolve().parents[2] / "models"
ONNX_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
TEST = MODELS / "digits_test.npz"


def recorded_accuracy(model: str) -> float:
    """The test accuracy models/README.md records for `model`."""
    for line in (MODELS / "README.md").read_text().splitlines():
        match = re.match(rf"\|\s*`{model}\.onnx`\s*\|.*\|\s*([0-9.]+)\s*\|\s*$", line)
        if match:
            return float(match.group(1))
    raise AssertionError(f"models/README.md records no accuracy for {model}")


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn", "digits_vit"])
def test_bundled_accuracy_and_self_fidelity(name):
    path = MODELS / f"{name}.onnx"
    result = evaluate(path, str(TEST), ref=path)
    metrics = result["metrics"]
    assert result["samples"] == 360
    assert round(metrics["accuracy"], 4) == recorded_accuracy(name)
    assert metrics["agreement"] == 1.0 and metrics["kl"] == 0.0 and metrics["max_abs"] == 0.0
    assert metrics["sqnr_db"] is None and metrics["sqnr_infinite"] is True
    assert metrics["loss_kind"] == "cross_entropy" and metrics["loss"] > 0
    assert result["per_output"]["logits"]["sqnr_infinite"] is True
    assert result["size_bytes"] == path.stat().st_size


def test_no_reference_leaves_fidelity_null():
    result = evaluate(MODELS / "digits_mlp.onnx", TEST)
    assert result["ref"] is None and result["reference"] is None
    for key in ("agreement", "kl", "cosine", "sqnr_db", "max_abs", "mean_abs"):
        assert result["metrics"][key] is None
    assert result["latency_ms"] == {"median": None, "p90": None, "batch": None, "runs": 0, "warmup": 0}


def test_other_model_as_reference_degrades_fidelity():
    result = evaluate(MODELS / "digits_mlp.onnx", TEST, ref=MODELS / "digits_cnn.onnx")
    metrics = result["metrics"]
    assert 0.9 < metrics["agreement"] < 1.0 and metrics["kl"] > 0 and metrics["sqnr_db"] is not None
    assert metrics["sqnr_infinite"] is False and metrics["max_abs"] > 0


def test_pass_context_service_uses_the_dataspec():
    ctx = build_context(DataSpec(str(TEST), batch_size=100))
    model = serde.load(MODELS / "digits_cnn.onnx")
    result = ctx.evaluate(model, "test", ref=serde.load(MODELS / "digits_cnn.onnx"))
    assert round(result["metrics"]["accuracy"], 4) == recorded_accuracy("digits_cnn")
    assert result["metrics"]["agreement"] == 1.0
    assert result["size_bytes"] > 0


def test_test_data_outputs_are_the_reference():
    case = ONNX_DATA / "pytorch-converted" / "test_Conv2d"
    result = evaluate(case / "model.onnx", case)
    assert result["reference"] == "data" and result["ref"] is None
    assert result["metrics"]["cosine"] > 0.999999 and result["metrics"]["max_abs"] < 1e-4


def test_synthetic_data_with_dims_and_latency():
    result = evaluate(MODELS / "digits_vit.onnx", None, dims={"batch": 4}, samples=8, latency_runs=3, warmup=1,
                      ref=MODELS / "digits_vit.onnx")
    assert result["samples"] == 8 and result["data"].startswith("synthetic")
    assert result["latency_ms"]["batch"] == 4 and result["latency_ms"]["median"] > 0
    assert result["metrics"]["accuracy"] is None and result["metrics"]["agreement"] == 1.0


def test_reference_outputs_are_cached_and_keyed_by_content(monkeypatch):
    from graphsurg.eval import reference as reference_module

    reference_module.clear_cache()
    built = []
    real_runner = reference_module.Runner
    monkeypatch.setattr(reference_module, "Runner", lambda *a, **k: built.append(1) or real_runner(*a, **k))
    original = serde.load(MODELS / "digits_mlp.onnx")
    candidate = serde.load(MODELS / "digits_mlp.onnx")
    first = evaluate(candidate, str(TEST), ref=original, batch_size=100)
    second = evaluate(candidate, str(TEST), ref=original, batch_size=100)
    assert len(built) == 1 and first["metrics"] == second["metrics"]  # the second run replayed the cache
    assert first["ref_metrics"]["accuracy"] == first["metrics"]["accuracy"]
    weight = original.graph.initializers["net.5.weight"]
    original.graph.set_const(weight, weight.const.numpy() * 0.5)  # a changed reference is a new key
    third = evaluate(candidate, str(TEST), ref=original, batch_size=100)
    assert len(built) == 2 and third["metrics"]["max_abs"] > 0
    evaluate(candidate, str(TEST), ref=original, batch_size=50)  # other batching: another run
    assert len(built) == 3
    reference_module.clear_cache()


def test_several_test_data_sets_against_stored_outputs(tmp_path):
    from onnx import numpy_helper

    from graphsurg.eval import Runner

    model = MODELS / "digits_mlp.onnx"
    runner = Runner(model)
    rng = np.random.default_rng(0)
    for index, count in enumerate((3, 5)):
        folder = tmp_path / f"test_data_set_{index}"
        folder.mkdir()
        x = rng.random((count, 1, 8, 8), dtype=np.float32)
        logits = runner.run({"input": x})["logits"]
        if index == 1:
            logits = logits + 0.01  # the stored reference of the second set is slightly off
        (folder / "input_0.pb").write_bytes(numpy_helper.from_array(x, "input").SerializeToString())
        (folder / "output_0.pb").write_bytes(numpy_helper.from_array(logits, "logits").SerializeToString())
    result = evaluate(model, tmp_path)
    assert result["samples"] == 8 and result["reference"] == "data"
    assert result["metrics"]["max_abs"] == pytest.approx(0.01, rel=1e-3)
    assert result["metrics"]["mean_abs"] == pytest.approx(0.01 * 5 / 8, rel=1e-3)


SIMPLE_CASES = sorted(p.name for p in (ONNX_DATA / "simple").iterdir() if (p / "model.onnx").exists())


@pytest.mark.parametrize("case", SIMPLE_CASES)
def test_onnx_simple_corpus_matches_stored_outputs_or_says_why(case):
    """Every small corpus model either reproduces its stored outputs or fails as bad input (e.g. an
    op this onnxruntime lacks): never a crash."""
    from graphsurg.errors import BadInputError

    folder = ONNX_DATA / "simple" / case
    try:
        result = evaluate(folder / "model.onnx", folder)
    except BadInputError as exc:
        assert "onnxruntime cannot load" in str(exc)
        return
    entries = result["per_output"].values()
    assert result["reference"] == "data"
    for entry in entries:
        assert entry.get("exact_match", 1.0) == 1.0
        assert entry["max_abs"] is None or entry["max_abs"] <= 1e-4


def test_size_on_disk_counts_external_data(tmp_path):
    from graphsurg.eval.service import size_bytes

    target = tmp_path / "cnn.onnx"
    serde.save(serde.load(MODELS / "digits_cnn.onnx"), target, external_data=True, size_threshold=256)
    data = tmp_path / "cnn.onnx.data"
    assert data.stat().st_size > 0
    assert size_bytes(target) == target.stat().st_size + data.stat().st_size
    result = evaluate(target, str(TEST))
    assert result["size_bytes"] == target.stat().st_size + data.stat().st_size
    assert round(result["metrics"]["accuracy"], 4) == recorded_accuracy("digits_cnn")
