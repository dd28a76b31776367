"""The teacher's outputs for distillation: computed once per run, with onnxruntime (default; the
teacher then needs no torch op coverage) or with the torch interpreter."""

from __future__ import annotations

import numpy as np
import torch

from graphsurg.errors import BadInputError, UsageError
from graphsurg.ir import Model
from graphsurg.train.data import Arrays

CHUNK = 256


def teacher_outputs(teacher: Model, data: Arrays, backend: str = "onnxruntime",
                    provider: str = "cpu") -> tuple[list[np.ndarray], list[str]]:
    """(outputs in the teacher's output order, the teacher's output names) for every sample."""
    if backend == "onnxruntime":
        return _with_onnxruntime(teacher, data, provider)
    if backend == "torch":
        return _with_torch(teacher, data)
    raise UsageError(f"--teacher-backend {backend!r}: choose onnxruntime or torch")


def _feeds(names: list[str], data: Arrays) -> list[str]:
    """Which data array feeds each teacher input: by name, else by position."""
    held = list(data.inputs)
    if all(name in data.inputs for name in names):
        return names
    if len(names) == len(held):
        return held
    raise BadInputError(f"the teacher takes inputs {names} but the data holds {held}")


def _chunks(samples: int):
    for start in range(0, samples, CHUNK):
        yield slice(start, min(start + CHUNK, samples))


def _with_onnxruntime(teacher: Model, data: Arrays, provider: str):
    from graphsurg.eval import Runner

    runner = Runner(teacher, provider)
    names = [spec.name for spec in runner.signature.inputs]
    sources = _feeds(names, data)
    parts: list[list[np.ndarray]] = [[] for _ in runner.output_names]
    for rows in _chunks(data.samples):
        feeds = {n: np.ascontiguousarray(data.inputs[s][rows]) for n, s in zip(names, sources, strict=True)}
        outputs = runner.run(feeds)
        for acc, name in zip(parts, runner.output_names, strict=False):
            acc.append(outputs[name])
    return [np.concatenate(p) for p in parts], list(runner.output_names)


def _with_torch(teacher: Model, data: Arrays):
    from graphsurg.train.interpreter import GraphModule

    module = GraphModule(teacher, bn_mode="frozen").eval()
    sources = _feeds(module.input_names, data)
    parts: list[list[np.ndarray]] = [[] for _ in module.output_names]
    with torch.no_grad():
        for rows in _chunks(data.samples):
            outputs = module(*[torch.from_numpy(np.ascontiguousarray(data.inputs[s][rows])) for s in sources])
            for acc, out in zip(parts, outputs, strict=False):
                acc.append(out.numpy())
    return [np.concatenate(p) for p in parts], list(module.output_names)


def pair_outputs(student_names: list[str], teacher_names: list[str], outputs: list[np.ndarray]) -> list[np.ndarray]:
    """The teacher's outputs reordered to the student's outputs: by name, else by position."""
    if all(name in teacher_names for name in student_names):
        return [outputs[teacher_names.index(name)] for name in student_names]
    if len(student_names) == len(teacher_names):
        return list(outputs)
    raise BadInputError(f"the student's outputs ({', '.join(student_names)}) and the teacher's "
                        f"({', '.join(teacher_names)}) share no names and differ in number")
