"""The surgery certificate: what an edit cost, what recovery won back, and whether the budget held.

The certificate is a JSON document (schema version 1, documented in the README). Everything in
it is a deterministic function of the inputs and the seed except the `timings` section and
latency figures, which live under keys named `timings`/`latency_ms` so build systems can compare
certificates with those left out.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
HIGHER_IS_BETTER = {"accuracy": True, "agreement": True, "cosine": True, "sqnr_db": True,
                    "loss": False, "kl": False, "mse": False}


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("graphsurg", "onnx", "onnxruntime", "numpy", "networkx", "torch"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def degradation(metric: str, reference: float | None, value: float | None) -> float | None:
    """How much worse `value` is than `reference` in `metric` (positive = worse).

    Fidelity metrics measured against the original model have a perfect reference value of
    their own (agreement 1, cosine 1, KL 0), which is passed as `reference`.
    """
    if reference is None or value is None or not math.isfinite(reference) or not math.isfinite(value):
        return None
    worse = reference - value if HIGHER_IS_BETTER[metric] else value - reference
    return float(worse)


def fit_recovery_curve(points: list[tuple[int, float]]) -> dict[str, Any] | None:
    """Least-squares fit of metric(n) = a + b / sqrt(n) over the recovery curve (n > 0)."""
    usable = [(n, m) for n, m in points if n > 0 and m is not None and math.isfinite(m)]
    if len(usable) < 2:
        return None
    n = np.array([p[0] for p in usable], dtype=np.float64)
    y = np.array([p[1] for p in usable], dtype=np.float64)
    design = np.stack([np.ones_like(n), 1.0 / np.sqrt(n)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    predicted = design @ np.array([a, b])
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((y - predicted) ** 2).sum()) / total if total > 0 else 1.0
    return {"a": float(a), "b": float(b), "r2": r2, "points": len(usable)}


@dataclass(frozen=True)
class BoundCheck:
    """First-order perturbation bound |ΔL| <= C * ||Δθ||, with C the norm of the gradient of the mean
    task loss over the evaluation data at the original weights (an empirical constant: it is exact
    to first order for small edits, and `held` says whether it covered the measured ΔL)."""

    constant: float | None
    magnitude: float
    measured_delta_loss: float | None

    def to_json(self) -> dict[str, Any]:
        if self.constant is None or self.measured_delta_loss is None:
            return {"C": self.constant, "delta_theta": self.magnitude, "bound": None,
                    "measured_delta_loss": self.measured_delta_loss, "held": None,
                    "note": "needs labels and the training backend (gradients of the task loss)"}
        bound = self.constant * self.magnitude
        return {"C": self.constant, "delta_theta": self.magnitude, "bound": bound,
                "measured_delta_loss": self.measured_delta_loss,
                "held": bool(abs(self.measured_delta_loss) <= bound)}


def budget_verdict(metric: str, max_degradation: float, original: dict[str, Any], final: dict[str, Any]) -> dict:
    """Compares the final model with the original in the budget metric."""
    reference = _reference_value(metric, original)
    value = final.get(metric)
    worse = degradation(metric, reference, value)
    return {"metric": metric, "max_degradation": max_degradation, "original": reference, "final": value,
            "degradation": worse, "within": worse is not None and worse <= max_degradation + 1e-12}


def _reference_value(metric: str, original: dict[str, Any]) -> float | None:
    perfect = {"agreement": 1.0, "cosine": 1.0, "kl": 0.0, "mse": 0.0}
    if metric in perfect:
        return perfect[metric]
    return original.get(metric)


def format_table(cert: dict[str, Any]) -> str:
    """The human-readable summary printed after `graphsurg run`."""
    metric = cert["budget"]["metric"]
    stages = cert["metrics"]
    rows = [("stage", "loss", "accuracy", "agreement", "kl", metric if metric not in
             ("loss", "accuracy", "agreement", "kl") else "")]
    named = [("original", stages.get("original"))]
    for entry in cert.get("passes", []):
        named.append((f"after {entry['pass']}", entry.get("metrics_after")))
        named.append(("  + recovery", entry.get("metrics_after_recovery")))
    named += [("immediate", stages.get("immediate")), ("recovered", stages.get("recovered"))]
    for stage, values in named:
        if values is None:
            continue
        rows.append((stage, *[_fmt(values.get(k)) for k in ("loss", "accuracy", "agreement", "kl")],
                     _fmt(values.get(metric)) if rows[0][5] else ""))
    widths = [max(len(str(r[i])) for r in rows) for i in range(6)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    verdict = cert["budget"]
    lines += [
        f"surgery magnitude ||Δθ||/||θ|| = {cert['magnitude']['relative']:.4f}",
        f"n_tune = {cert['recovery']['n_tune']}",
        f"parameters {cert['model']['parameters_before']:,} -> {cert['model']['parameters_after']:,}; "
        f"size {cert['model']['size_before']:,} -> {cert['model']['size_after']:,} bytes",
        f"budget: {metric} degradation {_fmt(verdict['degradation'])} <= {verdict['max_degradation']}: "
        + ("WITHIN BUDGET" if verdict["within"] else "OVER BUDGET"),
    ]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
