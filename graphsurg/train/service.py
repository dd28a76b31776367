"""The `gradients` service of the PassContext (Taylor importance and other gradient-based passes).

`gradients(model, params, data)` returns, for each named initializer, the gradient of the loss
summed over every sample of `data` (a `services.DataSpec`), as a numpy array shaped like the
initializer. The loss is the task loss against the data's labels when the file has them (cross
entropy for class labels, squared error for value labels); without labels, the cross entropy against
the model's own top-1 predictions for classifier outputs and half the squared output norm for others.
The model runs in inference mode (BatchNormalization on its running statistics).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from graphsurg.errors import BadInputError
from graphsurg.eval.metrics import TaskMetrics
from graphsurg.ir import Model


def gradients(model: Model, params: list[str], data: Any, **options: Any) -> dict[str, np.ndarray]:
    from graphsurg.train.data import load_arrays
    from graphsurg.train.interpreter import GraphModule

    module = GraphModule(model, bn_mode="frozen").eval()
    wanted = _trainable(module, params)
    path, labels = (data.path, data.labels) if hasattr(data, "path") else (str(data), "labels")
    arrays = load_arrays(path, model, labels)
    batch = max(int(getattr(data, "batch_size", 64) or 64), 1)
    for start in range(0, arrays.samples, batch):
        part = arrays.take(np.arange(start, min(start + batch, arrays.samples)))
        outputs = module(*[torch.from_numpy(np.ascontiguousarray(part.inputs[n])) for n in module.input_names])
        summed_loss(outputs, part.labels).backward()
    return {name: _grad(module, name) for name in wanted}


def _trainable(module, params: list[str]) -> list[str]:
    available = module.parameter_names()
    missing = [p for p in params if p not in available]
    if missing:
        raise BadInputError(f"gradients: {', '.join(missing[:5])} is not a float initializer the model trains "
                            "(BatchNorm statistics, quantization scales and scalars are not parameters)")
    for name in available:
        module.parameter(name).requires_grad_(name in params)
    return list(params)


def _grad(module, name: str) -> np.ndarray:
    grad = module.parameter(name).grad
    param = module.parameter(name)
    return (grad if grad is not None else torch.zeros_like(param)).detach().cpu().numpy()


def summed_loss(outputs, labels: np.ndarray | None) -> torch.Tensor:
    """The loss summed (not averaged) over the batch, so gradients add up over the whole data."""
    if labels is not None:
        for out in outputs:
            kind = TaskMetrics.applies(out.detach().numpy(), labels)
            if kind == "classification":
                axis = -1 if tuple(out.shape[:-1]) == labels.shape else 1
                logits = out.movedim(axis, 1) if out.dim() > 2 else out
                return F.cross_entropy(logits, torch.from_numpy(labels).long(), reduction="sum")
            if kind == "regression":
                return 0.5 * ((out - torch.from_numpy(labels).to(out.dtype)) ** 2).sum()
    total = None
    for out in outputs:
        if not out.is_floating_point():
            continue
        if out.dim() == 2 and out.shape[1] >= 2:
            term = F.cross_entropy(out, out.detach().argmax(1), reduction="sum")
        else:
            term = 0.5 * (out * out).sum()
        total = term if total is None else total + term
    if total is None:
        raise BadInputError("gradients: the model has no floating-point output to differentiate")
    return total
