"""The recovery objective: which loss each output gets, and its values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graphsurg.errors import BadInputError
from graphsurg.train.losses import build_objective


def _logits(rows: int = 6, classes: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, classes)).astype(np.float32)


def test_kl_at_temperature_is_zero_when_the_student_matches_a_softmax_teacher():
    student = _logits()
    teacher_probs = torch.softmax(torch.from_numpy(student), -1).numpy()
    objective = build_objective(["y"], [student], None, [teacher_probs], temperature=2.0, alpha=0.5)
    assert objective.distill == {0: "kl"} and objective.teacher_probabilities[0] and not objective.probabilities[0]
    value = objective([torch.from_numpy(student)], None, [torch.from_numpy(teacher_probs)])
    assert float(value) == pytest.approx(0.0, abs=1e-6)
    shifted = objective([torch.from_numpy(student * 0.5)], None, [torch.from_numpy(teacher_probs)])
    assert float(shifted) > 1e-3


def test_mixed_objective_weights_task_and_distillation_by_alpha():
    student, teacher = _logits(seed=1), _logits(seed=2)
    labels = np.arange(6) % 4
    both = build_objective(["y"], [student], labels, [teacher], temperature=1.0, alpha=0.25)
    task = build_objective(["y"], [student], labels, None, temperature=1.0, alpha=0.25)
    distill = build_objective(["y"], [student], None, [teacher], temperature=1.0, alpha=0.25)
    args = ([torch.from_numpy(student)], torch.from_numpy(labels), [torch.from_numpy(teacher)])
    expected = 0.25 * float(task(*args)) + 0.75 * float(distill(*args))
    assert float(both(*args)) == pytest.approx(expected, rel=1e-6)
    assert both.describe() == {"task": "cross_entropy", "task_output": "y", "distill": {"y": "kl"},
                               "temperature": 1.0, "alpha": 0.25}


def test_non_classifier_outputs_get_mse_and_mismatched_outputs_are_refused():
    hidden = np.zeros((6, 5, 8), np.float32)
    objective = build_objective(["hidden"], [hidden], None, [hidden + 1], temperature=4.0, alpha=0.5)
    assert objective.distill == {0: "mse"}
    assert float(objective([torch.from_numpy(hidden)], None, [torch.from_numpy(hidden + 1)])) == pytest.approx(1.0)
    with pytest.raises(BadInputError, match="matching outputs"):
        build_objective(["y"], [_logits(classes=5)], None, [_logits(classes=10)], temperature=4.0, alpha=0.5)
