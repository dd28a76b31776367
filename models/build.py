"""Build graphsurg's digits fixtures: seeded data splits and three small ONNX classifiers.

Run ``python models/build.py`` (needs torch and scikit-learn on top of graphsurg's own
dependencies). Every output lands next to this file; rerunning reproduces the same numbers.
"""

from __future__ import annotations

import collections
import hashlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

SEED = 0
OUT_DIR = Path(__file__).resolve().parent
OPSET = 17  # LayerNormalization is a single op from 17 on
BATCH = 64
TOLERANCE = 1e-4
MAX_BYTES = 1 << 20


# ---------------------------------------------------------------- data


def make_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # [N, 1, 8, 8] in [0, 1]
    y = digits.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=0.2, stratify=y, random_state=SEED)
    # 0.125 of the remaining 80 % is 10 % of the whole set.
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=0.125, stratify=y_rest, random_state=SEED
    )
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}


def save_splits(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    combined = {}
    for split, (x, y) in splits.items():
        combined[f"x_{split}"], combined[f"y_{split}"] = x, y
        # Keyed by the models' input name so graphsurg's evaluator can feed the file as is.
        np.savez_compressed(OUT_DIR / f"digits_{split}.npz", input=x, labels=y)
    np.savez_compressed(OUT_DIR / "digits.npz", **combined)


# ---------------------------------------------------------------- models


class DigitsMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, 128),
            nn.ReLU(),
            nn.Linear(128, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    # No conv bias: the BatchNorm shift that follows makes it redundant.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out)
    )


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(channels, channels)
        self.conv2 = conv_bn(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            conv_bn(1, 16),
            nn.ReLU(),
            ResidualBlock(16),
            conv_bn(16, 32, stride=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention spelled out op by op, so the exported graph shows every step."""

    def __init__(self, dim: int, heads: int, tokens: int) -> None:
        super().__init__()
        self.heads, self.head_dim, self.tokens = heads, dim // heads, tokens
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        # Static sizes with -1 for the batch keep the exported Reshapes constant-shaped.
        return x.reshape(-1, self.tokens, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split_heads(self.q(x)), self.split_heads(self.k(x)), self.split_heads(self.v(x))
        weights = torch.softmax(q @ k.transpose(-2, -1) * self.head_dim**-0.5, dim=-1)
        merged = (weights @ v).transpose(1, 2).reshape(-1, self.tokens, self.heads * self.head_dim)
        return self.out(merged)


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, tokens: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, tokens)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DigitsViT(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, depth: int = 2, hidden: int = 64) -> None:
        super().__init__()
        self.dim, self.tokens = dim, 16  # 2x2 patches of an 8x8 image
        self.patch = nn.Conv2d(1, dim, kernel_size=2, stride=2)
        self.pos = nn.Parameter(torch.randn(1, self.tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*(EncoderBlock(dim, heads, self.tokens, hidden) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).reshape(-1, self.dim, self.tokens).transpose(1, 2) + self.pos
        # Mean pooling rather than a class token avoids a batch-dependent Expand/Concat.
        return self.head(self.norm(self.blocks(x)).mean(dim=1))


# ---------------------------------------------------------------- training


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float) -> None:
    gen = torch.Generator().manual_seed(SEED)
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    steps = epochs * math.ceil(len(x_t) / BATCH)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x_t), generator=gen).split(BATCH):
            loss = F.cross_entropy(model(x_t[idx]), y_t[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


# ---------------------------------------------------------------- export and checks


def export(model: nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        # Both warnings are expected: the legacy exporter is chosen on purpose (single
        # LayerNormalization op, constant-shaped Reshapes), and the constant-folding advice
        # only applies to models exported in training mode, which these are not.
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript")
        warnings.filterwarnings("ignore", message="It is recommended that constant folding")
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 8, 8),),
            path,
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            # PRESERVE on an eval-mode model exports an inference graph but skips the
            # eval-only peephole that folds BatchNorm into Conv: BN nodes are surgery targets.
            training=torch.onnx.TrainingMode.PRESERVE,
        )


def op_histogram(path: Path) -> collections.Counter:
    return collections.Counter(node.op_type for node in onnx.load(path).graph.node)


def check_graph(path: Path, required_ops: frozenset[str]) -> None:
    onnx.checker.check_model(onnx.load(path), full_check=True)
    size = path.stat().st_size
    if size >= MAX_BYTES:
        raise RuntimeError(f"{path.name} is {size} bytes")
    missing = required_ops - op_histogram(path).keys()
    if missing:
        raise RuntimeError(f"{path.name} lacks {sorted(missing)}")


def onnx_accuracy(model: nn.Module, path: Path, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy as onnxruntime computes it, after checking it agrees with torch."""
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input": x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    diff = float(np.abs(got - want).max())
    if diff > TOLERANCE:
        raise RuntimeError(f"{path.name}: onnxruntime differs from torch by {diff:.2e}")
    return float((got.argmax(axis=1) == y).mean())


# ---------------------------------------------------------------- recipes and report


@dataclass(frozen=True)
class Recipe:
    name: str
    factory: Callable[[], nn.Module]
    epochs: int
    lr: float
    required_ops: frozenset[str]


# Epochs and learning rates were picked on the val split; the ViT needs the longest schedule.
RECIPES = (
    Recipe("digits_mlp", DigitsMLP, 40, 1e-2, frozenset({"Flatten", "Gemm", "Relu"})),
    Recipe("digits_cnn", DigitsCNN, 30, 3e-3, frozenset({"Conv", "BatchNormalization", "Add"})),
    Recipe("digits_vit", DigitsViT, 100, 2e-3, frozenset({"LayerNormalization", "Softmax", "MatMul"})),
)


def build(recipe: Recipe, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple:
    torch.manual_seed(SEED)  # reseed per model so each is independent of build order
    model = recipe.factory()
    train(model, *splits["train"], epochs=recipe.epochs, lr=recipe.lr)
    path = OUT_DIR / f"{recipe.name}.onnx"
    export(model, path)
    check_graph(path, recipe.required_ops)
    params = sum(p.numel() for p in model.parameters())
    size = path.stat().st_size
    val_acc = onnx_accuracy(model, path, *splits["val"])
    test_acc = onnx_accuracy(model, path, *splits["test"])
    ops = ", ".join(f"{op}={n}" for op, n in sorted(op_histogram(path).items()))
    print(f"{path.name}: params={params} bytes={size} val_acc={val_acc:.4f} test_acc={test_acc:.4f}")
    print(f"  sha256={hashlib.sha256(path.read_bytes()).hexdigest()}")
    print(f"  ops: {ops}")
    return recipe.name, params, size, test_acc


def write_readme(rows: list[tuple], splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    table = "\n".join(
        f"| `{name}.onnx` | {params:,} | {size:,} | {acc:.4f} |" for name, params, size, acc in rows
    )
    counts = {f"n_{split}": f"{len(y):,}" for split, (_, y) in splits.items()}
    (OUT_DIR / "README.md").write_text(README.format(table=table, **counts))


README = """\
# Digits fixtures

Small, seeded models and data for graphsurg's tests and examples, all built from scikit-learn's
bundled 8x8 digits (1,797 images; nothing is downloaded).

## Rebuild

```
python models/build.py
```

Needs torch and scikit-learn besides graphsurg's own dependencies, runs on CPU in about a
minute, and reproduces the numbers below (seeded, deterministic, two torch threads).

## Data

Pixels are scaled to [0, 1] (divided by 16); inputs are float32 `[N, 1, 8, 8]`, labels int64.
The splits are stratified with seed 0: {n_train} train, {n_val} val, {n_test} test images (70/10/20 %).

| File | Keys |
| --- | --- |
| `digits.npz` | `x_train`, `y_train`, `x_val`, `y_val`, `x_test`, `y_test` |
| `digits_train.npz`, `digits_val.npz`, `digits_test.npz` | `input`, `labels` |

The per-split files are keyed by the models' input name, with the labels under `labels`, so
`graphsurg eval` takes them directly.

## Models

Each model has one input `input` `[batch, 1, 8, 8]` (float32, dynamic `batch`) and one output
`logits` `[batch, 10]`; opset 17, TorchScript exporter, weights stored as initializers.

- `digits_mlp.onnx`: Flatten, Gemm 64->128, Relu, Gemm 128->64, Relu, Gemm 64->10.
- `digits_cnn.onnx`: Conv 1->16 + BatchNormalization + Relu; a residual block (two 16->16
  Conv + BatchNormalization, Add with the skip, Relu); Conv 16->32 stride 2 + BatchNormalization
  + Relu; GlobalAveragePool, Flatten, Gemm 32->10. BatchNormalization is kept unfolded.
- `digits_vit.onnx`: 2x2 patch embedding (Conv, 16 tokens of width 32) plus a learned position
  embedding; two pre-LayerNorm encoder blocks whose 4-head self-attention is written out op by
  op (separate q/k/v MatMul+Add, Reshape/Transpose to heads, scaled MatMul, Softmax, MatMul,
  output projection) with a GELU MLP 32->64->32; final LayerNormalization, mean over tokens,
  Gemm 32->10. GELU appears as its Erf expansion, opset 17 having no Gelu op.

Test accuracy is measured by onnxruntime on `digits_test.npz`. Parameters counts trainable
weights; the CNN's file also stores its 160 BatchNorm running statistics as initializers.

| Model | Parameters | File bytes | Test accuracy |
| --- | ---: | ---: | ---: |
{table}
"""


def main() -> None:
    torch.set_num_threads(2)
    # Fails loudly should any op fall back to a nondeterministic kernel, rather than drift.
    torch.use_deterministic_algorithms(True)
    splits = make_splits()
    save_splits(splits)
    write_readme([build(recipe, splits) for recipe in RECIPES], splits)


if __name__ == "__main__":
    main()
