"""Benchmark: structured excision (`excise{ratio=r}`) against the original and against Torch-Pruning.

Models: the bundled digits CNN and ViT, and a generated ResNet-style network (8 basic residual
blocks, 64-128-256 channels, stride-2 stem, 64x64 input, seeded random weights, BatchNorm folded
by the exporter). For the ResNet-style network the same architecture is built in torch and pruned
with Torch-Pruning (`tp.pruner.MagnitudePruner`, L1 magnitude, classifier ignored) at the same
ratio, then exported the same way: that is the anchor.

    .venv/bin/python bench/excise.py [--ratios 0.25,0.5,0.75] [--runs 40] [--threads 1]

Prints one table: parameters and onnxruntime latency (median of `--runs`, batch 1, CPU provider)
as ratios of the original, the excision time, and its rate per 10 M parameters. Targets: at
ratio 0.5 the ResNet-style model reaches <= 0.35x latency, no slower than Torch-Pruning's export
at equal parameter count; excision takes under 1 s per 10 M parameters. Needs the dev extra
(torch, torch-pruning).
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

from graphsurg import serde
from graphsurg.pipeline import make_pass, run_passes

ROOT = Path(__file__).resolve().parents[1]
STAGES = ((64, 2), (128, 3), (256, 3))  # (channels, blocks): 8 residual blocks


def resnet_style():
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out)
            self.conv2, self.bn2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)
            self.short = nn.Sequential() if stride == 1 and c_in == c_out else nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.short(x) + self.bn2(self.conv2(y)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
            blocks, c_in = [], 64
            for index, (channels, count) in enumerate(STAGES):
                for b in range(count):
                    blocks.append(Block(c_in, channels, 2 if b == 0 and index > 0 else 1))
                    c_in = channels
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(c_in, 10)

        def forward(self, x):
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))

    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():  # random but non-trivial BatchNorm statistics, so folding matters
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
    return net.eval()


def export(net) -> bytes:
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 64, 64),), buffer, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return buffer.getvalue()


def torch_pruned(ratio: float) -> bytes:
    import torch
    import torch_pruning as tp

    net = resnet_style()
    importance = tp.importance.MagnitudeImportance(p=1)
    pruner = tp.pruner.MagnitudePruner(net, torch.zeros(1, 3, 64, 64), importance=importance, pruning_ratio=ratio,
                                       ignored_layers=[net.fc])
    pruner.step()
    return export(net.eval())


def session(model: bytes, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def latencies_ms(models: list[bytes], shape: tuple[int, ...], runs: int, threads: int) -> list[float]:
    """Median latency of each model; runs are interleaved round-robin so that load from other
    processes on a shared machine hits every variant alike."""
    sessions = [session(m, threads) for m in models]
    feed = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    feeds = [{s.get_inputs()[0].name: feed} for s in sessions]
    for s, f in zip(sessions, feeds, strict=True):
        for _ in range(3):
            s.run(None, f)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for s, f, samples in zip(sessions, feeds, times, strict=True):
            start = time.perf_counter()
            s.run(None, f)
            samples.append(time.perf_counter() - start)
    return [statistics.median(t) * 1e3 for t in times]


def parameters(model: bytes) -> int:
    return serde.load(model).parameter_count()


def excise(model: bytes, ratio: float) -> tuple[bytes, float]:
    """The excised model and the seconds the pass took (loading and saving not counted)."""
    ir, spec = serde.load(model), make_pass(f"excise{{ratio={ratio}}}")
    start = time.perf_counter()
    run_passes(ir, [spec], validate=False)
    return serde.to_bytes(ir), time.perf_counter() - start


def rows_for(name: str, original: bytes, shape: tuple, ratios: list[float], args, anchor=None) -> list[list[str]]:
    variants = [("original", "-", original, None)]
    for ratio in ratios:
        excised, seconds = excise(original, ratio)
        variants.append(("graphsurg excise", f"{ratio}", excised, seconds))
        if anchor is not None:
            variants.append(("Torch-Pruning", f"{ratio}", anchor(ratio), None))
    times = latencies_ms([v[2] for v in variants], shape, args.runs, args.threads)
    base_params, base_ms = parameters(original), times[0]
    rows = []
    for (method, ratio, model, seconds), ms in zip(variants, times, strict=True):
        params = parameters(model)
        # Below a million parameters the fixed cost of a pass dominates: a rate per 10 M means nothing.
        rate = f"{seconds / (base_params / 1e7):.2f}" if seconds is not None and base_params >= 1e6 else "-"
        rows.append([name, method, ratio, f"{params:,}", f"{params / base_params:.3f}", f"{ms:.3f}",
                     f"{ms / base_ms:.3f}", f"{seconds:.3f}" if seconds is not None else "-", rate])
    return rows


def bundled(name: str) -> bytes:
    return (ROOT / "models" / f"{name}.onnx").read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", default="0.25,0.5,0.75")
    parser.add_argument("--runs", type=int, default=40, help="timed runs per variant, interleaved")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    ratios = [float(r) for r in args.ratios.split(",")]
    excise(bundled("digits_cnn"), 0.5)  # first use imports the pass modules: not part of a timing
    rows = []
    for name in ("digits_cnn", "digits_vit"):
        rows += rows_for(name, bundled(name), (1, 1, 8, 8), ratios, args)
    rows += rows_for("resnet-style", export(resnet_style()), (1, 3, 64, 64), ratios, args, anchor=torch_pruned)
    header = ["model", "method", "ratio", "params", "params x", "latency ms", "latency x", "excise s", "s / 10M"]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"onnxruntime {ort.__version__}, CPU, batch 1, {args.threads} thread(s), median of {args.runs} "
          "interleaved runs; excise s = the pass alone (no load, save or checker)")
    for row in [header, ["-" * w for w in widths], *rows]:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


if __name__ == "__main__":
    main()
