"""`graphsurg recover` on the command line: outputs, record, errors, and life without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphsurg.cli import main

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
import _train_helpers as H  # noqa: E402

MLP, CNN = str(H.MODELS / "digits_mlp.onnx"), str(H.MODELS / "digits_cnn.onnx")


def _run(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code or 0, capsys.readouterr().err


def test_recover_writes_a_checked_model_and_its_record(tmp_path, capsys):
    out, record = tmp_path / "out.onnx", tmp_path / "record.json"
    code, err = _run(["recover", MLP, "--teacher", CNN, "--data", str(H.TRAIN), "--labels", "labels",
                      "--epochs", "2", "--alpha", "0.5", "-o", str(out), "--record", str(record)], capsys)
    assert code == 0, err
    assert "before: n_tune=0" in err and "epoch 2:" in err and "wrote" in err
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    x = np.load(H.TEST)["input"]
    logits = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert logits.shape == (len(x), 10)
    data = json.loads(record.read_text())
    assert data["paths"]["output"] == str(out) and data["paths"]["teacher"] == CNN
    assert [h["n_tune"] for h in data["history"]] == [0, 1088, 2176]
    assert data["objective"]["task"] == "cross_entropy" and data["objective"]["distill"] == {"logits": "kl"}


@pytest.mark.parametrize("args, message", [
    (["--data", str(H.TRAIN)], "needs a teacher"),
    (["--data", str(H.TRAIN), "--labels", "labels", "--train", "head"], "--changes"),
    (["--data", str(H.TRAIN), "--labels", "nope"], "no labels array"),
    (["--data", str(H.TRAIN), "--teacher", CNN, "--epochs", "1", "--steps", "3"], "not both"),
])
def test_usage_errors_exit_2(tmp_path, capsys, args, message):
    code, err = _run(["recover", MLP, "-o", str(tmp_path / "o.onnx"), *args], capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_without_torch_recover_says_how_to_get_it(tmp_path):
    """graphsurg imports and its other commands work without torch; recover exits 2 with a hint."""
    block = "import sys; sys.modules['torch'] = None; from graphsurg.cli import main; main(sys.argv[1:])"
    recover = subprocess.run([sys.executable, "-c", block, "recover", MLP, "--teacher", CNN, "--data", str(H.TRAIN),
                              "-o", str(tmp_path / "o.onnx")], capture_output=True, text=True)
    assert recover.returncode == 2 and "install the train extra" in recover.stderr
    inspect = subprocess.run([sys.executable, "-c", block, "inspect", MLP], capture_output=True, text=True)
    assert inspect.returncode == 0, inspect.stderr
