"""`graphsurg diff --data`: per-output fidelity and per-matched-tensor SQNR through the eval API."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from graphsurg.cli import main
from graphsurg.diff import diff_files
from graphsurg.diff.numeric import compare_numeric

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
import _diff_edits as E  # noqa: E402

DATA = str(E.MODELS / "digits_test.npz")
MLP = str(E.MODELS / "digits_mlp.onnx")


def numeric(path_b: str, tolerance: float = 1e-4) -> tuple:
    report = diff_files(MLP, path_b)
    report.numeric = compare_numeric(report, DATA, tolerance=tolerance)
    return report, report.numeric


def test_a_renamed_copy_agrees_exactly(tmp_path):
    renamed = E.save(E.rename_nodes(E.load("digits_mlp"), values=True), tmp_path / "renamed.onnx")
    report, result = numeric(str(renamed))
    assert report.identical and result["within_tolerance"] and result["samples"] == 360
    (output,) = result["outputs"]
    assert output["name"] == "logits" and output["sqnr_infinite"] and output["max_abs_diff"] == 0
    assert output["agreement"] == 1.0
    # every intermediate op output is compared under its new name
    assert len(result["tensors"]) == 5 and all(row["name"] != row["after_name"] for row in result["tensors"])
    assert all(row["sqnr_infinite"] for row in result["tensors"])
    assert result["accuracy"]["a"] == result["accuracy"]["b"] == pytest.approx(0.9722, abs=1e-4)


def test_a_weight_change_shows_where_the_error_starts(tmp_path):
    changed = E.save(E.scale_weight(E.load("digits_mlp"), "net.3.weight", 1.01), tmp_path / "changed.onnx")
    report, result = numeric(str(changed))
    assert not report.identical and not result["within_tolerance"]
    rows = {row["name"]: row for row in result["tensors"]}
    for upstream in ("/net/net.0/Flatten_output_0", "/net/net.1/Gemm_output_0", "/net/net.2/Relu_output_0"):
        assert rows[upstream]["sqnr_infinite"]
    first = rows["/net/net.3/Gemm_output_0"]
    assert not first["sqnr_infinite"] and 30 < first["sqnr_db"] < 50  # a 1 % weight change is about 40 dB
    (output,) = result["outputs"]
    assert output["sqnr_db"] is not None and output["max_abs_diff"] > 0


def test_tolerance_decides_the_exit_code(tmp_path, capsys):
    """Structurally identical models that differ by float rounding (weights nudged by one ulp) pass
    a loose tolerance and fail an exact one."""
    base = E.load("digits_mlp")
    nudged = E.scale_weight(base, "net.5.weight", float(np.float32(1) + np.finfo(np.float32).eps))
    path = E.save(nudged, tmp_path / "nudged.onnx")
    for tolerance, expected in (("1e-3", True), ("0", False)):
        with pytest.raises(SystemExit) as exit_info:
            main(["diff", MLP, str(path), "--data", DATA, "--json", "--tolerance", tolerance])
        report = json.loads(capsys.readouterr().out)
        assert report["numeric"]["within_tolerance"] is expected
        assert exit_info.value.code == 1  # the weight itself still differs structurally


def test_identical_models_with_data_exit_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["diff", MLP, MLP, "--data", DATA, "--no-tensors"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert out.splitlines()[0] == "identical (6 ops matched; outputs agree within tolerance)"
    assert "output logits  SQNR inf dB  max|diff| 0" in out


def test_a_new_head_with_fewer_classes_is_measured_where_it_can_be(tmp_path):
    head = E.save(E.replace_gemm_head(E.load("digits_mlp"), "/net/net.5/Gemm", classes=5), tmp_path / "head.onnx")
    report, result = numeric(str(head))
    (output,) = result["outputs"]
    assert not output["within_tolerance"] and output["note"] == "shape [64, 5] vs reference [64, 10]"
    assert result["accuracy"]["a"] == pytest.approx(0.9722, abs=1e-4) and result["accuracy"]["b"] is None
    assert "5 classes" in result["accuracy"]["notes"]["b"]
    assert len(result["tensors"]) == 5 and all(row["sqnr_infinite"] for row in result["tensors"])
