"""Quantization arithmetic for the quantize pass: ranges from calibration statistics, scales and
zero points, weight quantization and its error bound. Pure NumPy; no runtime.

Activation ranges come from the statistics `ctx.activation_stats` returns (min/max and a
histogram with `hist`, `hist_lo`, `bin_width`; see graphsurg/eval/calibrate.py):
- minmax: the observed extremes.
- percentile: the p-th percentile at the top and the (100-p)-th at the bottom.
- entropy: the range whose 8-bit quantization of the histogram loses the least information
  (KL(P || Q) as in TensorRT's calibrator, generalized to asymmetric ranges).
- mse: the range minimizing the expected squared quantization error (rounding inside, clipping
  outside), by golden-section search over the clipping factor.
Candidate ranges shrink the observed [min(lo, 0), max(hi, 0)] by one factor alpha, so a ReLU output
keeps its zero lower bound (its zero point stays at the bottom of the integer range and
onnxruntime can drop the ReLU before a QuantizeLinear).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
INT_RANGES = {"uint8": (0, 255), "int8": (-128, 127)}
WEIGHT_QMAX = 127  # int8 weights use [-127, 127] so the symmetric grid is centred on zero
PAIR_LEVELS = 128  # 255 * 128 = 32640 fits int16: the pairwise sums of AVX2 u8s8 kernels cannot saturate


# ---------------------------------------------------------------- activation ranges


def activation_range(stats: dict[str, Any], method: str, percentile: float = 99.99,
                     levels: int = 255) -> tuple[float, float]:
    """The (lo, hi) range to quantize a tensor with, from its calibration statistics."""
    lo, hi = min(float(stats["min"]), 0.0), max(float(stats["max"]), 0.0)
    if method == "minmax" or hi - lo <= 0 or "hist" not in stats or stats["hist"].sum() == 0:
        return lo, hi
    if method == "percentile":
        return _percentile_range(stats, percentile, lo, hi)
    if method == "entropy":
        # the histogram's outer edges: the bin holding the maximum reaches past it, and cutting
        # that bin would count the maximum itself as clipped
        edges = _edges(stats)
        lo, hi = min(lo, float(edges[0])), max(hi, float(edges[-1]))
        return _scaled(lo, hi, _entropy_alpha(stats, lo, hi, levels))
    if method == "mse":
        return _scaled(lo, hi, _mse_alpha(stats, lo, hi, levels))
    raise ValueError(f"unknown calibration method {method!r}")


def _scaled(lo: float, hi: float, alpha: float) -> tuple[float, float]:
    return lo * alpha, hi * alpha


def _edges(stats: dict[str, Any]) -> np.ndarray:
    hist = stats["hist"]
    return float(stats["hist_lo"]) + float(stats["bin_width"]) * np.arange(len(hist) + 1)


def _cdf_at(stats: dict[str, Any], points: np.ndarray) -> np.ndarray:
    """Count of values below each point, interpolating linearly inside a bin."""
    cumulative = np.concatenate([[0.0], np.cumsum(stats["hist"], dtype=np.float64)])
    return np.interp(points, _edges(stats), cumulative)


def _percentile_range(stats: dict[str, Any], p: float, lo: float, hi: float) -> tuple[float, float]:
    cumulative = np.concatenate([[0.0], np.cumsum(stats["hist"], dtype=np.float64)])
    total = cumulative[-1]
    edges = _edges(stats)
    tail = (100.0 - min(max(p, 0.0), 100.0)) / 100.0
    top = float(np.interp(total * (1.0 - tail), cumulative, edges))
    bottom = float(np.interp(total * tail, cumulative, edges))
    return min(max(bottom, lo), 0.0), max(min(top, hi), 0.0)


def _entropy_alpha(stats: dict[str, Any], lo: float, hi: float, levels: int) -> float:
    """The clipping factor whose quantized histogram is closest to the original one (KL divergence).

    A coarse grid of factors, then a finer one around the best (80 candidates in all, resolution
    1/768 of the range), each grid evaluated at once by `_kl_divergences`.
    """
    coarse = np.linspace(1.0 / 48, 1.0, 48)
    best = float(coarse[int(np.argmin(_kl_divergences(stats, lo, hi, levels, coarse)))])
    fine = np.clip(np.linspace(best - 1.0 / 48, best + 1.0 / 48, 33), 1.0 / 96, 1.0)
    return float(fine[int(np.argmin(_kl_divergences(stats, lo, hi, levels, fine)))])


KL_BLOCK = 16  # candidates evaluated together: 16 x 1021 float64 temporaries (130 kB) stay in L2 cache


def _kl_divergences(stats: dict[str, Any], lo: float, hi: float, levels: int, alphas: np.ndarray) -> np.ndarray:
    """KL(P || Q) for each clipping factor, a block of candidates at a time (each row is
    independent; blocks twice as fast as one large array here, which spills out of the cache)."""
    blocks = np.array_split(alphas, -(-len(alphas) // KL_BLOCK))
    return np.concatenate([_kl_block(stats, lo, hi, levels, block) for block in blocks])


def _kl_block(stats: dict[str, Any], lo: float, hi: float, levels: int, alphas: np.ndarray) -> np.ndarray:
    """KL(P || Q) for each clipping factor: the histogram is resampled onto `levels * 4` fine bins
    over the clipped range; P adds the clipped outliers to the edge bins; Q merges the in-range bins
    into `levels` quantization bins and spreads each back over its non-empty fine bins."""
    fine_per_level = 4
    t = np.linspace(0.0, 1.0, levels * fine_per_level + 1)
    points = (lo + (hi - lo) * t)[None, :] * alphas[:, None]  # [candidates, fine + 1]
    cdf = _cdf_at(stats, points.ravel()).reshape(points.shape)
    inside = np.diff(cdf, axis=1)
    total = float(np.sum(stats["hist"]))
    # Q is quantized from the in-range mass only (as TensorRT does): the clipped mass that P piles
    # into its edge bins is missing from Q, which is what makes clipping cost something.
    # The 4 fine bins of a level are added one by one: numpy's reductions over a length-4 last
    # axis cost several times more than the three additions
    grouped = inside.reshape(len(alphas), levels, fine_per_level)
    level_sum = ((grouped[..., 0] + grouped[..., 1]) + grouped[..., 2]) + grouped[..., 3]
    filled = grouped > 0
    counts = filled.view(np.uint8)
    level_count = ((counts[..., 0] + counts[..., 1]) + counts[..., 2]) + counts[..., 3]
    spread = level_sum / np.maximum(level_count, 1)
    q = (spread[..., None] * filled).reshape(inside.shape)
    p = inside
    p[:, 0] += cdf[:, 0]  # after Q is made: P alone gets the clipped mass
    p[:, -1] += total - cdf[:, -1]
    # mass where Q has none (clipped outliers beyond an empty edge level) is smoothed to a tiny
    # probability, as TensorRT does, so it costs a large but finite divergence
    p /= total
    q = np.maximum(q / total, 1e-10)
    terms = np.zeros_like(p)
    np.log(p / q, out=terms, where=p > 0)  # the log only where P has mass (0 log 0 = 0)
    return (p * terms).sum(axis=1)


def _mse_alpha(stats: dict[str, Any], lo: float, hi: float, levels: int, eps: float = 1e-4) -> float:
    """Golden-section search for the clipping factor minimizing the histogram's quantization MSE."""
    edges = _edges(stats)
    centers = (edges[:-1] + edges[1:]) / 2.0
    counts = stats["hist"].astype(np.float64)

    def error(alpha: float) -> float:
        c_lo, c_hi = lo * alpha, hi * alpha
        step = (c_hi - c_lo) / levels
        clipped = np.clip(centers, c_lo, c_hi)
        # inside: uniform rounding noise step^2/12; outside: the clipping distance, squared
        return float(np.sum(counts * ((centers - clipped) ** 2 + step * step / 12.0)))

    return golden_section(error, 0.01, 1.0, eps)


def golden_section(f, a: float, b: float, eps: float) -> float:
    """The minimizer of a unimodal `f` on [a, b] to within `eps`: O(log(1/eps)) evaluations."""
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    while b - a > eps:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - GOLDEN * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + GOLDEN * (b - a)
            fd = f(d)
    best = (a + b) / 2.0
    # the end point 1.0 (no clipping) is a common optimum the bracket only approaches
    return 1.0 if f(1.0) <= f(best) else best


# ---------------------------------------------------------------- scales and zero points


def activation_qparams(lo: float, hi: float, dtype: str) -> tuple[np.float32, np.integer]:
    """Asymmetric scale and zero point covering [lo, hi] (widened to contain 0, so 0 is exact)."""
    qmin, qmax = INT_RANGES[dtype]
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / (qmax - qmin)
    if not np.isfinite(scale) or scale <= 0:
        return np.float32(1.0), np.dtype(dtype).type(0 if dtype == "int8" else 0)
    zero_point = int(round(qmin - lo / scale))
    zero_point = min(max(zero_point, qmin), qmax)
    return np.float32(scale), np.dtype(dtype).type(zero_point)


def quantize_array(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, qmin: int, qmax: int,
                   dtype: np.dtype) -> np.ndarray:
    """QuantizeLinear's arithmetic: round half to even, add the zero point, saturate."""
    q = np.rint(x / scale) + zero_point
    return np.clip(q, qmin, qmax).astype(dtype)


@dataclass
class QuantizedWeight:
    """An int8 weight with its scales, zero points, axis (None: per tensor) and error report."""

    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None
    report: dict[str, Any]


def quantize_weight(w: np.ndarray, axis: int | None, symmetric: bool = True, mse: bool = False,
                    min_scale: np.ndarray | None = None, pair_safe: bool = False) -> QuantizedWeight:
    """int8 quantization of a weight, per channel along `axis` (None: per tensor).

    Symmetric: scale = max|w| / 127 per channel, zero point 0. Asymmetric: the channel's [min, max]
    (widened to contain 0) onto [-128, 127]. With `mse`, each channel's clipping factor is found by
    golden-section search on the exact weights (all channels searched in lockstep). `min_scale`
    raises scales where an int32 bias would otherwise overflow. `pair_safe` (symmetric only) keeps
    the two largest magnitudes of a channel within 128 levels together: x86 AVX2 u8s8 kernels add
    products pairwise in int16 (vpmaddubsw), and 255 * (|q1| + |q2|) <= 32767 then holds for any
    pairing, so they cannot saturate; a channel loses at most one bit, none when one weight dominates.
    """
    w = np.asarray(w, dtype=np.float32)
    moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1) if axis is not None else w.reshape(1, -1)
    w64 = moved.astype(np.float64)
    pair_safe = pair_safe and symmetric
    alpha = _weight_mse_alpha(w64, symmetric, pair_safe) if mse and w64.size else np.ones(len(w64))
    scale, zero_point, qmin, qmax = _weight_grid(w64, symmetric, alpha, pair_safe)
    if min_scale is not None and np.any(scale < min_scale):
        scale = np.maximum(scale, np.asarray(min_scale, np.float64)).astype(np.float32).astype(np.float64)
        if not symmetric:
            zero_point = np.clip(np.rint(qmin - np.minimum(w64.min(axis=1), 0.0) / scale), qmin, qmax)
    q = quantize_array(w64, scale[:, None], zero_point[:, None], qmin, qmax, np.int8)
    report = error_bound(w64, q, scale, zero_point, qmin, qmax)
    shape = (len(scale),) if axis is not None else ()
    q_full = q.reshape(np.moveaxis(w, axis, 0).shape) if axis is not None else q.reshape(w.shape)
    if axis is not None:
        q_full = np.moveaxis(q_full, 0, axis)
    return QuantizedWeight(np.ascontiguousarray(q_full), scale.astype(np.float32).reshape(shape),
                           zero_point.astype(np.int8).reshape(shape), axis, report)


def _weight_grid(w: np.ndarray, symmetric: bool, alpha: np.ndarray, pair_safe: bool = False):
    if symmetric:
        qmin, qmax = -WEIGHT_QMAX, WEIGHT_QMAX
        absmax = np.abs(w).max(axis=1) * alpha if w.size else np.zeros(len(w))
        scale = absmax / qmax
        if pair_safe and w.shape[1] >= 2:
            top2 = np.partition(np.abs(w), w.shape[1] - 2, axis=1)[:, -2]
            scale = np.maximum(scale, (absmax + np.minimum(top2, absmax)) / PAIR_LEVELS)
        scale = np.where(absmax > 0, scale, 1.0)
        return scale.astype(np.float32).astype(np.float64), np.zeros(len(w)), qmin, qmax
    qmin, qmax = -128, 127
    lo = np.minimum(w.min(axis=1), 0.0) * alpha
    hi = np.maximum(w.max(axis=1), 0.0) * alpha
    scale = np.where(hi > lo, (hi - lo) / (qmax - qmin), 1.0).astype(np.float32).astype(np.float64)
    zero_point = np.clip(np.rint(qmin - lo / scale), qmin, qmax)
    return scale, zero_point, qmin, qmax


def _weight_mse_alpha(w: np.ndarray, symmetric: bool, pair_safe: bool = False, eps: float = 1e-3) -> np.ndarray:
    """Per-channel clipping factors minimizing the exact squared error: golden-section search run for
    all channels at once, each step O(|w|); log(1/eps)/log(1/0.618) steps."""

    def errors(alpha: np.ndarray) -> np.ndarray:
        scale, zero_point, qmin, qmax = _weight_grid(w, symmetric, alpha, pair_safe)
        q = np.clip(np.rint(w / scale[:, None]) + zero_point[:, None], qmin, qmax)
        return (((q - zero_point[:, None]) * scale[:, None] - w) ** 2).sum(axis=1)

    a, b = np.full(len(w), 0.3), np.ones(len(w))
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    fc, fd = errors(c), errors(d)
    while float(np.max(b - a)) > eps:
        left = fc <= fd
        b = np.where(left, d, b)
        a = np.where(left, a, c)
        new_c, new_d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
        c, d = np.where(left, new_c, d), np.where(left, c, new_d)
        fc, fd = np.where(left, errors(c), fd), np.where(left, fc, errors(d))
    best = (a + b) / 2.0
    return np.where(errors(np.ones(len(w))) <= errors(best), 1.0, best)


def error_bound(w: np.ndarray, q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray,
                qmin: int, qmax: int) -> dict[str, Any]:
    """Checks max |dequant(q) - w| <= scale/2 for every element inside the clipping range.

    DequantizeLinear computes (q - zp) * scale in float32, so the reconstruction is taken in float32
    and a float32 rounding allowance (one ulp of |w|) is granted on top of scale/2.
    """
    scale32 = scale.astype(np.float32)[:, None]
    recon = ((q.astype(np.int32) - zero_point[:, None].astype(np.int32)).astype(np.float32) * scale32)
    err = np.abs(recon.astype(np.float64) - w)
    lo = (qmin - zero_point[:, None]) * scale[:, None]
    hi = (qmax - zero_point[:, None]) * scale[:, None]
    inside = (w >= lo - scale[:, None] / 2) & (w <= hi + scale[:, None] / 2)
    allowance = scale[:, None] / 2 + np.spacing(np.abs(w).astype(np.float32)).astype(np.float64)
    within = np.where(inside, err <= allowance, True)
    ratio = np.where(inside, err / (scale[:, None] / 2), 0.0)
    return {
        "max_abs_error": float(err[inside].max()) if inside.any() else 0.0,
        "max_error_over_half_scale": float(ratio.max()) if ratio.size else 0.0,
        "clipped": int((~inside).sum()),
        "holds": bool(within.all()),
    }
