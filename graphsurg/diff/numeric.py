"""The numeric part of a diff (`--data`): both models run on the same data through the eval API.

Per output (paired as the structural diff paired them, so renamed outputs still compare): SQNR,
max/mean |b - a|, cosine, top-1 agreement and KL for class outputs (eval's `Fidelity`). Per matched
tensor (every op output the matcher paired, even under new names): SQNR and max |b - a| (eval's
`ErrorStats`). With labels, the accuracy of each model. Model a is the reference.

Outputs agree within tolerance when max|b - a| <= tolerance * max(1, max|a|) for every paired output.
Imported only for --data, so a structural diff never loads onnxruntime.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from graphsurg.diff.report import ModelDiff
from graphsurg.errors import BadInputError
from graphsurg.eval import ErrorStats, Fidelity, Runner, TaskMetrics, open_dataset
from graphsurg.ir import Value


def compare_numeric(report: ModelDiff, data: str, labels: str = "labels", batch_size: int = 64,
                    provider: str = "cpu", tolerance: float = 1e-4, tensors: bool = True,
                    threads: int | None = None) -> dict[str, Any]:
    diff = report.graph
    pairs = _tensor_pairs(report) if tensors else []
    runner_a = Runner(report.model_a, provider, threads, expose=[a.name for a, _ in pairs])
    runner_b = Runner(report.model_b, provider, threads, expose=[b.name for _, b in pairs])
    dataset = open_dataset(data, runner_a.signature, labels)
    rename = {a.name: b.name for a, b in diff.input_pairs}
    missing = [v.name for v in diff.fb.index.input_index if v.name not in rename.values()]
    if missing:
        raise BadInputError(f"model b has inputs that model a and the data lack: {', '.join(missing)}")
    measure = _Measure(diff.output_pairs, pairs)
    for batch, out_a in runner_a.iterate(dataset, batch_size):
        out_b = runner_b.run({rename[k]: v for k, v in batch.inputs.items() if k in rename})
        measure.update(out_a, out_b, batch.labels)
    result = measure.result(tolerance)
    result.update(data=str(data), samples=dataset.samples, provider=runner_a.provider, tolerance=tolerance)
    return result


def _tensor_pairs(report: ModelDiff) -> list[tuple[Value, Value]]:
    """Matched op outputs of the main graph that are not graph outputs (those are compared as outputs)."""
    diff = report.graph
    outputs_a = {v for v in diff.fa.index.graph.outputs}
    pairs = []
    for op in diff.fa.index.order:
        if op not in diff.matched:
            continue
        for va in op.outputs:
            vb = diff.value_map.get(va) if va is not None else None
            if vb is not None and va not in outputs_a and vb not in diff.fb.index.graph.outputs:
                pairs.append((va, vb))
    return pairs


class _Measure:
    def __init__(self, output_pairs: list[tuple[Value, Value]], tensor_pairs: list[tuple[Value, Value]]):
        self.output_pairs = output_pairs
        self.tensor_pairs = tensor_pairs
        self.fidelity = {a.name: Fidelity(a.name) for a, _ in output_pairs}
        self.scale = dict.fromkeys(self.fidelity, 0.0)  # max|a| per output, for the tolerance
        self.errors = {a.name: ErrorStats() for a, _ in tensor_pairs}
        self.skipped: dict[str, str] = {}
        self.task: dict[str, TaskMetrics] = {}  # per model, on the first output pair the labels fit
        self.task_pair: tuple[str, str] | None = None
        self.task_notes: dict[str, str] = {}  # side -> why its accuracy could not be measured

    def update(self, out_a: dict[str, np.ndarray], out_b: dict[str, np.ndarray], labels: np.ndarray | None) -> None:
        for va, vb in self.output_pairs:
            ref, out = out_a[va.name], out_b[vb.name]
            self.fidelity[va.name].update(out, ref)
            if ref.size and ref.dtype.kind in "fiub":
                self.scale[va.name] = max(self.scale[va.name], float(np.max(np.abs(ref.astype(np.float64)))))
        for va, vb in self.tensor_pairs:
            self._tensor(va.name, out_a.get(va.name), out_b.get(vb.name))
        if labels is not None:
            self._task(out_a, out_b, labels)

    def _tensor(self, name: str, ref, out) -> None:
        if name in self.skipped:
            return
        if not isinstance(ref, np.ndarray) or not isinstance(out, np.ndarray) or ref.dtype.kind != "f" \
                or out.dtype.kind != "f":
            self.skipped[name] = "not floating point in both models"
        elif ref.shape != out.shape:
            self.skipped[name] = f"shape {list(ref.shape)} -> {list(out.shape)}"
        else:
            self.errors[name].add(np.asarray(out, np.float64), np.asarray(ref, np.float64))

    def _task(self, out_a: dict, out_b: dict, labels: np.ndarray) -> None:
        if self.task_pair is None:
            fits = [(a.name, b.name) for a, b in self.output_pairs
                    if TaskMetrics.applies(out_a[a.name], labels) and TaskMetrics.applies(out_b[b.name], labels)]
            self.task_pair = fits[0] if fits else ("", "")
            self.task = {"a": TaskMetrics(self.task_pair[0]), "b": TaskMetrics(self.task_pair[1])}
        if not self.task_pair[0]:
            return
        for side, outputs, name in (("a", out_a, self.task_pair[0]), ("b", out_b, self.task_pair[1])):
            if side in self.task_notes:
                continue
            try:
                self.task[side].update(outputs[name], labels)
            except BadInputError as exc:  # a new head with fewer classes than the labels name
                self.task_notes[side] = str(exc)

    def result(self, tolerance: float) -> dict[str, Any]:
        outputs = [self._output_row(va, vb, tolerance) for va, vb in self.output_pairs]
        tensors = [self._tensor_row(va, vb) for va, vb in self.tensor_pairs if va.name not in self.skipped]
        accuracy = None
        if self.task_pair and self.task_pair[0]:
            accuracy = {side: None if side in self.task_notes else self.task[side].result()["accuracy"]
                        for side in ("a", "b")}
            accuracy.update(output=self.task_pair[1], notes=dict(self.task_notes))
        return {"within_tolerance": all(row["within_tolerance"] for row in outputs), "outputs": outputs,
                "tensors": tensors, "tensors_skipped": dict(self.skipped), "accuracy": accuracy}

    def _output_row(self, va: Value, vb: Value, tolerance: float) -> dict[str, Any]:
        fid = self.fidelity[va.name].result()
        max_abs = fid.get("max_abs")
        ok = "error" not in fid and max_abs is not None and max_abs <= tolerance * max(1.0, self.scale[va.name])
        return {"name": va.name, "after_name": vb.name, "sqnr_db": fid.get("sqnr_db"),
                "sqnr_infinite": fid.get("sqnr_infinite", False), "max_abs_diff": max_abs,
                "mean_abs_diff": fid.get("mean_abs"), "cosine": fid.get("cosine"), "agreement": fid.get("agreement"),
                "kl": fid.get("kl"), "within_tolerance": bool(ok), "note": fid.get("error")}

    def _tensor_row(self, va: Value, vb: Value) -> dict[str, Any]:
        stats = self.errors[va.name].result()
        producer = vb.graph.producer(vb) if vb.graph is not None else None
        return {"name": va.name, "after_name": vb.name, "op": producer.label if producer else None,
                "op_type": producer.op_type if producer else None, "sqnr_db": stats["sqnr_db"],
                "sqnr_infinite": stats["sqnr_infinite"], "max_abs_diff": stats["max_abs"],
                "mean_abs_diff": stats["mean_abs"]}
