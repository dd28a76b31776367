"""The recovery objective: a task loss against labels, distillation against a teacher's outputs, or
both mixed by alpha (`alpha * task + (1 - alpha) * distillation`).

Distillation per output: classifier outputs (rank 2 `[batch, classes]`, or a name with "logit")
use T^2 * KL(p_teacher || p_student) at temperature T, averaged over rows; every other output uses
the mean squared error. Outputs that look like probabilities (non-negative rows summing to 1) are
read as probabilities, else as logits; either way they become log-probabilities first, and the
temperature divides those.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from graphsurg.errors import BadInputError, UsageError
from graphsurg.eval.metrics import TaskMetrics, looks_like_probabilities


@dataclass
class Objective:
    output_names: list[str]
    task_output: int | None = None  # index of the output the labels apply to
    task_kind: str | None = None  # "classification" | "regression"
    task_axis: int = -1
    distill: dict[int, str] = field(default_factory=dict)  # output index -> "kl" | "mse"
    probabilities: dict[int, bool] = field(default_factory=dict)  # student output index -> reads as probabilities
    teacher_probabilities: dict[int, bool] = field(default_factory=dict)
    temperature: float = 4.0
    alpha: float = 0.5

    def __call__(self, outputs, labels=None, teacher=None) -> torch.Tensor:
        task = self.task_loss(outputs, labels) if self.task_output is not None and labels is not None else None
        distill = self.distill_loss(outputs, teacher) if self.distill and teacher is not None else None
        if task is not None and distill is not None:
            return self.alpha * task + (1.0 - self.alpha) * distill
        return task if task is not None else distill

    def task_loss(self, outputs, labels) -> torch.Tensor:
        out = outputs[self.task_output]
        if self.task_kind == "regression":
            return F.mse_loss(out, labels.to(out.dtype))
        log_p = _log_probs(out, self.probabilities.get(self.task_output, False), self.task_axis)
        return F.nll_loss(log_p.movedim(self.task_axis, 1) if log_p.dim() > 2 else log_p, labels.long())

    def distill_loss(self, outputs, teacher) -> torch.Tensor:
        total = None
        for index, kind in self.distill.items():
            out, ref = outputs[index], teacher[index].to(outputs[index].dtype)
            if kind == "mse":
                term = F.mse_loss(out, ref)
            else:
                t = self.temperature
                log_s = torch.log_softmax(_log_probs(out, self.probabilities.get(index, False), -1) / t, dim=-1)
                log_t = torch.log_softmax(_log_probs(ref, self.teacher_probabilities.get(index, False), -1) / t,
                                          dim=-1)
                rows = out.numel() // out.shape[-1]
                term = t * t * F.kl_div(log_s, log_t, reduction="sum", log_target=True) / rows
            total = term if total is None else total + term
        return total

    def describe(self) -> dict:
        return {
            "task": self.task_kind and ("cross_entropy" if self.task_kind == "classification" else "mse"),
            "task_output": None if self.task_output is None else self.output_names[self.task_output],
            "distill": {self.output_names[i]: kind for i, kind in self.distill.items()},
            "temperature": self.temperature,
            "alpha": self.alpha if self.task_output is not None and self.distill else None,
        }


def _log_probs(x: torch.Tensor, probabilities: bool, axis: int) -> torch.Tensor:
    return torch.log(x.clamp_min(1e-12)) if probabilities else torch.log_softmax(x, dim=axis)


def build_objective(output_names: list[str], sample_outputs: list[np.ndarray], labels: np.ndarray | None,
                    teacher_outputs: list[np.ndarray] | None, temperature: float, alpha: float,
                    distill_loss: str = "auto") -> Objective:
    """Chooses the loss terms from one batch of the student's outputs, the labels (None: no task loss)
    and the teacher's outputs (None: no distillation)."""
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"--alpha {alpha}: expected a weight in [0, 1]")
    if temperature <= 0:
        raise UsageError(f"--temperature {temperature}: expected a positive number")
    objective = Objective(list(output_names), temperature=temperature, alpha=alpha)
    if labels is not None:
        _choose_task(objective, sample_outputs, labels)
    if teacher_outputs is not None:
        for index, (out, ref) in enumerate(zip(sample_outputs, teacher_outputs, strict=False)):
            if out.shape[1:] != ref.shape[1:]:
                raise BadInputError(f"student output {output_names[index]!r} has shape {list(out.shape)} but the "
                                    f"teacher's has {list(ref.shape)}; distillation needs matching outputs")
            if out.dtype.kind == "f":
                objective.distill[index] = _distill_kind(output_names[index], ref, distill_loss)
                # Each side on its own: a student ending in logits may learn from a teacher's softmax.
                objective.probabilities[index] = looks_like_probabilities(out)
                objective.teacher_probabilities[index] = looks_like_probabilities(ref)
    return objective


def _choose_task(objective: Objective, outputs: list[np.ndarray], labels: np.ndarray) -> None:
    for index, out in enumerate(outputs):
        kind = TaskMetrics.applies(out, labels)
        if kind:
            objective.task_output, objective.task_kind = index, kind
            objective.task_axis = -1 if out.shape[:-1] == labels.shape else 1
            objective.probabilities[index] = kind == "classification" and looks_like_probabilities(
                out, objective.task_axis)
            return
    shapes = ", ".join(f"{n} {list(o.shape)}" for n, o in zip(objective.output_names, outputs, strict=False))
    raise BadInputError(f"the labels (shape {list(labels.shape)}) fit no output of the student ({shapes})")


def _distill_kind(name: str, ref: np.ndarray, requested: str) -> str:
    if requested in ("kl", "mse"):
        return requested
    if requested != "auto":
        raise UsageError(f"--distill-loss {requested!r}: choose auto, kl or mse")
    classifier = (ref.ndim == 2 and ref.shape[-1] >= 2) or "logit" in name.lower()
    return "kl" if classifier else "mse"
