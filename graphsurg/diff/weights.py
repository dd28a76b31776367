"""Weight comparison: what a weight is worth as the op sees it (dequantized), and how it changed."""

from __future__ import annotations

from typing import Any

import numpy as np

from graphsurg.diff.features import WeightSource
from graphsurg.ir import Op, Tensor, dtypes

_PLAIN_NUMERIC = {1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13}  # element types numpy reads directly
_BFLOAT16 = 16
HISTOGRAM_BINS = 40


def as_float(tensor: Tensor) -> np.ndarray | None:
    """The tensor as float64, or None for element types numpy cannot read as numbers (float8, int4, strings)."""
    array = tensor.numpy()
    if tensor.dtype in _PLAIN_NUMERIC:
        return np.asarray(array, dtype=np.float64)
    if tensor.dtype == _BFLOAT16:
        return (np.asarray(array, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return None


def effective(source: WeightSource) -> np.ndarray | None:
    """The values the consuming op computes with: stored data, or its (fake-)quantized image."""
    stored = as_float(source.tensor)
    if stored is None or source.dq is None:
        return stored
    scale, zero = _qparams(source.dq)
    if scale is None:
        return None
    axis, block = source.dq.attr("axis", 1), source.dq.attr("block_size", 0)
    if source.q is not None:
        q_scale, q_zero = _qparams(source.q)
        if q_scale is None:
            return None
        stored = _quantize(stored, q_scale, q_zero, source.q, axis, block)
    return (stored - _expand(zero, stored, axis, block)) * _expand(scale, stored, axis, block)


def _qparams(op: Op) -> tuple[np.ndarray | None, np.ndarray]:
    scale = op.inputs[1] if len(op.inputs) > 1 else None
    zero = op.inputs[2] if len(op.inputs) > 2 else None
    scale_array = as_float(scale.const) if scale is not None and scale.is_const else None
    zero_array = as_float(zero.const) if zero is not None and zero.is_const else None
    return scale_array, zero_array if zero_array is not None else np.zeros(())


def _expand(param: np.ndarray, like: np.ndarray, axis: int, block: int) -> np.ndarray:
    """Broadcasts a per-tensor, per-axis or blocked quantization parameter against the data."""
    if param.ndim == 0 or param.size == 1 or like.ndim == 0:
        return param.reshape(())
    axis = axis % like.ndim
    if block and param.ndim == like.ndim:
        return np.repeat(param, block, axis=axis)[tuple(slice(0, n) for n in like.shape)]
    shape = [1] * like.ndim
    shape[axis] = param.size
    return param.reshape(shape)


def _quantize(x: np.ndarray, scale: np.ndarray, zero: np.ndarray, q: Op, axis: int, block: int) -> np.ndarray:
    """QuantizeLinear's arithmetic (round half to even, saturate to the output type's range)."""
    target = q.outputs[0].dtype if q.outputs and q.outputs[0] is not None else None
    zp_input = q.inputs[2] if len(q.inputs) > 2 else None
    code = target or (zp_input.const.dtype if zp_input is not None and zp_input.is_const else dtypes.UINT8)
    info = np.iinfo(dtypes.numpy_dtype(code)) if code in (2, 3, 4, 5, 6, 12) else np.iinfo(np.uint8)
    values = np.rint(x / _expand(scale, x, axis, block)) + _expand(zero, x, axis, block)
    return np.clip(values, info.min, info.max)


def same_contents(a: WeightSource, b: WeightSource) -> bool:
    """Bit-identical weights, quantization parameters included."""
    tensors_a, tensors_b = a.tensors(), b.tensors()
    if len(tensors_a) != len(tensors_b) or (a.q is None) != (b.q is None):
        return False
    return all(_same_tensor(x, y) for x, y in zip(tensors_a, tensors_b, strict=True))


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    if a is b:
        return True
    if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
        return False
    return bool(np.array_equal(a.numpy(), b.numpy()))


def weight_stats(a: WeightSource | None, b: WeightSource | None) -> dict[str, Any]:
    """Shape, dtype, relative change, sparsity and quantization of a weight before and after."""
    ea = effective(a) if a is not None else None
    eb = effective(b) if b is not None else None
    stats: dict[str, Any] = {
        "shape": [_shape(a), _shape(b)],
        "dtype": [_dtype(a), _dtype(b)],
        "quantized": [a.quantized if a else None, b.quantized if b else None],
        "sparsity": [_sparsity(ea), _sparsity(eb)],
        "rel_change": None,
        "max_abs_change": None,
    }
    if ea is not None and eb is not None and ea.shape == eb.shape:
        delta = eb - ea
        norm = float(np.linalg.norm(ea))
        change = float(np.linalg.norm(delta))
        stats["rel_change"] = _finite(change / norm if norm > 0 else (0.0 if change == 0 else None))
        stats["max_abs_change"] = _finite(float(np.max(np.abs(delta))) if delta.size else 0.0)
    return stats


def _finite(value: float | None) -> float | None:
    """JSON has no NaN or infinity: a weight holding them gets no relative change."""
    return value if value is not None and np.isfinite(value) else None


def histograms(a: WeightSource | None, b: WeightSource | None, bins: int = HISTOGRAM_BINS) -> dict[str, Any] | None:
    """Value histograms before/after on shared bins, and of the change where shapes agree (HTML page).
    Non-finite values are left out of the bins; the change histogram needs every value finite."""
    full_a, full_b = (effective(s) if s is not None else None for s in (a, b))
    ea, eb = _finite_values(full_a), _finite_values(full_b)
    present = [x for x in (ea, eb) if x is not None and x.size]
    if not present:
        return None
    low = min(float(x.min()) for x in present)
    high = max(float(x.max()) for x in present)
    if high <= low:
        high = low + 1.0
    edges = np.linspace(low, high, bins + 1)
    result: dict[str, Any] = {
        "edges": [low, high],
        "before": np.histogram(ea, edges)[0].tolist() if ea is not None else None,
        "after": np.histogram(eb, edges)[0].tolist() if eb is not None else None,
        "delta": None,
    }
    if ea is full_a and eb is full_b and ea is not None and eb is not None and ea.shape == eb.shape and ea.size:
        delta = eb - ea
        span = float(np.max(np.abs(delta))) or 1.0
        counts, _ = np.histogram(delta, np.linspace(-span, span, bins + 1))
        result["delta"] = {"edges": [-span, span], "counts": counts.tolist()}
    return result


def _finite_values(array: np.ndarray | None) -> np.ndarray | None:
    if array is None or np.all(np.isfinite(array)):
        return array
    return array[np.isfinite(array)]


def _shape(source: WeightSource | None) -> list[int] | None:
    return list(source.shape) if source is not None else None


def _dtype(source: WeightSource | None) -> str | None:
    return dtypes.name_of(source.dtype) if source is not None else None


def _sparsity(array: np.ndarray | None) -> float | None:
    if array is None or array.size == 0:
        return None
    return float(np.count_nonzero(array == 0) / array.size)
