"""Validation during recovery: the student's outputs on the held-out split (sharded across ranks,
gathered everywhere so every rank decides early stopping alike), measured with graphsurg.eval's
streaming metrics plus the training objective itself."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from graphsurg.eval.metrics import Fidelity, TaskMetrics, worst_over_outputs
from graphsurg.train import distributed
from graphsurg.train.data import Arrays


def validate(module, objective, data: Arrays, teacher: list[np.ndarray] | None, options,
             placement: distributed.Placement) -> dict[str, Any]:
    outputs = _outputs(module, data, options.batch_size, placement)
    labels = torch.from_numpy(data.labels) if options.use_labels else None
    refs = [torch.from_numpy(t) for t in teacher] if teacher is not None else None
    with torch.no_grad():
        value = objective([torch.from_numpy(o) for o in outputs], labels, refs)
    metrics: dict[str, Any] = {"objective": float(value)}
    metrics.update(_task_metrics(module.output_names, outputs, data.labels, objective))
    if teacher is not None:
        metrics.update(_fidelity(module.output_names, outputs, teacher))
    return metrics


def _outputs(module, data: Arrays, batch_size: int, placement) -> list[np.ndarray]:
    """Every output for every validation sample, in sample order, on every rank."""
    mine = distributed.strided_share(np.arange(data.samples), placement)
    module.eval()
    parts: list[list[np.ndarray]] = [[] for _ in module.output_names]
    with torch.no_grad():
        for start in range(0, len(mine), max(batch_size, 1)):
            rows = mine[start:start + batch_size]
            feeds = [torch.from_numpy(np.ascontiguousarray(data.inputs[n][rows])).to(placement.device)
                     for n in module.input_names]
            for acc, out in zip(parts, module(*feeds), strict=False):
                acc.append(out.cpu().numpy())
    local = [np.concatenate(p) if p else np.zeros((0,)) for p in parts]
    gathered = distributed.gather_rows(local + [mine], placement)
    order = np.argsort(gathered[-1], kind="stable")
    return [g[order] for g in gathered[:-1]]


def _task_metrics(names, outputs, labels, objective) -> dict[str, Any]:
    """Loss/accuracy against the labels whenever the data has them (used for training or not)."""
    if labels is None:
        return {"loss": None, "accuracy": None}
    index = objective.task_output
    if index is None:
        index = next((i for i, o in enumerate(outputs) if TaskMetrics.applies(o, labels)), None)
    if index is None:
        return {"loss": None, "accuracy": None}
    task = TaskMetrics(names[index])
    task.update(outputs[index], labels)
    result = task.result()
    return {"loss": result["loss"], "accuracy": result["accuracy"], "loss_kind": result["loss_kind"]}


def _fidelity(names, outputs, teacher) -> dict[str, Any]:
    per_output = {}
    for name, out, ref in zip(names, outputs, teacher, strict=False):
        fidelity = Fidelity(name)
        fidelity.update(out, ref)
        per_output[name] = fidelity.result()
    combined = worst_over_outputs(per_output)
    mse = [float(np.mean((o.astype(np.float64) - r) ** 2))
           for o, r in zip(outputs, teacher, strict=True) if o.dtype.kind == "f"]
    return {key: combined.get(key) for key in ("agreement", "kl", "cosine", "sqnr_db")} | {
        "mse": max(mse) if mse else None}
