"""Training data in memory: the evaluator's datasets (checked against the model) gathered into arrays
that recovery can shuffle, split and shard by index."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphsurg.errors import BadInputError
from graphsurg.ir import Model


@dataclass
class Arrays:
    """Model inputs by name and optional labels, all with samples along axis 0."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    @property
    def samples(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, index: np.ndarray) -> Arrays:
        return Arrays({k: v[index] for k, v in self.inputs.items()},
                      None if self.labels is None else self.labels[index])


def load_arrays(path: str, model: Model, labels: str = "labels") -> Arrays:
    """Reads an .npz file or ONNX test-data folder for `model` (via graphsurg.eval's loaders, which
    check names, dtypes and shapes) and holds it in memory."""
    from graphsurg.eval import open_dataset

    dataset = open_dataset(path, model, labels)
    if not dataset.samples:
        raise BadInputError(f"{path}: holds no samples")
    batches = list(dataset.batches(max(dataset.samples, 1)))
    names = list(batches[0].inputs)
    inputs = {n: np.concatenate([np.asarray(b.inputs[n]) for b in batches]) for n in names}
    has_labels = all(b.labels is not None for b in batches)
    label_array = np.concatenate([np.asarray(b.labels) for b in batches]) if has_labels else None
    return Arrays(inputs, label_array)


def split(data: Arrays, fraction: float, seed: int) -> tuple[Arrays, Arrays | None]:
    """A seeded random split into (train, validation); fraction 0 gives no validation set."""
    if not 0.0 <= fraction < 1.0:
        raise BadInputError(f"--val-split {fraction}: expected a fraction in [0, 1)")
    order = np.random.default_rng(seed).permutation(data.samples)
    n_val = int(round(data.samples * fraction))
    if n_val == 0:
        return data, None
    if n_val >= data.samples:
        raise BadInputError(f"--val-split {fraction} leaves no training samples out of {data.samples}")
    return data.take(np.sort(order[n_val:])), data.take(np.sort(order[:n_val]))
