"""Metric arithmetic against direct numpy formulas, streaming equals one-shot, nulls where they apply."""

from __future__ import annotations

import math

import numpy as np
import pytest

from graphsurg.errors import BadInputError
from graphsurg.eval.metrics import ErrorStats, Fidelity, TaskMetrics, sqnr_db, worst_over_outputs

RNG = np.random.default_rng(0)
LOGITS = (RNG.standard_normal((200, 10)) * 3).astype(np.float32)
NOISY = LOGITS + RNG.standard_normal(LOGITS.shape).astype(np.float32) * 0.5
LABELS = RNG.integers(0, 10, 200)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def test_fidelity_matches_formulas_and_streams():
    whole, parts = Fidelity("y"), Fidelity("y")
    whole.update(NOISY, LOGITS)
    for start in range(0, 200, 64):
        parts.update(NOISY[start:start + 64], LOGITS[start:start + 64])
    got = whole.result()
    for key, value in parts.result().items():
        assert value == pytest.approx(got[key], rel=1e-9, abs=1e-12), key
    diff = NOISY.astype(np.float64) - LOGITS
    lr, lo = log_softmax(LOGITS), log_softmax(NOISY)
    cos = (NOISY * LOGITS).sum(1) / np.linalg.norm(NOISY, axis=1) / np.linalg.norm(LOGITS, axis=1)
    assert got["agreement"] == pytest.approx(np.mean(NOISY.argmax(1) == LOGITS.argmax(1)))
    assert got["kl"] == pytest.approx(np.mean((np.exp(lr) * (lr - lo)).sum(1)), rel=1e-6)
    assert got["cosine"] == pytest.approx(cos.mean(), rel=1e-6)
    assert got["sqnr_db"] == pytest.approx(10 * np.log10((LOGITS.astype(np.float64) ** 2).sum() / (diff ** 2).sum()))
    assert got["max_abs"] == pytest.approx(np.abs(diff).max()) and got["mean_abs"] == pytest.approx(np.abs(diff).mean())
    assert got["sqnr_infinite"] is False


def test_identical_outputs_have_infinite_sqnr_reported_as_null_and_flag():
    fidelity = Fidelity("y")
    fidelity.update(LOGITS, LOGITS)
    got = fidelity.result()
    assert got["sqnr_db"] is None and got["sqnr_infinite"] is True
    assert got["agreement"] == 1.0 and got["kl"] == 0.0 and got["max_abs"] == 0.0
    assert sqnr_db(1.0, 0.0) == math.inf and sqnr_db(0.0, 1.0) is None and sqnr_db(100.0, 1.0) == 20.0


def test_probabilities_are_not_softmaxed_again():
    probs = np.exp(log_softmax(LOGITS)).astype(np.float32)
    noisy = np.exp(log_softmax(NOISY)).astype(np.float32)
    fidelity = Fidelity("p")
    fidelity.update(noisy, probs)
    lr, lo = np.log(probs.astype(np.float64)), np.log(noisy.astype(np.float64))
    assert fidelity.probabilities
    assert fidelity.result()["kl"] == pytest.approx(np.mean((probs * (lr - lo)).sum(1)), rel=1e-4)
    task = TaskMetrics("p")
    task.update(probs, LABELS)
    assert task.result()["loss"] == pytest.approx(-np.mean(lr[np.arange(200), LABELS]), rel=1e-5)


def test_cross_entropy_accuracy_and_streaming():
    task = TaskMetrics("y")
    for start in range(0, 200, 37):
        task.update(LOGITS[start:start + 37], LABELS[start:start + 37])
    got = task.result()
    assert got["loss"] == pytest.approx(-np.mean(log_softmax(LOGITS)[np.arange(200), LABELS]), rel=1e-9)
    assert got["accuracy"] == np.mean(LOGITS.argmax(1) == LABELS) and got["loss_kind"] == "cross_entropy"


def test_channel_axis_classification_and_regression():
    maps = RNG.standard_normal((2, 4, 3, 3)).astype(np.float32)
    labels = RNG.integers(0, 4, (2, 3, 3))
    assert TaskMetrics.applies(maps, labels) == "classification"
    task = TaskMetrics("seg")
    task.update(maps, labels)
    rows = np.moveaxis(maps, 1, -1).reshape(-1, 4)
    assert task.result()["accuracy"] == np.mean(rows.argmax(1) == labels.reshape(-1))
    target = RNG.standard_normal((5, 3)).astype(np.float32)
    guess = target + 0.1
    assert TaskMetrics.applies(guess, target) == "regression"
    reg = TaskMetrics("r")
    reg.update(guess, target)
    got = reg.result()
    assert got["loss_kind"] == "mse" and got["accuracy"] is None and got["mse"] == pytest.approx(0.01, rel=1e-4)


def test_labels_that_fit_nothing_or_overflow():
    assert TaskMetrics.applies(LOGITS, LABELS[:10]) is None  # other sample count
    assert TaskMetrics.applies(LOGITS[:, :1], LABELS) is None  # a single column is not a class axis
    with pytest.raises(BadInputError, match="labels hold class 12 but output 'y' has 10 classes"):
        TaskMetrics("y").update(LOGITS[:3], np.array([1, 12, 3]))


def test_non_float_and_mismatched_outputs_are_null_not_invented():
    ints = Fidelity("idx")
    ints.update(np.array([[1, 2], [3, 4]]), np.array([[1, 2], [3, 5]]))
    got = ints.result()
    assert got["sqnr_db"] is None and got["cosine"] is None and got["agreement"] is None
    assert got["max_abs"] == 1.0
    words = Fidelity("text")
    words.update(np.array(["a", "b", "c"]), np.array(["a", "x", "c"]))
    assert words.result()["exact_match"] == pytest.approx(2 / 3) and words.result()["max_abs"] is None
    shapes = Fidelity("y")
    shapes.update(LOGITS[:, :5], LOGITS)
    assert shapes.result()["error"].startswith("shape [200, 5]") and shapes.result()["sqnr_db"] is None


def test_worst_over_outputs():
    a = {"agreement": 0.9, "kl": 0.1, "cosine": 0.99, "sqnr_db": 30.0, "sqnr_infinite": False, "max_abs": 1.0,
         "mean_abs": 0.1}
    b = {"agreement": None, "kl": None, "cosine": 0.95, "sqnr_db": None, "sqnr_infinite": True, "max_abs": 0.0,
         "mean_abs": 0.0}
    worst = worst_over_outputs({"a": a, "b": b})
    assert worst == {"agreement": 0.9, "kl": 0.1, "cosine": 0.95, "sqnr_db": 30.0, "max_abs": 1.0,
                     "mean_abs": 0.1, "sqnr_infinite": False}
    assert worst_over_outputs({"b": b})["sqnr_infinite"] is True


def test_error_stats():
    stats = ErrorStats()
    stats.add(np.array([1.0, 2.0]), np.array([1.0, 1.0]))
    assert stats.sqnr == pytest.approx(10 * np.log10(2.0)) and stats.result()["mean_abs"] == 0.5
