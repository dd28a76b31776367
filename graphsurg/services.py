"""Wires runtime services (onnxruntime evaluation and calibration, torch gradients) into a
PassContext. Lives at the top of the house: passes only see the context.

Each service is a module-level function found by name; a feature that is not installed (no torch)
or not built yet simply leaves its service out, and a pass that needs it gets a clear
ServiceUnavailable error.

Contracts (all take the IR `Model` first):
- `graphsurg.eval.calibrate.activation_stats(model, values, data, **options)`
- `graphsurg.eval.service.evaluate(model, data, **options)`
- `graphsurg.train.service.gradients(model, params, data)`
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

from graphsurg.errors import ServiceUnavailable
from graphsurg.pipeline import PassContext

_SERVICES = {
    "activation_stats": ("graphsurg.eval.calibrate", "activation_stats"),
    "evaluate": ("graphsurg.eval.service", "evaluate"),
    "gradients": ("graphsurg.train.service", "gradients"),
}


@dataclass(frozen=True)
class DataSpec:
    """Where a pass's data comes from: an .npz file or ONNX test-data folder, and its labels key."""

    path: str
    labels: str = "labels"
    batch_size: int = 64
    provider: str = "cpu"


def _find(module: str, attr: str):
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None


def _present(module: str) -> bool:
    """Whether a service module exists, without importing it (torch costs seconds to import)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def build_context(data: DataSpec | None = None, seed: int = 0, strict: bool = False,
                  **extra: Any) -> PassContext:
    """A PassContext whose services read `data`; services without data are left out. A service's
    module is imported on its first call, so a pass pays only for the services it uses."""
    services = {}
    if data is not None:
        for name, (module, attr) in _SERVICES.items():
            if _present(module):
                services[name] = functools.partial(_with_data, module, attr, data)
    ctx = PassContext(services=services, seed=seed, data=data, strict=strict)
    for key, value in extra.items():
        setattr(ctx, key, value)
    return ctx


def _with_data(module: str, attr: str, data: DataSpec, model, *args, **kwargs):
    fn = _find(module, attr)
    if fn is None:
        raise ServiceUnavailable(f"{module}.{attr} cannot be imported (is its extra installed?)")
    return fn(model, *args, data=data, **kwargs)
