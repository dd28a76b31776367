"""`evaluate()`: the measurement behind `graphsurg eval` and the PassContext's `evaluate` service.

One pass over the data runs the model (and the reference, when there is one) batch by batch and
feeds streaming accumulators, so a large dataset is never held whole. The result is the JSON
contract of `graphsurg eval --json` (see README "Measurement").
"""

from __future__ import annotations

import logging
import mmap
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from graphsurg.errors import BadInputError
from graphsurg.eval.data import Batch, Dataset, open_dataset
from graphsurg.eval.metrics import Fidelity, TaskMetrics, worst_over_outputs
from graphsurg.eval.reference import Reference, cache_key
from graphsurg.eval.runner import Runner, model_bytes
from graphsurg.ir import ExternalTensor, Model, all_graphs

log = logging.getLogger(__name__)

ModelLike = Model | str | os.PathLike
METRIC_KEYS = ("loss", "accuracy", "agreement", "kl", "cosine", "sqnr_db", "max_abs", "mean_abs")


def evaluate(model: ModelLike, data: Any = None, *, ref: ModelLike | None = None, labels: str | None = None,
             batch_size: int | None = None, provider: str | None = None, threads: int | None = None,
             dims: Mapping[str, int] | None = None, samples: int = 64, seed: int = 0, latency_runs: int = 0,
             warmup: int = 3, per_layer: bool = False, value_map: Mapping[str, str | None] | None = None,
             progress: bool = False) -> dict[str, Any]:
    """Measures `model` on `data`, against labels and (with `ref`) against a reference model.

    Args:
        model: an IR `Model` or a model file path.
        data: a `services.DataSpec`, a `.npz` / test-data folder path, an opened `Dataset`, or None
            for seeded synthetic inputs (`samples` rows, symbolic sizes from `dims`).
        ref: the reference model (IR or path); without it, stored `output_*.pb` of ONNX test data
            serve as the reference, else fidelity metrics are None.
        labels, batch_size, provider: override the DataSpec's (defaults "labels", 64, "cpu").
        latency_runs: timed runs at `batch_size` after `warmup` untimed ones (0: no latency).
        per_layer: also compare every matched intermediate tensor (see `compare.py`);
            `value_map` maps reference tensor names to the model's (from a change record).
        progress: draw a progress bar on stderr (when it is a terminal).

    Returns:
        the `graphsurg eval --json` dict without the `model` path (the CLI adds it).
    """
    path, labels, batch_size, provider = _resolve_data(data, labels, batch_size, provider)
    runner = Runner(model, provider, threads, expose=per_layer)
    opened = isinstance(data, Dataset)
    dataset = data if opened else open_dataset(path, runner.signature, labels, dims, samples, seed)
    reference = None
    if ref is not None:
        key = None if opened else cache_key(ref, path, batch_size, provider, threads, dims, samples, seed)
        reference = Reference(ref, provider, threads, per_layer, key)
        if reference.runner is not None and path is not None and not opened:
            open_dataset(path, reference.runner.signature, labels, dims, samples, seed)  # must fit the reference too
    pairs = output_pairs(runner.output_names, reference.output_names if reference else None, dataset)
    measure = _Measurement(runner.output_names, pairs)
    comparison = _comparison(runner, reference.runner, value_map) if per_layer and reference else None
    first = _run(runner, reference, dataset, batch_size, progress, measure, comparison)
    result = measure.result(dataset.samples)
    result.update(ref=None if ref is None else _label(ref),
                  reference="model" if reference else ("data" if pairs else None),
                  data=dataset.source, provider=runner.provider, provider_note=runner.note,
                  latency_ms=_latency(runner, model, provider, threads, first, latency_runs, warmup),
                  size_bytes=runner.serialized_size or size_bytes(model),
                  per_layer=comparison.result() if comparison is not None else None)
    if per_layer and reference is None:
        result["per_layer"] = {"error": "per-layer comparison needs a reference model (--ref)"}
    return result


def _run(runner: Runner, reference: Reference | None, dataset: Dataset, batch_size: int, progress: bool,
         measure: _Measurement, comparison) -> Batch | None:
    """One pass over the data: model and reference per batch into the accumulators; the first batch."""
    first: Batch | None = None
    for index, (batch, outputs) in enumerate(runner.iterate(dataset, batch_size, progress)):
        first = first or batch
        ref_outputs = reference.outputs(index, batch) if reference else batch.expected
        measure.update(batch, outputs, ref_outputs)
        if comparison is not None:
            comparison.update(outputs, ref_outputs)
    if reference is not None:
        reference.finish()
    return first


def _resolve_data(data: Any, labels: str | None, batch_size: int | None,
                  provider: str | None) -> tuple[str | None, str, int, str]:
    """Path, labels key, batch size and provider from a DataSpec (explicit arguments win)."""
    spec_labels, spec_batch, spec_provider, path = "labels", 64, "cpu", None
    if isinstance(data, str | os.PathLike):
        path = str(data)
    elif data is not None and not isinstance(data, Dataset):  # a services.DataSpec (duck-typed: no import cycle)
        path, spec_labels = data.path, data.labels
        spec_batch, spec_provider = data.batch_size, data.provider
    batch = batch_size or spec_batch
    if batch < 1:
        raise BadInputError(f"batch size must be at least 1, got {batch}")
    return path, labels or spec_labels, batch, provider or spec_provider


def output_pairs(outputs: Sequence[str], ref_outputs: Sequence[str] | None,
                 dataset: Dataset) -> dict[str, str]:
    """Model output -> reference output: by name, else by position when the counts agree."""
    if ref_outputs is None:
        if not dataset.has_expected:
            return {}
        ref_outputs = list(outputs)  # test data is assigned to the model's own output names
    ref_set = set(ref_outputs)
    if all(name in ref_set for name in outputs):
        return {name: name for name in outputs}
    if len(outputs) == len(ref_outputs):
        log.info("outputs differ in name; pairing them by position")
        return dict(zip(outputs, ref_outputs, strict=True))
    pairs = {name: name for name in outputs if name in ref_set}
    if not pairs:
        raise BadInputError(f"the model's outputs ({', '.join(outputs)}) and the reference's "
                            f"({', '.join(ref_outputs)}) share no name and differ in number")
    return pairs


# Batches are gathered up to this many rows (or bytes) before the metrics run, so small batches of
# small models cost a few large numpy calls instead of many small ones (see bench/eval_overhead.py).
CHUNK_ROWS = 8192
CHUNK_BYTES = 64 << 20


class _Measurement:
    """Task metrics per output (when labels fit it) and fidelity per paired output."""

    def __init__(self, outputs: Sequence[str], pairs: dict[str, str]):
        self.outputs = list(outputs)
        self.pairs = pairs
        self.task = {name: TaskMetrics(name) for name in outputs}
        self.fidelity = {name: Fidelity(name) for name in pairs}
        self.ref_task = TaskMetrics("reference")  # the reference's own loss/accuracy on the labels
        self.task_output: str | None = None  # the first output the labels fit
        self._pending: list[tuple[np.ndarray | None, dict, dict]] = []
        self._rows = 0
        self._chunk_rows = 0  # set from the first batch's bytes per row

    def update(self, batch: Batch, outputs: dict[str, np.ndarray], reference: dict | None) -> None:
        """Queues one batch (no copies: the arrays are referenced); the metrics run per chunk."""
        if not self._chunk_rows:
            self._start(batch, outputs, reference)
        self._pending.append((batch.labels, outputs, reference or {}))
        self._rows += batch.size
        if self._rows >= self._chunk_rows:
            self._flush()

    def _start(self, batch: Batch, outputs: dict[str, np.ndarray], reference: dict | None) -> None:
        if batch.labels is not None:
            self.task_output = self._pick_task_output(outputs, batch.labels)
        row_bytes = sum(a.nbytes for a in outputs.values()) + sum(a.nbytes for a in (reference or {}).values())
        per_row = max(1, row_bytes // max(1, batch.size))
        self._chunk_rows = max(1, min(CHUNK_ROWS, CHUNK_BYTES // per_row))

    def _flush(self) -> None:
        keys = [name for name in self.outputs if name == self.task_output or name in self.pairs]
        ref_keys = [self.pairs[name] for name in self.outputs if name in self.pairs]
        for labels, outputs, reference in _merged(self._pending, keys, ref_keys):
            if labels is not None and self.task_output:
                self.task[self.task_output].update(outputs[self.task_output], labels)
                ref_name = self.pairs.get(self.task_output)
                if ref_name in reference:
                    self.ref_task.update(reference[ref_name], labels)
            for name, ref_name in self.pairs.items():
                if ref_name in reference:
                    self.fidelity[name].update(outputs[name], reference[ref_name])
        self._pending, self._rows = [], 0

    def _pick_task_output(self, outputs: dict[str, np.ndarray], labels: np.ndarray) -> str | None:
        for name in self.outputs:
            if TaskMetrics.applies(outputs[name], labels):
                return name
        shapes = ", ".join(f"{n} {list(outputs[n].shape)}" for n in self.outputs)
        log.warning("labels %s fit no output (%s); loss and accuracy are not measured", list(labels.shape), shapes)
        return ""

    def result(self, samples: int) -> dict[str, Any]:
        self._flush()
        per_output = {}
        for name in self.outputs:
            # every output lists every metric, null where it does not apply
            entry: dict[str, Any] = {**dict.fromkeys(METRIC_KEYS), "sqnr_infinite": False, "loss_kind": None}
            if name == self.task_output:
                entry.update(self.task[name].result())
            if name in self.fidelity:
                entry.update(self.fidelity[name].result())
            per_output[name] = entry
        fidelity = worst_over_outputs({n: self.fidelity[n].result() for n in self.fidelity})
        task = self.task[self.task_output].result() if self.task_output else {"loss": None, "accuracy": None,
                                                                              "loss_kind": None}
        metrics = {key: (task if key in ("loss", "accuracy") else fidelity).get(key) for key in METRIC_KEYS}
        metrics["sqnr_infinite"] = bool(fidelity.get("sqnr_infinite"))
        metrics["loss_kind"] = task.get("loss_kind")
        return {"samples": samples, "metrics": metrics, "per_output": per_output,
                "task_output": self.task_output or None,
                "ref_metrics": self.ref_task.result() if self.ref_task.count else None}


def _merged(pending: list[tuple], keys: list[str], ref_keys: list[str]) -> list[tuple]:
    """The queued (labels, outputs, reference) entries as one, concatenated along axis 0 (only the
    arrays the metrics read); as they are when shapes differ beyond axis 0 (test-data sets)."""
    if len(pending) <= 1:
        return pending
    try:
        labels = [p[0] for p in pending]
        merged_labels = None if any(x is None for x in labels) else np.concatenate(labels)
        outputs = {k: np.concatenate([p[1][k] for p in pending]) for k in keys}
        reference = {k: np.concatenate([p[2][k] for p in pending]) for k in ref_keys if k in pending[0][2]}
    except (ValueError, KeyError):
        return pending
    return [(merged_labels, outputs, reference)]


def _comparison(runner: Runner, ref_runner: Runner, value_map):
    from graphsurg.eval.compare import LayerComparison

    return LayerComparison(runner.model, ref_runner.model, value_map)


def _latency(runner: Runner, model: ModelLike, provider: str, threads: int | None, batch: Batch | None,
             runs: int, warmup: int) -> dict[str, Any]:
    """Latency at the first batch's size; a runner with exposed intermediates is not timed."""
    if runs <= 0 or batch is None:
        return {"median": None, "p90": None, "batch": None, "runs": 0, "warmup": 0}
    timed = runner if not runner.exposed else Runner(model, provider, threads)
    return timed.latency(batch.inputs, runs, warmup)


def size_bytes(model: ModelLike) -> int:
    """Bytes on disk: the file plus its external data files; for an in-memory model, its serialized
    size with the weights inline (external tensors counted by their length)."""
    if not isinstance(model, Model):
        path = Path(model)
        if not _may_reference_files(path):
            return path.stat().st_size
        from graphsurg import serde

        files = {str(path.resolve())} | _external_files(serde.load(model))
        return sum(os.path.getsize(f) for f in files)
    if any(isinstance(v.const, ExternalTensor) for g in all_graphs(model.graph) for v in g.initializers.values()):
        return sum(v.const.nbytes for g in all_graphs(model.graph) for v in g.initializers.values())
    return len(model_bytes(model))


def _may_reference_files(path: Path) -> bool:
    """False when the file cannot hold an external-data reference: every one carries the key
    "location" verbatim, so a file without that byte string needs no parse (a memory-mapped scan)."""
    if path.stat().st_size == 0:
        return False
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        return mapped.find(b"location") >= 0


def _external_files(model: Model) -> set[str]:
    return {v.const.location.path for g in all_graphs(model.graph) for v in g.initializers.values()
            if isinstance(v.const, ExternalTensor)}


def _label(model: ModelLike) -> str:
    return "<model>" if isinstance(model, Model) else str(model)
