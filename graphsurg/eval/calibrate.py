"""Activation statistics for calibration: one onnxruntime pass over the data for every tensor.

`activation_stats(model, values, data)` exposes the requested intermediate tensors as extra graph
outputs, runs the model batch by batch and folds each batch into running statistics, so memory
stays bounded by one batch of activations plus a fixed-size histogram per tensor, whatever the
size of the data set (onnxruntime's own histogram calibrators keep every activation in memory).

Per tensor the result is a plain dict (passes read it without importing this module):
  min, max       float: the extremes seen (non-finite values are skipped and counted in `nonfinite`)
  count          int: finite elements seen
  hist, hist_lo, bin_width
                 a histogram of the values: `hist[i]` counts values in
                 [hist_lo + i*bin_width, hist_lo + (i+1)*bin_width); present with `histogram=True`
  channel_absmax np.ndarray: max |x| per channel of the last axis, for the values named in
                 `channel_absmax` (SmoothQuant needs it)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from graphsurg.errors import BadInputError
from graphsurg.eval.data import Dataset, open_dataset
from graphsurg.eval.runner import Runner
from graphsurg.ir import Model

log = logging.getLogger(__name__)

DEFAULT_BINS = 4096


class RunningHistogram:
    """A histogram that grows with the data, in O(bins) memory.

    Bin k covers [k*w, (k+1)*w): bins are anchored at zero and the width w is a power of two, so
    when new data falls outside the covered range and the bin count would pass `max_bins`, pairs of
    neighbouring bins merge exactly (k -> k // 2, w -> 2w) instead of being re-estimated. The
    resolution therefore stays between max_bins/4 and max_bins bins over the data's range.
    """

    def __init__(self, max_bins: int = DEFAULT_BINS):
        self.max_bins = max(16, int(max_bins))
        self.width: float | None = None
        self.first = 0  # index k of counts[0]
        self.counts = np.zeros(0, np.int64)

    def add(self, x: np.ndarray, lo: float | None = None, hi: float | None = None) -> None:
        """Counts the (finite) values of `x`; `lo`/`hi` are its extremes when the caller has them."""
        if x.size == 0:
            return
        if lo is None or hi is None:
            lo, hi = float(x.min()), float(x.max())
        if self.width is None:
            span = hi - lo if hi > lo else max(abs(hi), 1e-12)
            self.width = 2.0 ** math.ceil(math.log2(span / (self.max_bins // 2)))
            self.first = math.floor(lo / self.width)
        k_lo, k_hi = self._index(lo), self._index(hi)
        last = self.first + len(self.counts) - 1 if len(self.counts) else k_hi
        k_lo, k_hi = min(k_lo, self.first), max(k_hi, last)
        while k_hi - k_lo + 1 > self.max_bins:
            self._coarsen()
            k_lo, k_hi = k_lo >> 1, k_hi >> 1
        self._extend(k_lo, k_hi)
        # offset first, so the index stays small (int32-sized) whatever the data's distance from 0
        index = np.floor((x - self.first * self.width) * (1.0 / self.width)).astype(np.intp)
        np.clip(index, 0, len(self.counts) - 1, out=index)  # float rounding at the edges
        self.counts += np.bincount(index.ravel(), minlength=len(self.counts))

    def _index(self, v: float) -> int:
        return math.floor(v / self.width)

    def _coarsen(self) -> None:
        ks = np.arange(self.first, self.first + len(self.counts)) >> 1
        first = self.first >> 1
        merged = np.bincount(ks - first, weights=self.counts, minlength=int(ks[-1] - first + 1) if len(ks) else 0)
        self.counts = merged.astype(np.int64)
        self.first = first
        self.width *= 2.0

    def _extend(self, k_lo: int, k_hi: int) -> None:
        if not len(self.counts):
            self.first, self.counts = k_lo, np.zeros(k_hi - k_lo + 1, np.int64)
            return
        before = self.first - k_lo
        after = k_hi - (self.first + len(self.counts) - 1)
        if before > 0 or after > 0:
            self.counts = np.concatenate([np.zeros(max(before, 0), np.int64), self.counts,
                                          np.zeros(max(after, 0), np.int64)])
            self.first = min(self.first, k_lo)

    def as_dict(self) -> dict[str, Any]:
        if self.width is None:
            return {"hist": np.zeros(1, np.int64), "hist_lo": 0.0, "bin_width": 1.0}
        return {"hist": self.counts.copy(), "hist_lo": self.first * self.width, "bin_width": self.width}


class TensorStats:
    """Running statistics of one tensor over all batches."""

    def __init__(self, histogram: bool, bins: int, channels: bool):
        self.min, self.max, self.count, self.nonfinite = math.inf, -math.inf, 0, 0
        self.hist = RunningHistogram(bins) if histogram else None
        self.channels = channels
        self.channel_absmax: np.ndarray | None = None

    def add(self, array: np.ndarray) -> None:
        x = np.asarray(array)
        if x.size == 0:
            return
        if x.dtype.kind != "f":
            x = x.astype(np.float32)
        lo, hi = float(x.min()), float(x.max())
        values = x.ravel()
        if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN or inf somewhere: those values are skipped
            finite = np.isfinite(x)
            self.nonfinite += int(x.size - np.count_nonzero(finite))
            values = x[finite]
            x = np.where(finite, x, 0.0).astype(x.dtype)  # keeps the shape for per-channel stats
            if not values.size:
                return
            lo, hi = float(values.min()), float(values.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += int(values.size)
        if self.hist is not None:
            self.hist.add(values, lo, hi)
        if self.channels and x.ndim >= 1:
            per_channel = np.abs(x).reshape(-1, x.shape[-1]).max(axis=0)
            known = self.channel_absmax
            self.channel_absmax = per_channel if known is None else np.maximum(known, per_channel)

    def as_dict(self) -> dict[str, Any]:
        seen = self.count > 0
        out: dict[str, Any] = {"min": self.min if seen else 0.0, "max": self.max if seen else 0.0,
                               "count": self.count, "nonfinite": self.nonfinite}
        if self.hist is not None:
            out.update(self.hist.as_dict())
        if self.channel_absmax is not None:
            out["channel_absmax"] = self.channel_absmax.astype(np.float64)
        return out


def activation_stats(model: Model, values: Sequence[str], data: Any, *, batch_size: int | None = None,
                     histogram: bool = True, bins: int = DEFAULT_BINS, channel_absmax: Sequence[str] = (),
                     max_samples: int | None = None, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Statistics of the named tensors of `model` over `data` (a DataSpec, a path or a Dataset).

    One onnxruntime session runs once over the data with every requested intermediate tensor
    exposed as an output; graph inputs are read from the feeds and initializers directly.
    `max_samples` stops after that many samples; the progress bar shows only on a terminal.
    """
    names = list(dict.fromkeys(values))
    missing = [n for n in names if model.graph.lookup(n) is None]
    if missing:
        raise BadInputError(f"calibration: the model has no tensor named {missing[0]!r}")
    wanted_channels = set(channel_absmax)
    stats = {n: TensorStats(histogram, bins, n in wanted_channels) for n in names}
    for name in names:
        if name in model.graph.initializers:
            stats[name].add(model.graph.initializers[name].const.numpy())
    fed = {v.name for v in model.graph.inputs} | {v.name for v in model.graph.outputs}
    runtime = [n for n in names if n not in model.graph.initializers]
    runner = Runner(model, getattr(data, "provider", "cpu") or "cpu",
                    expose=[n for n in runtime if n not in fed])
    dataset = data if isinstance(data, Dataset) else open_dataset(getattr(data, "path", data), runner.signature,
                                                                  getattr(data, "labels", "labels"))
    size = batch_size or getattr(data, "batch_size", None) or 64
    seen = 0
    for batch, outputs in runner.iterate(dataset, size, progress, label="calibrate"):
        take = batch.size if max_samples is None else min(batch.size, max_samples - seen)
        for name in runtime:
            array = outputs[name] if name in outputs else batch.inputs[name]
            stats[name].add(array[:take] if take < batch.size else array)
        seen += take
        if max_samples is not None and seen >= max_samples:
            break
    log.info("calibrated %d tensors on %d samples", len(names), seen)
    return {n: s.as_dict() for n, s in stats.items()}
