"""Streaming metrics: task metrics against labels, fidelity against a reference model's outputs.

Each accumulator takes one batch at a time (`update`) and reports a dict (`result`) in which a
metric that does not apply is None, never a made-up number.

Conventions (documented in README "Measurement"):
- An output is classification-like when it is floating point with rank >= 2 and its class axis
  has >= 2 entries; it is read as logits unless the reference's first batch looks like
  probabilities (all in [0, 1], rows summing to 1), then as probabilities.
- SQNR = 10 log10(sum ref^2 / sum (out - ref)^2) over all elements. Identical outputs have
  infinite SQNR: JSON cannot say Infinity, so `sqnr_db` is null and `sqnr_infinite` is true.
- Cosine similarity is averaged over samples (each sample's output flattened).
- KL(p_ref || p) in nats, averaged over every row of the class axis.
"""

from __future__ import annotations

import math

import numpy as np

from graphsurg.errors import BadInputError

_EPS = 1e-12
_PROB_TOL = 1e-3


def looks_like_probabilities(array: np.ndarray, axis: int = -1) -> bool:
    """True for non-negative values summing to 1 along `axis` (a softmax output)."""
    if array.size == 0 or array.min() < 0 or array.max() > 1:
        return False
    return bool(np.all(np.abs(array.sum(axis=axis) - 1.0) <= _PROB_TOL))


def class_rows(array: np.ndarray, axis: int = -1) -> np.ndarray:
    """The scores as a 2-D (rows, classes) array with the class axis last, at least float32."""
    moved = array if axis in (-1, array.ndim - 1) else np.moveaxis(array, axis, -1)
    rows = moved.reshape(-1, moved.shape[-1])
    return rows.astype(np.float32) if rows.dtype.itemsize < 4 else rows


def log_softmax_rows(rows: np.ndarray, probabilities: bool, best: np.ndarray | None = None) -> np.ndarray:
    """log p per row (float64): log-softmax of logits, or the clipped log of probabilities.

    Reductions over a short class axis are slow in numpy, so the row maximum is read at the argmax
    (`best`, often computed anyway) and the row sum is a matrix-vector product.
    """
    if probabilities:
        return np.log(np.clip(rows.astype(np.float64), _EPS, None))
    if best is None:
        best = rows.argmax(axis=1)
    top = rows[np.arange(len(rows)), best][:, None]
    shifted = rows - top  # <= 0: exp cannot overflow in the scores' own precision
    norm = np.exp(shifted) @ np.ones(rows.shape[1], rows.dtype)
    return shifted.astype(np.float64) - np.log(norm.astype(np.float64))[:, None]


def is_classification_like(array: np.ndarray) -> bool:
    return array.dtype.kind == "f" and array.ndim >= 2 and array.shape[-1] >= 2


def sqnr_db(signal: float, noise: float) -> float | None:
    """SQNR in dB; +inf when the noise is zero, None when there is no signal to measure against."""
    if noise == 0:
        return math.inf
    if signal == 0:
        return None
    return 10.0 * math.log10(signal / noise)


def json_sqnr(value: float | None) -> tuple[float | None, bool]:
    """(sqnr_db for JSON, sqnr_infinite flag): infinity becomes null + true."""
    if value is not None and math.isinf(value):
        return None, True
    return value, False


class ErrorStats:
    """Element-wise error of an array against a reference: SQNR terms, max and mean |out - ref|."""

    def __init__(self):
        self.count = 0
        self.signal = 0.0
        self.noise = 0.0
        self.abs_sum = 0.0
        self.max_abs = 0.0

    def add(self, out: np.ndarray, ref: np.ndarray) -> None:
        """Accumulates one batch; both arrays are float64 of the same shape."""
        flat_ref = ref.ravel()
        flat_diff = out.ravel() - flat_ref
        self.count += flat_diff.size
        self.noise += float(flat_diff @ flat_diff)
        self.signal += float(flat_ref @ flat_ref)
        if flat_diff.size:
            abs_diff = np.abs(flat_diff)
            self.abs_sum += float(abs_diff.sum())
            self.max_abs = max(self.max_abs, float(abs_diff.max()))

    @property
    def sqnr(self) -> float | None:
        return sqnr_db(self.signal, self.noise)

    def result(self) -> dict:
        sqnr, infinite = json_sqnr(self.sqnr)
        return {"sqnr_db": sqnr, "sqnr_infinite": infinite, "max_abs": self.max_abs if self.count else None,
                "mean_abs": self.abs_sum / self.count if self.count else None}


class Fidelity:
    """How closely one output follows the same output of a reference (streamed over batches)."""

    def __init__(self, name: str):
        self.name = name
        self.errors = ErrorStats()
        self.rows = 0  # class-axis rows (agreement, KL)
        self.samples = 0  # samples (cosine)
        self.agree = 0
        self.kl_sum = 0.0
        self.cos_sum = 0.0
        self.classes: bool | None = None
        self.probabilities = False
        self.shape_error: str | None = None
        self.floating = True
        self.equal = self.compared = 0  # non-numeric outputs (strings): exact matches

    def update(self, out: np.ndarray, ref: np.ndarray) -> None:
        if self.shape_error:
            return
        if out.shape != ref.shape:
            self.shape_error = f"shape {list(out.shape)} vs reference {list(ref.shape)}"
            return
        if self.classes is None:
            self.classes = is_classification_like(ref)
            self.probabilities = bool(self.classes and looks_like_probabilities(ref))
            self.floating = ref.dtype.kind == "f"
        if ref.dtype.kind not in "fiub" or out.dtype.kind not in "fiub":  # strings: only equality means anything
            self.equal += int(np.count_nonzero(out == ref))
            self.compared += out.size
            return
        x, r = np.asarray(out, np.float64), np.asarray(ref, np.float64)
        self.errors.add(x, r)
        if self.floating:
            self._cosine(x, r)
        if self.classes:
            self._classes(out, ref)

    def _cosine(self, x: np.ndarray, r: np.ndarray) -> None:
        rows_x = x.reshape(x.shape[0], -1) if x.ndim >= 2 else x.reshape(1, -1)
        rows_r = r.reshape(rows_x.shape)
        dots = np.einsum("ij,ij->i", rows_x, rows_r)
        norms = np.linalg.norm(rows_x, axis=1) * np.linalg.norm(rows_r, axis=1)
        both_zero = (norms == 0) & np.all(rows_x == rows_r, axis=1)
        cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(both_zero, 1.0, 0.0))
        self.cos_sum += float(np.clip(cos, -1.0, 1.0).sum())  # rounding can overshoot 1 slightly
        self.samples += len(cos)

    def _classes(self, out: np.ndarray, ref: np.ndarray) -> None:
        rows_out, rows_ref = class_rows(out), class_rows(ref)
        best_out, best_ref = rows_out.argmax(axis=1), rows_ref.argmax(axis=1)
        self.agree += int(np.count_nonzero(best_out == best_ref))
        log_ref = log_softmax_rows(rows_ref, self.probabilities, best_ref)
        log_out = log_softmax_rows(rows_out, self.probabilities, best_out)
        self.kl_sum += float(np.sum(np.exp(log_ref) * (log_ref - log_out)))
        self.rows += len(rows_ref)

    def result(self) -> dict:
        empty = {"agreement": None, "kl": None, "cosine": None, "sqnr_db": None, "sqnr_infinite": False,
                 "max_abs": None, "mean_abs": None}
        if self.shape_error:
            return {**empty, "error": self.shape_error}
        if self.compared:
            return {**empty, "exact_match": self.equal / self.compared}
        if not self.errors.count:
            return empty
        errors = self.errors.result()
        if not self.floating:
            errors.update(sqnr_db=None, sqnr_infinite=False)
        return {
            "agreement": self.agree / self.rows if self.classes and self.rows else None,
            "kl": max(0.0, self.kl_sum / self.rows) if self.classes and self.rows else None,
            "cosine": self.cos_sum / self.samples if self.floating and self.samples else None,
            **errors,
        }


class TaskMetrics:
    """Loss and accuracy against labels: cross-entropy and top-1 accuracy when the labels are class
    indices of the output's class axis; MSE (as the loss) when they are values shaped like the output."""

    def __init__(self, name: str):
        self.name = name
        self.kind: str | None = None  # "classification" | "regression"
        self.axis = -1
        self.probabilities = False
        self.loss_sum = 0.0
        self.correct = 0
        self.count = 0

    @staticmethod
    def applies(out: np.ndarray, labels: np.ndarray) -> str | None:
        """Which task the labels describe for this output, or None when they do not fit it."""
        if out.dtype.kind != "f" or labels.shape[:1] != out.shape[:1]:
            return None
        if labels.dtype.kind in "iub" or _integral(labels):
            last = out.shape[:-1] == labels.shape and out.shape[-1] >= 2
            channels = out.ndim >= 3 and out.shape[:1] + out.shape[2:] == labels.shape and out.shape[1] >= 2
            if last or channels:
                return "classification"
        if labels.dtype.kind == "f" and labels.shape == out.shape:
            return "regression"
        return None

    def update(self, out: np.ndarray, labels: np.ndarray) -> None:
        if self.kind is None:
            self.kind = self.applies(out, labels)
            self.axis = -1 if out.shape[:-1] == labels.shape else 1
            self.probabilities = self.kind == "classification" and looks_like_probabilities(out, self.axis)
        if self.kind == "regression":
            diff = np.asarray(out, np.float64) - labels
            self.loss_sum += float(np.sum(diff * diff))
            self.count += diff.size
        elif self.kind == "classification":
            self._classify(out, labels.astype(np.int64, copy=False))

    def _classify(self, out: np.ndarray, labels: np.ndarray) -> None:
        rows, flat = class_rows(out, self.axis), labels.reshape(-1)
        classes = rows.shape[1]
        if flat.size and (flat.min() < 0 or flat.max() >= classes):
            bad = int(flat.max() if flat.max() >= classes else flat.min())
            raise BadInputError(f"labels hold class {bad} but output {self.name!r} has {classes} classes")
        best = rows.argmax(axis=1)
        self.correct += int(np.count_nonzero(best == flat))
        index = np.arange(len(flat))
        picked = rows[index, flat].astype(np.float64)
        if self.probabilities:
            self.loss_sum -= float(np.log(np.clip(picked, _EPS, None)).sum())
        else:
            # -log p[label] = logsumexp(x) - x[label]: only the picked entries, no log-softmax matrix
            top = rows[index, best]
            norm = np.exp(rows - top[:, None]) @ np.ones(classes, rows.dtype)
            self.loss_sum += float((top.astype(np.float64) + np.log(norm.astype(np.float64)) - picked).sum())
        self.count += flat.size

    def result(self) -> dict:
        if not self.count:
            return {"loss": None, "accuracy": None, "loss_kind": None}
        mean = self.loss_sum / self.count
        if self.kind == "regression":
            return {"loss": mean, "accuracy": None, "loss_kind": "mse", "mse": mean}
        return {"loss": mean, "accuracy": self.correct / self.count, "loss_kind": "cross_entropy"}


def _integral(labels: np.ndarray) -> bool:
    return labels.dtype.kind == "f" and labels.size > 0 and bool(np.all(labels == np.round(labels)))


# How the top-level fidelity metrics combine several outputs: the worst output decides.
WORST = {"agreement": min, "kl": max, "cosine": min, "sqnr_db": min, "max_abs": max, "mean_abs": max}


def worst_over_outputs(per_output: dict[str, dict]) -> dict:
    """Top-level fidelity: for each metric the worst value over the outputs it applies to."""
    combined: dict = {}
    for key, pick in WORST.items():
        values = [entry[key] for entry in per_output.values() if entry.get(key) is not None]
        combined[key] = pick(values) if values else None
    infinite = [entry.get("sqnr_infinite") for entry in per_output.values() if "sqnr_infinite" in entry]
    # SQNR is infinite overall only when every output is identical to its reference.
    combined["sqnr_infinite"] = bool(infinite) and all(infinite) and combined["sqnr_db"] is None
    return combined
