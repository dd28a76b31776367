"""torchrun: two CPU processes with gloo train like one process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from graphsurg.cli import main

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
import _train_helpers as H  # noqa: E402

# The CNN student has BatchNormalization: its statistics are synchronized across ranks, so the check
# also covers sync BN. Labels plus distillation (from the MLP, far enough from the CNN for real
# gradients; near an optimum Adam would amplify rounding noise) exercise both loss terms.
ARGS = ["--teacher", str(H.MODELS / "digits_mlp.onnx"), "--data", str(H.TRAIN), "--labels", "labels",
        "--steps", "12", "--batch-size", "32", "--seed", "5", "--keep", "last", "--quiet"]


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_two_ranks_match_one_process(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    student = str(H.MODELS / "digits_cnn.onnx")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ranks = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "graphsurg", "recover", student,
                            *ARGS, "-o", str(tmp_path / "ddp.onnx"), "--record", str(tmp_path / "ddp.json")],
                           capture_output=True, text=True, env=env, timeout=300)
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    with pytest.raises(SystemExit) as done:
        main(["recover", student, *ARGS, "-o", str(tmp_path / "one.onnx"), "--record", str(tmp_path / "one.json")])
    assert not done.value.code
    ddp, one = _initializers(tmp_path / "ddp.onnx"), _initializers(tmp_path / "one.onnx")
    original = _initializers(H.MODELS / "digits_cnn.onnx")
    assert max(float(np.abs(ddp[n] - original[n]).max()) for n in one) > 1e-3  # both really trained
    assert max(float(np.abs(ddp[n] - one[n]).max()) for n in one) < 1e-4
    ddp_record, one_record = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("ddp", "one"))
    assert ddp_record["world_size"] == 2 and one_record["world_size"] == 1
    assert ddp_record["n_tune"] == one_record["n_tune"] == 12 * 32
    ddp_val = [h["val"]["objective"] for h in ddp_record["history"]]
    one_val = [h["val"]["objective"] for h in one_record["history"]]
    np.testing.assert_allclose(ddp_val, one_val, rtol=1e-4, atol=1e-6)
