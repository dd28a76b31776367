"""Helpers shared by the train tests: paths, accuracy by onnxruntime, small exported models and data."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
TRAIN, VAL, TEST = (MODELS / f"digits_{split}.npz" for split in ("train", "val", "test"))


def accuracy(model, data: Path = TEST) -> float:
    """Test accuracy as onnxruntime measures it (the exported model, not torch)."""
    from graphsurg.eval import evaluate

    return evaluate(model, str(data))["metrics"]["accuracy"]


def export(module: nn.Module, path: Path, example: tuple, input_names: list[str], output_names: list[str],
           dynamic: dict | None = None) -> Path:
    """torch.onnx.export with the legacy (TorchScript) exporter, opset 17, quietly."""
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, str(path), dynamo=False, opset_version=17, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic)
    return path


def fresh_mlp(path: Path, hidden: int = 32, seed: int = 0) -> Path:
    """An untrained MLP 64 -> hidden -> 10 on the digits input (hidden=32: 2,410 parameters)."""
    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    return export(mlp, path, (torch.zeros(1, 1, 8, 8),), ["input"], ["logits"],
                  {"input": {0: "batch"}, "logits": {0: "batch"}})


class BertStyle(nn.Module):
    """A small BERT-style encoder: token, position and segment embeddings, LayerNorm, two post-LN
    transformer layers with a key padding mask and GELU, and a tanh pooler on the first token."""

    def __init__(self, vocab: int = 100, dim: int = 32, heads: int = 4, layers: int = 2, max_len: int = 16):
        super().__init__()
        self.tokens, self.positions, self.segments = nn.Embedding(vocab, dim), nn.Embedding(max_len, dim), \
            nn.Embedding(2, dim)
        self.norm = nn.LayerNorm(dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.pooler = nn.Linear(dim, dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor):
        positions = torch.arange(ids.shape[1]).unsqueeze(0)
        x = self.norm(self.tokens(ids) + self.positions(positions) + self.segments(torch.zeros_like(ids)))
        hidden = self.encoder(x, src_key_padding_mask=mask == 0)
        return hidden, torch.tanh(self.pooler(hidden[:, 0]))


def bert_encoder(path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Exports BertStyle with random weights; returns the path and feeds of the exported shape."""
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.int64)
    mask[1, 10:] = 0
    export(BertStyle(), path, (ids, mask), ["ids", "mask"], ["hidden", "pooled"])
    return path, {"ids": ids.numpy(), "mask": mask.numpy()}


def digits_subset(path: Path, source: Path, classes: int) -> Path:
    """The samples of `source` whose label is below `classes` (for a head swapped to fewer classes)."""
    with np.load(source) as data:
        keep = data["labels"] < classes
        np.savez(path, input=data["input"][keep], labels=data["labels"][keep])
    return path
