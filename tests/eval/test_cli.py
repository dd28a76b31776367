"""`graphsurg eval`: the JSON contract, acceptance numbers, exit codes, progress bar behaviour."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from graphsurg import serde
from graphsurg.cli import main
from graphsurg.eval import progress as progress_module
from graphsurg.eval.progress import Progress

MODELS = Path(__file__).resolve().parents[2] / "models"
TEST = str(MODELS / "digits_test.npz")
CONTRACT_METRICS = {"loss", "accuracy", "agreement", "kl", "cosine", "sqnr_db", "max_abs", "mean_abs"}


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(["eval", *args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def recorded_accuracy(model: str) -> float:
    text = (MODELS / "README.md").read_text()
    return float(re.search(rf"`{model}\.onnx`.*\|\s*([0-9.]+)\s*\|\s*$", text, re.M).group(1))


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn", "digits_vit"])
def test_json_contract_bundled_accuracy_and_self_reference(capsys, name):
    model = str(MODELS / f"{name}.onnx")
    code, out, err = run_cli(capsys, model, "--ref", model, "--data", TEST, "--json", "--latency-runs", "3")
    assert code == 0, err
    result = json.loads(out)
    assert {"model", "ref", "samples", "metrics", "per_output", "latency_ms", "size_bytes"} <= set(result)
    assert result["model"] == model and result["ref"] == model and result["samples"] == 360
    metrics = result["metrics"]
    assert CONTRACT_METRICS <= set(metrics)
    assert round(metrics["accuracy"], 4) == recorded_accuracy(name)
    assert metrics["agreement"] == 1.0 and metrics["kl"] == 0.0
    assert metrics["sqnr_db"] is None and metrics["sqnr_infinite"] is True  # documented: infinite = null + flag
    assert set(result["latency_ms"]) >= {"median", "p90", "batch"} and result["latency_ms"]["batch"] == 64
    assert result["size_bytes"] == Path(model).stat().st_size
    assert CONTRACT_METRICS <= set(result["per_output"]["logits"])


def test_text_output_and_output_file(capsys, tmp_path):
    target = tmp_path / "eval.json"
    code, out, _ = run_cli(capsys, str(MODELS / "digits_cnn.onnx"), "--data", TEST, "-o", str(target),
                           "--latency-runs", "0")
    assert code == 0
    assert "accuracy 0.9972" in out and "fidelity   n/a (no --ref)" in out and "latency    not measured" in out
    assert json.loads(target.read_text())["latency_ms"]["median"] is None


def _bad_npz(tmp_path, **arrays) -> str:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("arrays, fragment", [
    ({"pixels": np.zeros((4, 1, 8, 8), np.float32)}, "no array for model input 'input'"),
    ({"input": np.zeros((4, 1, 8, 8), np.float64)}, "input 'input' is float64"),
    ({"input": np.zeros((4, 64), np.float32)}, "input 'input' has shape [4, 64]"),
])
def test_mismatched_data_exits_2_naming_input_and_expectation(capsys, tmp_path, arrays, fragment):
    code, out, err = run_cli(capsys, str(MODELS / "digits_mlp.onnx"), "--data", _bad_npz(tmp_path, **arrays))
    assert code == 2 and not out
    assert fragment in err and "the model expects float32 [batch, 1, 8, 8]" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_providers(capsys):
    model = str(MODELS / "digits_mlp.onnx")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        code, _, err = run_cli(capsys, model, "--provider", "cuda", "--latency-runs", "0")
        assert code == 2 and "no CUDA provider" in err
        code, out, err = run_cli(capsys, model, "--provider", "auto", "--latency-runs", "0", "--json")
        assert code == 0 and "using CPU" in err and json.loads(out)["provider"] == "cpu"
        code, _, err = run_cli(capsys, model, "--provider", "auto", "--latency-runs", "0", "--quiet")
        assert code == 0 and not err
    code, out, _ = run_cli(capsys, model, "--provider", "cpu", "--threads", "1", "--latency-runs", "0", "--json")
    assert code == 0 and json.loads(out)["provider"] == "cpu"


def test_per_layer_on_a_perturbed_file(capsys, tmp_path):
    model = serde.load(MODELS / "digits_cnn.onnx")
    value = model.graph.initializers["net.3.0.weight"]
    array = value.const.numpy()
    noise = np.random.default_rng(1).standard_normal(array.shape) * array.std() * 0.1
    model.graph.set_const(value, (array + noise).astype(np.float32))
    damaged = tmp_path / "damaged.onnx"
    serde.save(model, damaged)
    ref = str(MODELS / "digits_cnn.onnx")
    code, out, err = run_cli(capsys, str(damaged), "--ref", ref, "--data", TEST, "--per-layer", "--json",
                             "--latency-runs", "0")
    assert code == 0, err
    assert json.loads(out)["per_layer"]["first_jump"] == "/net/net.3/net.3.0/Conv_output_0"
    code, out, _ = run_cli(capsys, str(damaged), "--ref", ref, "--data", TEST, "--per-layer", "--latency-runs", "0")
    assert "/net/net.3/net.3.0/Conv_output_0" in out.split("<- first jump")[0].splitlines()[-1]


def test_usage_errors(capsys):
    model = str(MODELS / "digits_mlp.onnx")
    assert run_cli(capsys, model, "--per-layer")[0] == 2
    code, _, err = run_cli(capsys, model, "--dim", "batch")
    assert code == 2 and "NAME=SIZE" in err
    code, _, err = run_cli(capsys, str(MODELS / "missing.onnx"))
    assert code == 2 and "missing.onnx" in err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal(monkeypatch):
    monkeypatch.setattr(progress_module, "_SHOW_AFTER_S", 0.0)
    monkeypatch.setattr(progress_module, "_REFRESH_S", 0.0)
    terminal, pipe = _Terminal(), io.StringIO()
    for stream, enabled in ((terminal, True), (pipe, True)):
        with Progress(4, "eval", enabled=enabled, stream=stream) as bar:
            for _ in range(4):
                bar.advance()
    assert "eval [" in terminal.getvalue() and "4/4" in terminal.getvalue()
    assert pipe.getvalue() == ""  # not a TTY: silent
    quiet = _Terminal()
    with Progress(4, enabled=False, stream=quiet) as bar:
        bar.advance(4)
    assert quiet.getvalue() == ""  # --quiet: silent
