"""The PassContext's `gradients` service (Taylor importance): sums of per-sample gradients."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from graphsurg import serde
from graphsurg.errors import BadInputError
from graphsurg.services import DataSpec, build_context

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
import _train_helpers as H  # noqa: E402


def _mlp_by_hand(model, x: np.ndarray) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """digits_mlp written out in torch with its own weights (Gemm with transB)."""
    weights = {n: torch.tensor(v.const.numpy(), requires_grad=True) for n, v in model.graph.initializers.items()}
    h = torch.from_numpy(x).reshape(len(x), -1)
    for i, layer in enumerate(("net.1", "net.3", "net.5")):
        h = F.linear(h, weights[f"{layer}.weight"], weights[f"{layer}.bias"])
        h = torch.relu(h) if i < 2 else h
    return h, weights


def test_gradients_are_summed_over_the_data_with_labels():
    model = serde.load(H.MODELS / "digits_mlp.onnx")
    ctx = build_context(DataSpec(str(H.VAL), batch_size=50))  # batches of 50: the sum must not depend on it
    got = ctx.gradients(model, ["net.1.weight", "net.5.bias"], "test")
    data = np.load(H.VAL)
    logits, weights = _mlp_by_hand(model, data["input"])
    F.cross_entropy(logits, torch.from_numpy(data["labels"]), reduction="sum").backward()
    for name in ("net.1.weight", "net.5.bias"):
        assert got[name].shape == weights[name].shape
        np.testing.assert_allclose(got[name], weights[name].grad.numpy(), rtol=1e-4, atol=1e-4)


def test_without_labels_the_model_s_own_predictions_are_the_targets(tmp_path):
    data = np.load(H.VAL)
    unlabeled = tmp_path / "unlabeled.npz"
    np.savez(unlabeled, input=data["input"])
    model = serde.load(H.MODELS / "digits_mlp.onnx")
    got = build_context(DataSpec(str(unlabeled))).gradients(model, ["net.5.bias"], "test")
    logits, weights = _mlp_by_hand(model, data["input"])
    F.cross_entropy(logits, logits.detach().argmax(1), reduction="sum").backward()
    np.testing.assert_allclose(got["net.5.bias"], weights["net.5.bias"].grad.numpy(), rtol=1e-4, atol=1e-4)


def test_statistics_are_not_parameters():
    ctx = build_context(DataSpec(str(H.VAL)))
    with pytest.raises(BadInputError, match="net.0.1.running_mean"):
        ctx.gradients(serde.load(H.MODELS / "digits_cnn.onnx"), ["net.0.1.running_mean"], "test")
