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
