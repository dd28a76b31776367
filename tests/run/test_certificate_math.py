"""The certificate's arithmetic: surgery magnitude, degradation sign, recovery-curve fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from graphsurg import certificate, magnitude, serde
from graphsurg.ir import Model

MODELS = Path(__file__).resolve().parents[2] / "models"


def _load(name: str) -> Model:
    return serde.load(MODELS / f"{name}.onnx")


def test_magnitude_is_zero_for_an_untouched_model_and_exact_for_a_known_edit() -> None:
    model = _load("digits_mlp")
    before = magnitude.effective_params(model)
    total = magnitude.total_sq_norm(before)
    assert magnitude.summarize(magnitude.compare(before, before), total)["relative"] == 0.0
    gemm = next(op for op in model.graph.ops if op.op_type == "Gemm")
    weight = gemm.inputs[1]
    old = weight.const.numpy()
    noise = np.random.default_rng(0).normal(size=old.shape).astype(np.float32) * 0.01
    model.graph.set_const(weight, old + noise)
    summary = magnitude.summarize(magnitude.compare(before, magnitude.effective_params(model)), total)
    expected = np.linalg.norm(noise.astype(np.float64)) / np.sqrt(total)
    assert summary["relative"] == pytest.approx(expected, rel=1e-6)
    assert list(summary["per_layer"]) == [gemm.label]


def test_removed_and_new_layers_count_their_whole_norm() -> None:
    before = {("a", 1): magnitude.Param("a", "w", np.full(4, 2.0, np.float32))}
    after = {("b", 1): magnitude.Param("b", "v", np.full(9, 1.0, np.float32))}
    deltas = {d.layer: d for d in magnitude.compare(before, after)}
    assert deltas["a"].sq_change == 16.0 and deltas["b"].sq_change == 9.0


def test_degradation_is_positive_when_worse_in_either_direction() -> None:
    assert certificate.degradation("accuracy", 0.95, 0.90) == pytest.approx(0.05)
    assert certificate.degradation("loss", 0.10, 0.30) == pytest.approx(0.20)
    assert certificate.degradation("kl", 0.0, 0.01) == pytest.approx(0.01)
    assert certificate.degradation("accuracy", None, 0.9) is None


def test_recovery_curve_fit_recovers_a_known_law() -> None:
    points = [(n, 0.9 - 2.0 / np.sqrt(n)) for n in (100, 400, 1600, 6400)]
    fit = certificate.fit_recovery_curve(points)
    assert fit["a"] == pytest.approx(0.9) and fit["b"] == pytest.approx(-2.0) and fit["r2"] == pytest.approx(1.0)
    assert certificate.fit_recovery_curve(points[:1]) is None


def test_budget_verdict_uses_perfect_reference_for_fidelity_metrics() -> None:
    verdict = certificate.budget_verdict("agreement", 0.02, {"agreement": 1.0}, {"agreement": 0.97})
    assert verdict["degradation"] == pytest.approx(0.03) and not verdict["within"]
