"""Benchmark: training throughput of the torch interpreter (graphsurg.train.GraphModule running the
ONNX graph) against a hand-written nn.Module of the same architecture with the same weights, on the
same data and batches, in the same run. Target: the interpreter at >= 0.7x the hand-written module.

    .venv/bin/python bench/recover.py [--steps 200] [--batch-size 64] [--threads 1] [--rounds 3]

Each step is a full training step: forward, cross-entropy, backward, AdamW update (BatchNorm in
training mode). Rounds alternate interpreter and module so machine load hits both alike; the table
shows the median samples/s per model and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from graphsurg import serde
from graphsurg.train.interpreter import GraphModule

MODELS = Path(__file__).resolve().parents[1] / "models"


class DigitsMLP(nn.Module):
    """models/build.py's MLP: Flatten, Linear 64->128, ReLU, Linear 128->64, ReLU, Linear 64->10."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                                 nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x)


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = conv_bn(channels, channels), conv_bn(channels, channels)

    def forward(self, x):
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class DigitsCNN(nn.Module):
    """models/build.py's CNN (its state-dict names match the ONNX initializer names)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(conv_bn(1, 16), nn.ReLU(), ResidualBlock(16), conv_bn(16, 32, stride=2), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)


def load_same_weights(module: nn.Module, onnx_path: Path) -> nn.Module:
    """Copies the ONNX initializers into the hand-written module (names are the state-dict keys)."""
    model = serde.load(onnx_path)
    state = {name: torch.from_numpy(value.const.numpy().copy()) for name, value in model.graph.initializers.items()}
    missing, _ = module.load_state_dict(state, strict=False)
    if [m for m in missing if not m.endswith("num_batches_tracked")]:
        raise SystemExit(f"{onnx_path.name}: the hand-written module has other parameters: {missing}")
    return module


def throughput(module: nn.Module, x: torch.Tensor, y: torch.Tensor, batches: list[np.ndarray]) -> float:
    """Samples per second over full training steps."""
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    module.train()
    start = time.perf_counter()
    for index in batches:
        out = module(x[index])
        logits = out[0] if isinstance(out, tuple) else out
        loss = F.cross_entropy(logits, y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def bench(name: str, factory, args) -> tuple[str, float, float]:
    data = np.load(MODELS / "digits_train.npz")
    x, y = torch.from_numpy(data["input"]), torch.from_numpy(data["labels"])
    rng = np.random.default_rng(0)
    batches = [rng.choice(len(x), args.batch_size, replace=False) for _ in range(args.steps)]
    warm = batches[:10]
    interpreted, handwritten = [], []
    for _ in range(args.rounds):
        # Fresh copies each round: both start from the same weights and optimizer state.
        graph_module = GraphModule(serde.load(MODELS / f"{name}.onnx"))
        reference = load_same_weights(factory(), MODELS / f"{name}.onnx")
        throughput(graph_module, x, y, warm)
        throughput(reference, x, y, warm)
        interpreted.append(throughput(graph_module, x, y, batches))
        handwritten.append(throughput(reference, x, y, batches))
    return name, statistics.median(interpreted), statistics.median(handwritten)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [bench("digits_mlp", DigitsMLP, args), bench("digits_cnn", DigitsCNN, args)]
    print(f"training throughput, batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    print(f"{'model':<12} {'interpreter':>14} {'nn.Module':>14} {'ratio':>7}")
    for name, interp, hand in rows:
        print(f"{name:<12} {interp:>10,.0f} s/s {hand:>10,.0f} s/s {interp / hand:>6.2f}x")
    worst = min(interp / hand for _, interp, hand in rows)
    print(f"target >= 0.70x: {'met' if worst >= 0.7 else 'MISSED'} (worst {worst:.2f}x)")


if __name__ == "__main__":
    main()
