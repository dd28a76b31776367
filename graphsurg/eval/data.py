"""Datasets the evaluator runs models on: `.npz` files, ONNX test-data folders, synthetic inputs.

Every dataset is checked against the model's signature when it is opened (names, dtypes, shapes,
sample counts), and a mismatch is a BadInputError that names the input and what the model expects.
Batches are read on demand: `.npz` members are memory-mapped or streamed (see `npz.py`).

Conventions: in `.npz` data axis 0 of every array is the sample axis (it is split into batches);
the labels array (key `labels` by default) holds one row per sample. A test-data folder's tensors
are whole model inputs, run as they are, one set per batch.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graphsurg.errors import BadInputError
from graphsurg.eval.npz import open_npz
from graphsurg.ir import Model, dtypes

log = logging.getLogger(__name__)

Dim = int | str | None


@dataclass(frozen=True)
class InputSpec:
    """One model input as the data must match it: a name, a numpy dtype, dims (int, symbol or None)."""

    name: str
    dtype: np.dtype | None
    shape: tuple[Dim, ...] | None

    def describe(self) -> str:
        dtype = self.dtype.name if self.dtype is not None else "?"
        if self.shape is None:
            return f"{dtype} of any shape"
        return f"{dtype} [{', '.join('?' if d is None else str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class Signature:
    """What a dataset is checked against: the model's inputs and the names of its outputs."""

    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...] = ()


def signature(model: Model) -> Signature:
    """The signature of an IR model (graph inputs that are not initializers)."""
    graph = model.graph
    specs = []
    for value in graph.inputs:
        if value.is_const:
            continue
        entry = dtypes.BY_CODE.get(value.dtype) if value.dtype is not None else None
        specs.append(InputSpec(value.name, entry.numpy if entry else None, value.shape))
    return Signature(tuple(specs), tuple(v.name for v in graph.outputs))


@dataclass
class Batch:
    """Model inputs by name, plus the labels and stored reference outputs that come with them."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    expected: dict[str, np.ndarray] | None = None
    size: int = 0


class Dataset:
    """Base class: `batches(batch_size)` yields `Batch`es; `samples` counts what one pass covers."""

    source: str = "data"
    samples: int = 0
    has_labels: bool = False
    has_expected: bool = False

    def effective_batch(self, requested: int) -> int:
        return requested

    def num_batches(self, batch_size: int) -> int:
        return math.ceil(self.samples / max(1, self.effective_batch(batch_size)))

    def batches(self, batch_size: int) -> Iterator[Batch]:
        raise NotImplementedError


def _sample_axis(specs: Sequence[InputSpec]) -> bool:
    """Axis 0 is the sample axis unless some input is a scalar (then the data is one batch)."""
    return all(s.shape is None or len(s.shape) >= 1 for s in specs)


def fixed_batch(specs: Sequence[InputSpec]) -> int | None:
    """The batch size the model itself fixes (a static first dimension), if any."""
    static = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int)}
    return static.pop() if len(static) == 1 else None


class _Bindings:
    """Sizes of symbolic dimensions, from --dim and from the data; a conflict is a mismatch."""

    def __init__(self, dims: Mapping[str, int] | None):
        self.sizes: dict[str, tuple[int, str]] = {k: (int(v), "--dim") for k, v in (dims or {}).items()}

    def bind(self, symbol: str, size: int, where: str) -> str | None:
        known = self.sizes.get(symbol)
        if known is None:
            self.sizes[symbol] = (size, where)
            return None
        return None if known[0] == size else f"dimension {symbol!r} is {known[0]} ({known[1]})"


def check_array(spec: InputSpec, shape: tuple[int, ...], dtype: np.dtype, source: str,
                bindings: _Bindings, skip_axis0: bool) -> None:
    """Raises BadInputError naming the input and what the model expects when dtype or shape differ."""
    expect = f"the model expects {spec.describe()}"
    if spec.dtype is not None and np.dtype(dtype) != spec.dtype:
        raise BadInputError(f"{source}: input {spec.name!r} is {np.dtype(dtype).name}; {expect}")
    if spec.shape is None:
        return
    shown = list(shape)
    if len(shape) != len(spec.shape):
        raise BadInputError(f"{source}: input {spec.name!r} has shape {shown} (rank {len(shape)}); {expect} "
                            f"(rank {len(spec.shape)}{', axis 0 = samples' if skip_axis0 else ''})")
    for axis, (got, want) in enumerate(zip(shape, spec.shape, strict=True)):
        if axis == 0 and skip_axis0:
            continue
        problem = None
        if isinstance(want, int) and got != want:
            problem = f"size {want}"
        elif isinstance(want, str):
            problem = bindings.bind(want, got, f"input {spec.name!r}")
        if problem:
            raise BadInputError(f"{source}: input {spec.name!r} has shape {shown}: axis {axis} is {got} but "
                                f"{problem} is expected; {expect}")


class ArrayDataset(Dataset):
    """Named arrays (in memory, memory-mapped or streamed) split along axis 0 into batches."""

    def __init__(self, arrays: Mapping[str, object], sig: Signature, labels: object | None = None,
                 source: str = "arrays", dims: Mapping[str, int] | None = None):
        self.source = source
        self.specs = list(sig.inputs)
        self.arrays = {spec.name: arrays[spec.name] for spec in self.specs if spec.name in arrays}
        self.labels = labels
        self.has_labels = labels is not None
        self.split = _sample_axis(self.specs)
        self._check(arrays, dims)

    def _check(self, arrays: Mapping[str, object], dims: Mapping[str, int] | None) -> None:
        missing = [spec for spec in self.specs if spec.name not in arrays]
        if missing:
            held = ", ".join(sorted(arrays)) or "nothing"
            spec = missing[0]
            raise BadInputError(f"{self.source}: no array for model input {spec.name!r} (the model expects "
                                f"{spec.describe()}); the data holds: {held}")
        bindings = _Bindings(dims)
        for spec in self.specs:
            array = self.arrays[spec.name]
            check_array(spec, tuple(array.shape), array.dtype, self.source, bindings, skip_axis0=self.split)
        self.samples = self._count_samples()
        batch = fixed_batch(self.specs)
        if self.split and batch and self.samples % batch:
            raise BadInputError(f"{self.source}: {self.samples} samples do not split into the model's fixed "
                                f"batch of {batch}")

    def _count_samples(self) -> int:
        if not self.split:
            return 1
        counts = {name: len(array) for name, array in self.arrays.items()}
        if self.labels is not None:
            counts["labels"] = len(self.labels)
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"{name} {count}" for name, count in counts.items())
            raise BadInputError(f"{self.source}: arrays hold different numbers of samples (axis 0): {listed}")
        return next(iter(counts.values()), 0)

    def effective_batch(self, requested: int) -> int:
        if not self.split:
            return 1
        return fixed_batch(self.specs) or max(1, requested)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        if not self.split:
            yield Batch({k: np.asarray(v) for k, v in self.arrays.items()},
                        None if self.labels is None else np.asarray(self.labels), size=1)
            return
        step = self.effective_batch(batch_size)
        for start in range(0, self.samples, step):
            stop = min(start + step, self.samples)
            # ascontiguousarray copies a memmap slice into RAM (onnxruntime reads plain buffers)
            inputs = {k: np.ascontiguousarray(v[start:stop]) for k, v in self.arrays.items()}
            labels = None if self.labels is None else np.ascontiguousarray(self.labels[start:stop])
            yield Batch(inputs, labels, size=stop - start)


def open_npz_dataset(path: str | Path, sig: Signature, labels: str = "labels",
                     dims: Mapping[str, int] | None = None) -> ArrayDataset:
    """An `.npz` dataset; a missing labels key is an error unless it is the default `labels`."""
    arrays = open_npz(path)
    if labels in {s.name for s in sig.inputs}:
        raise BadInputError(f"{path}: the labels key {labels!r} is also a model input; pass another --labels KEY")
    label_array = arrays.pop(labels, None)
    if label_array is None and labels != "labels":
        raise BadInputError(f"{path}: no labels array {labels!r}; the file holds: {', '.join(sorted(arrays))}")
    extra = sorted(set(arrays) - {s.name for s in sig.inputs})
    if extra and all(s.name in arrays for s in sig.inputs):
        log.info("%s: ignoring arrays that are not model inputs: %s", path, ", ".join(extra))
    return ArrayDataset(arrays, sig, label_array, source=str(path), dims=dims)


@dataclass
class _TestSet:
    folder: Path
    inputs: list[Path] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)


def _numbered(folder: Path, prefix: str) -> list[Path]:
    pattern = re.compile(rf"{prefix}_(\d+)\.pb$")
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.match(p.name))]
    return [p for _, p in sorted(found)]


class TestDataDataset(Dataset):
    """ONNX test data: a folder of `input_*.pb` (and `output_*.pb`), or of `test_data_set_*` folders.

    Each set is one batch run as stored; `output_*.pb` become `Batch.expected` (a reference).
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, folder: str | Path, sig: Signature, dims: Mapping[str, int] | None = None):
        self.folder = Path(folder)
        self.source = str(folder)
        self.sig = sig
        self.sets = self._find_sets()
        self.has_expected = all(s.outputs for s in self.sets)
        self._dims = dims
        self._sizes = [self._load(s).size for s in self.sets]  # reads and checks every set once
        self.samples = sum(self._sizes)

    def _find_sets(self) -> list[_TestSet]:
        folders = [self.folder] if _numbered(self.folder, "input") else sorted(
            (p for p in self.folder.iterdir() if p.is_dir() and p.name.startswith("test_data_set_")),
            key=lambda p: int(re.sub(r"\D", "", p.name) or 0))
        sets = [_TestSet(f, _numbered(f, "input"), _numbered(f, "output")) for f in folders]
        sets = [s for s in sets if s.inputs]
        if not sets:
            raise BadInputError(f"{self.folder}: no input_*.pb files, here or in test_data_set_* folders")
        return sets

    def _load(self, test_set: _TestSet) -> Batch:
        from graphsurg.serde.tensor_file import read_tensor_file

        label = str(test_set.folder)
        inputs = self._assign([read_tensor_file(p) for p in test_set.inputs], [s.name for s in self.sig.inputs],
                              label, "input")
        outputs = self._assign([read_tensor_file(p) for p in test_set.outputs], list(self.sig.outputs),
                               label, "output") if test_set.outputs else None
        missing = [s for s in self.sig.inputs if s.name not in inputs]
        if missing:
            raise BadInputError(f"{label}: no tensor for model input {missing[0].name!r} (the model expects "
                                f"{missing[0].describe()}); the folder holds: {', '.join(sorted(inputs))}")
        bindings = _Bindings(self._dims)
        for spec in self.sig.inputs:
            array = inputs[spec.name]
            check_array(spec, array.shape, array.dtype, label, bindings, skip_axis0=False)
        first = next(iter(inputs.values()))
        size = first.shape[0] if first.ndim and _sample_axis(self.sig.inputs) else 1
        return Batch(inputs, None, outputs, size=size)

    @staticmethod
    def _assign(tensors: list[tuple[str, np.ndarray]], names: list[str], label: str, kind: str) -> dict:
        """By the names stored in the tensors when they all name a model input, else by position."""
        if tensors and all(name in names for name, _ in tensors):
            return {name: array for name, array in tensors}
        if len(tensors) > len(names) and names:
            raise BadInputError(f"{label}: {len(tensors)} {kind}_*.pb files but the model has {len(names)} "
                                f"{kind}s ({', '.join(names)})")
        return {names[i] if i < len(names) else f"{kind}_{i}": array for i, (_, array) in enumerate(tensors)}

    def effective_batch(self, requested: int) -> int:
        return max(self._sizes) if self._sizes else 1

    def num_batches(self, batch_size: int) -> int:
        return len(self.sets)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for test_set in self.sets:
            yield self._load(test_set)


class SyntheticDataset(Dataset):
    """Seeded random inputs drawn from the model's input specs; symbolic sizes come from `dims`.

    Floats are uniform in [0, 1), integers in [0, 10), booleans fair coins. Each input has its own
    generator and draws row after row, so the values do not depend on the batch size.
    """

    def __init__(self, sig: Signature, dims: Mapping[str, int] | None = None, samples: int = 64, seed: int = 0):
        self.specs = list(sig.inputs)
        self.dims = dict(dims or {})
        self.seed = seed
        self.split = _sample_axis(self.specs)
        self.source = f"synthetic(seed={seed})"
        self._batch = self._batch_from_dims()
        self.samples = samples if self.split else 1
        self._rows = {spec.name: self._row_shape(spec) for spec in self.specs}

    def _batch_from_dims(self) -> int | None:
        fixed = fixed_batch(self.specs)
        if fixed or not self.split:
            return fixed
        symbols = {s.shape[0] for s in self.specs if s.shape and isinstance(s.shape[0], str)}
        sizes = {self.dims[sym] for sym in symbols if sym in self.dims}
        return sizes.pop() if len(sizes) == 1 else None

    def _row_shape(self, spec: InputSpec) -> tuple[int, ...]:
        if spec.dtype is None or spec.dtype.kind not in "fiub":
            raise BadInputError(f"synthetic data: cannot draw input {spec.name!r} ({spec.describe()}); give --data")
        if spec.shape is None:
            raise BadInputError(f"synthetic data: input {spec.name!r} has no shape in the model; give --data")
        dims = spec.shape[1:] if self.split else spec.shape
        row = []
        for axis, dim in enumerate(dims, start=1 if self.split else 0):
            if isinstance(dim, int):
                row.append(dim)
            elif isinstance(dim, str) and dim in self.dims:
                row.append(int(self.dims[dim]))
            else:
                what = f"symbolic dimension {dim!r}" if dim else "an unknown size"
                hint = f"--dim {dim}=N" if dim else "--data"
                raise BadInputError(f"synthetic data: input {spec.name!r} axis {axis} has {what}; set it with {hint}")
        return tuple(row)

    def effective_batch(self, requested: int) -> int:
        return (self._batch or max(1, requested)) if self.split else 1

    def batches(self, batch_size: int) -> Iterator[Batch]:
        step = self.effective_batch(batch_size)
        rngs = {spec.name: np.random.default_rng([self.seed, i]) for i, spec in enumerate(self.specs)}
        for start in range(0, self.samples, step):
            count = min(step, self.samples - start)
            inputs = {spec.name: self._draw(rngs[spec.name], spec, count) for spec in self.specs}
            yield Batch(inputs, size=count)

    def _draw(self, rng: np.random.Generator, spec: InputSpec, count: int) -> np.ndarray:
        shape = (count, *self._rows[spec.name]) if self.split else self._rows[spec.name]
        # Every kind is derived from uniform doubles so the stream is batch-size independent.
        uniform = rng.random(shape)
        if spec.dtype.kind == "f":
            return uniform.astype(spec.dtype)
        if spec.dtype.kind == "b":
            return uniform < 0.5
        return np.floor(uniform * 10).astype(spec.dtype)


def parse_dims(items: Sequence[str]) -> dict[str, int]:
    """`["batch=8", "seq=16"]` -> {"batch": 8, "seq": 16}; a malformed item is a usage error."""
    from graphsurg.errors import UsageError

    dims: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip().isdigit() or int(value) <= 0:
            raise UsageError(f"--dim {item!r}: expected NAME=SIZE with a positive integer size, e.g. batch=8")
        dims[name.strip()] = int(value)
    return dims


def open_dataset(path: str | Path | None, model: Model | Signature, labels: str = "labels",
                 dims: Mapping[str, int] | None = None, samples: int = 64, seed: int = 0) -> Dataset:
    """Opens and checks data for `model`: an `.npz` file, an ONNX test-data folder, or (path None)
    seeded synthetic inputs of `samples` rows."""
    sig = model if isinstance(model, Signature) else signature(model)
    if path is None:
        return SyntheticDataset(sig, dims, samples, seed)
    target = Path(path)
    if target.is_dir():
        return TestDataDataset(target, sig, dims)
    if not target.is_file():
        raise BadInputError(f"{target}: no such data file or folder")
    if target.suffix.lower() != ".npz":
        raise BadInputError(f"{target}: unsupported data; expected a .npz file or an ONNX test-data folder")
    return open_npz_dataset(target, sig, labels, dims)
