"""quantize numerics: the weight error bound, calibration ranges, and the streaming statistics service."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from graphsurg.passes._quant_calib import (
    activation_qparams,
    activation_range,
    golden_section,
    quantize_weight,
)

from graphsurg import serde
from graphsurg.eval.calibrate import RunningHistogram, activation_stats
from graphsurg.services import DataSpec

MODELS = Path(__file__).resolve().parents[2] / "models"


def weights(kind: str) -> np.ndarray:
    rng = np.random.default_rng(3)
    w = rng.normal(size=(16, 8, 3, 3)).astype(np.float32)
    if kind == "outliers":
        w[2, 0, 0, 0] = 40.0
        w[5] *= 1e-4
    elif kind == "zero_channel":
        w[7] = 0.0
    elif kind == "positive":
        w = np.abs(w)
    return w


def dequantize(qw, axis: int | None) -> np.ndarray:
    shape = [1] * qw.q.ndim
    if axis is not None:
        shape[axis] = -1
    scale, zero = qw.scale.reshape(shape), qw.zero_point.astype(np.int32).reshape(shape)
    return (qw.q.astype(np.int32) - zero).astype(np.float32) * scale


@pytest.mark.parametrize("kind", ["normal", "outliers", "zero_channel", "positive"])
@pytest.mark.parametrize(("axis", "symmetric", "mse", "pair_safe"), [
    (0, True, False, False), (0, True, False, True), (None, True, False, False), (0, False, False, False),
    (1, True, False, True), (0, True, True, True), (0, False, True, False),
])
def test_weight_error_is_at_most_half_a_step_inside_the_clipping_range(kind, axis, symmetric, mse, pair_safe):
    w = weights(kind)
    qw = quantize_weight(w, axis, symmetric, mse, pair_safe=pair_safe)
    assert qw.q.dtype == np.int8 and qw.q.shape == w.shape
    recon = dequantize(qw, axis)
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    scale = np.broadcast_to(qw.scale.reshape(shape), w.shape).astype(np.float64)
    zero = np.broadcast_to(qw.zero_point.astype(np.float64).reshape(shape), w.shape)
    lo, hi = (-128 - zero) * scale, (127 - zero) * scale
    inside = (w >= lo - scale / 2) & (w <= hi + scale / 2)
    err = np.abs(recon.astype(np.float64) - w)
    assert np.all(err[inside] <= scale[inside] / 2 + np.spacing(np.abs(w[inside]))), "theory: |W_q - W| <= s/2"
    assert qw.report["holds"]
    assert qw.report["max_error_over_half_scale"] <= 1.0 + 1e-5
    if not mse:
        assert inside.all() and qw.report["clipped"] == 0  # min/max scales never clip
    if symmetric:
        assert np.all(qw.zero_point == 0) and np.abs(qw.q).max() <= 127


def test_pair_safe_scales_keep_any_two_weights_within_int16_for_uint8_activations():
    w = weights("normal")
    qw = quantize_weight(w, 0, pair_safe=True)
    magnitudes = np.sort(np.abs(qw.q.reshape(16, -1).astype(np.int32)), axis=1)
    assert np.all(255 * (magnitudes[:, -1] + magnitudes[:, -2]) <= 32767)
    dominant = np.zeros((1, 64), np.float32)
    dominant[0, 0], dominant[0, 1:] = 10.0, 0.01  # one weight dominates: the full 8 bits stay
    assert np.abs(quantize_weight(dominant, 0, pair_safe=True).q).max() >= 126


def test_mse_weight_clipping_never_does_worse_than_minmax():
    w = weights("outliers")
    plain, clipped = quantize_weight(w, 0), quantize_weight(w, 0, mse=True)
    error = [np.square(dequantize(q, 0) - w).reshape(16, -1).sum(1) for q in (plain, clipped)]
    assert np.all(error[1] <= error[0] * (1 + 1e-6))
    assert error[1].sum() < error[0].sum()  # the outlier channel gets clipped


def test_golden_section_finds_the_minimum_in_log_steps():
    calls = []

    def f(x):
        calls.append(x)
        return (x - 0.37) ** 2

    assert abs(golden_section(f, 0.0, 1.0, 1e-6) - 0.37) < 1e-5
    assert len(calls) <= 40  # log(1e-6) / log(0.618) ~ 29, plus the end-point check


def hist_stats(x: np.ndarray, bins: int = 4096) -> dict:
    hist = RunningHistogram(bins)
    for chunk in np.array_split(x, 7):
        hist.add(chunk)
    return {"min": float(x.min()), "max": float(x.max()), **hist.as_dict()}


def test_running_histogram_merges_exactly_when_the_range_grows():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(size=5000) * s for s in (0.01, 1.0, 30.0)]
    hist = RunningHistogram(256)
    for chunk in chunks:
        hist.add(chunk)
    d = hist.as_dict()
    assert len(d["hist"]) <= 256 and d["hist"].sum() == 15000
    edges = d["hist_lo"] + d["bin_width"] * np.arange(len(d["hist"]) + 1)
    expected, _ = np.histogram(np.concatenate(chunks), bins=edges)
    np.testing.assert_array_equal(d["hist"], expected)


def test_calibration_ranges_behave_on_a_heavy_tailed_relu_output():
    rng = np.random.default_rng(1)
    x = np.maximum(rng.standard_t(3, size=200_000), 0.0)  # ReLU of a heavy-tailed activation
    stats = hist_stats(x)
    ranges = {m: activation_range(stats, m, 99.99) for m in ("minmax", "percentile", "entropy", "mse")}
    assert ranges["minmax"] == (0.0, x.max())
    for method, (lo, hi) in ranges.items():
        assert lo == 0.0 and 0 < hi <= x.max() + stats["bin_width"], method
    assert ranges["percentile"][1] == pytest.approx(np.percentile(x, 99.99), rel=0.02)
    assert ranges["mse"][1] < x.max() and ranges["entropy"][1] < x.max()  # both clip the tail
    for method in ("minmax", "percentile", "entropy", "mse"):
        scale, zero_point = activation_qparams(*ranges[method], "uint8")
        assert zero_point == 0  # ReLU outputs keep zero at the bottom (onnxruntime drops the ReLU)


def test_mse_range_has_lower_quantization_error_than_minmax():
    rng = np.random.default_rng(2)
    x = rng.standard_t(2, size=100_000)
    stats = hist_stats(x)

    def mse(lo, hi):
        scale, zp = activation_qparams(lo, hi, "uint8")
        q = np.clip(np.rint(x / scale) + int(zp), 0, 255)
        return float(np.mean(((q - int(zp)) * scale - x) ** 2))

    assert mse(*activation_range(stats, "mse")) < mse(*activation_range(stats, "minmax"))


def test_activation_stats_streams_every_tensor_in_one_pass():
    model = serde.load(MODELS / "digits_mlp.onnx")
    names = ["input", *(op.outputs[0].name for op in model.graph.ops)]
    data = DataSpec(str(MODELS / "digits_val.npz"), batch_size=32)
    stats = activation_stats(model, names, data, channel_absmax=[names[2]])
    x = np.load(MODELS / "digits_val.npz")["input"]
    assert stats["input"]["min"] == float(x.min()) and stats["input"]["max"] == float(x.max())
    assert stats["input"]["count"] == x.size
    for name in names:
        assert stats[name]["hist"].sum() == stats[name]["count"]
    assert stats[names[2]]["channel_absmax"].shape == (128,)  # the first Gemm's output channels
    limited = activation_stats(model, ["input"], data, histogram=False, max_samples=40)
    assert limited["input"]["count"] == 40 * 64 and "hist" not in limited["input"]
