"""Shared fixtures: the bundled models and the onnx wheel's backend test corpus."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
ONNX_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
BUNDLED = ["digits_mlp", "digits_cnn", "digits_vit"]


@pytest.fixture(params=BUNDLED)
def bundled_model(request) -> Path:
    return MODELS / f"{request.param}.onnx"


@pytest.fixture
def digits_test() -> Path:
    return MODELS / "digits_test.npz"


# ---- onnxruntime helpers shared by the round-trip, property and pass tests -------------------


def ort_outputs(model: str | Path | bytes, feeds: dict) -> list:
    """Runs a model (a path or serialized bytes) on onnxruntime's CPU provider, one thread, so
    repeated runs are deterministic."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    source = str(model) if isinstance(model, Path) else model
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def outputs_equal(a, b) -> bool:
    """Bit-exact equality of two output lists (sequences compared element-wise, NaN == NaN)."""
    import numpy as np

    if isinstance(a, list) or isinstance(b, list):
        return isinstance(a, list) and isinstance(b, list) and len(a) == len(b) \
            and all(outputs_equal(x, y) for x, y in zip(a, b, strict=True))
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind in "fc":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


@pytest.fixture(scope="session")
def run_ort():
    return ort_outputs


@pytest.fixture(scope="session")
def same_outputs():
    return outputs_equal


# ---- a summary line the corpus tests fill in (printed at the end of the run) -----------------

CORPUS_STATS_KEY = pytest.StashKey[dict]()


@pytest.fixture(scope="session")
def corpus_stats(request) -> dict:
    """Counters of the round-trip corpus test, printed in the terminal summary."""
    return request.config.stash.setdefault(CORPUS_STATS_KEY, {})


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    stats = config.stash.get(CORPUS_STATS_KEY, None)
    if not stats:
        return
    terminalreporter.write_line("round-trip corpus: " + ", ".join(f"{value} {key}" for key, value in stats.items()))
