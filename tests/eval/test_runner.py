"""The onnxruntime runner: providers (with onnxruntime's real provider list), exposure, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from graphsurg import serde
from graphsurg.errors import BadInputError, UsageError
from graphsurg.eval import Runner, available_providers, choose_provider, intermediate_names, open_dataset

MODELS = Path(__file__).resolve().parents[2] / "models"
CNN = MODELS / "digits_cnn.onnx"
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


def test_available_providers_are_onnxruntimes():
    assert available_providers() == ort.get_available_providers()
    assert "CPUExecutionProvider" in available_providers()


def test_cpu_provider():
    choice = choose_provider("cpu")
    assert choice.providers == ("CPUExecutionProvider",) and choice.note is None
    runner = Runner(CNN, provider="cpu")
    assert runner.provider == "cpu" and runner.session.get_providers()[0] == "CPUExecutionProvider"


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA; the error path needs one without")
def test_cuda_unavailable_is_a_clear_error():
    with pytest.raises(BadInputError, match=r"--provider cuda: .* no CUDA provider \(available: .*CPUExecution"):
        Runner(CNN, provider="cuda")


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA; auto would not fall back")
def test_auto_falls_back_to_cpu_and_says_so():
    runner = Runner(CNN, provider="auto")
    assert runner.provider == "cpu"
    assert "CUDA is not available" in runner.note and "using CPU" in runner.note


def test_auto_prefers_cuda_when_listed():
    listed = choose_provider("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert listed.providers[0] == "CUDAExecutionProvider" and listed.note is None
    with pytest.raises(UsageError, match="choose cpu, cuda or auto"):
        choose_provider("tpu")


def test_runner_from_ir_equals_runner_from_path():
    model = serde.load(CNN)
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    from_ir = Runner(model, threads=1).run({"input": x})
    from_path = Runner(CNN, threads=1).run({"input": x})
    np.testing.assert_array_equal(from_ir["logits"], from_path["logits"])


def test_exposed_intermediates_leave_the_model_unchanged():
    model = serde.load(CNN)
    before = [v.name for v in model.graph.outputs]
    runner = Runner(model, expose=True)
    assert [v.name for v in model.graph.outputs] == before
    assert runner.output_names == ["logits"] and runner.exposed == intermediate_names(model)
    x = np.zeros((2, 1, 8, 8), np.float32)
    outputs = runner.run({"input": x})
    assert set(outputs) == {"logits", *runner.exposed}
    assert outputs[runner.exposed[0]].shape == (2, 16, 8, 8)


def test_iterate_over_dataset():
    runner = Runner(CNN)
    data = open_dataset(MODELS / "digits_test.npz", runner.signature)
    sizes = [(b.size, out["logits"].shape) for b, out in runner.iterate(data, 128)]
    assert sizes == [(128, (128, 10)), (128, (128, 10)), (104, (104, 10))]


def test_unloadable_model_is_bad_input(tmp_path):
    model = serde.load(CNN)
    next(op for op in model.graph.ops if op.op_type == "Conv").op_type = "NoSuchOp"
    with pytest.raises(BadInputError, match="onnxruntime cannot load"):
        Runner(model)
    with pytest.raises(BadInputError, match="no such file"):
        Runner(tmp_path / "missing.onnx")


def test_latency_excludes_warmup():
    runner = Runner(CNN, threads=1)
    result = runner.latency({"input": np.zeros((8, 1, 8, 8), np.float32)}, runs=5, warmup=2)
    assert result["batch"] == 8 and result["runs"] == 5 and result["warmup"] == 2
    assert 0 < result["median"] <= result["p90"]


def test_large_models_go_through_a_file_with_external_data(monkeypatch):
    from graphsurg.eval import runner as runner_module

    monkeypatch.setattr(runner_module, "_INLINE_LIMIT", 0)  # treat the CNN as too big for one protobuf
    model = serde.load(CNN)
    runner = Runner(model, expose=["/net/net.1/Relu_output_0"])
    folder = Path(runner._tmp.name)
    assert (folder / "model.onnx.data").stat().st_size > 0  # weights went to an external file
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    outputs = runner.run({"input": x})
    np.testing.assert_allclose(outputs["logits"], Runner(CNN).run({"input": x})["logits"], rtol=1e-5, atol=1e-6)
    assert [v.name for v in model.graph.outputs] == ["logits"]
