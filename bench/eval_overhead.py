"""graphsurg eval's throughput against a bare onnxruntime loop on the same data, in the same run.

Both sides do the whole job end to end: create the session, open the .npz, run every batch and
compute top-1 accuracy (graphsurg also computes the loss and its bookkeeping). Both use the same
provider (CPU) and thread count. Runs alternate between the two, and the table reports medians over
the repeats; a ratio is graphsurg time / bare time (target: <= 1.1), by wall clock and by this
process's CPU time (the steadier figure on a machine shared with other jobs).

    python bench/eval_overhead.py [--repeat 5] [--tile 100] [--batch-size 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graphsurg.eval import evaluate  # noqa: E402

MODELS = ROOT / "models"
NAMES = ("digits_mlp", "digits_cnn", "digits_vit")


def make_data(folder: Path, tile: int) -> tuple[Path, int]:
    """The test split repeated `tile` times, saved compressed like the bundled files."""
    with np.load(MODELS / "digits_test.npz") as data:
        x, y = np.tile(data["input"], (tile, 1, 1, 1)), np.tile(data["labels"], tile)
    path = folder / "digits_tiled.npz"
    np.savez_compressed(path, input=x, labels=y)
    return path, len(y)


def bare_loop(model: Path, data: Path, batch_size: int, threads: int) -> float:
    """Accuracy the plain way: one session, the arrays loaded, a slicing loop, argmax."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
    with np.load(data) as arrays:
        x, y = arrays["input"], arrays["labels"]
    correct = 0
    for start in range(0, len(y), batch_size):
        (logits,) = session.run(None, {"input": x[start:start + batch_size]})
        correct += int(np.count_nonzero(logits.argmax(axis=1) == y[start:start + batch_size]))
    return correct / len(y)


def graphsurg_eval(model: Path, data: Path, batch_size: int, threads: int) -> float:
    result = evaluate(model, str(data), batch_size=batch_size, threads=threads, provider="cpu")
    return result["metrics"]["accuracy"]


def timed(fn, *args) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of this process, result). With one onnxruntime thread all work
    runs in this process, so CPU time is what other jobs on a shared machine disturb least."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, value


def measure(model: Path, data: Path, samples: int, args) -> dict:
    """Paired runs (bare, then graphsurg, back to back), medians over the repeats."""
    bare_wall, ours_wall, bare_cpu, ours_cpu = [], [], [], []
    timed(bare_loop, model, data, args.batch_size, args.threads)  # warm caches for both sides
    timed(graphsurg_eval, model, data, args.batch_size, args.threads)
    for _ in range(args.repeat):
        wall, cpu, bare_acc = timed(bare_loop, model, data, args.batch_size, args.threads)
        bare_wall.append(wall)
        bare_cpu.append(cpu)
        wall, cpu, ours_acc = timed(graphsurg_eval, model, data, args.batch_size, args.threads)
        ours_wall.append(wall)
        ours_cpu.append(cpu)
    if abs(bare_acc - ours_acc) > 1e-12:
        raise SystemExit(f"{model.name}: accuracies differ: bare {bare_acc} vs graphsurg {ours_acc}")
    median = statistics.median
    return {"model": model.stem, "samples": samples, "bare": samples / median(bare_wall),
            "ours": samples / median(ours_wall), "wall": median(ours_wall) / median(bare_wall),
            "cpu": median(ours_cpu) / median(bare_cpu), "accuracy": ours_acc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tile", type=int, default=100, help="copies of the 360-sample test split")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, samples = make_data(Path(tmp), args.tile)
        rows = [measure(MODELS / f"{name}.onnx", data, samples, args) for name in NAMES]
    print(f"eval overhead: {samples} samples, batch {args.batch_size}, {args.threads} thread(s), "
          f"median of {args.repeat}, onnxruntime {ort.__version__} CPU")
    print(f"{'model':<12} {'bare ort (samples/s)':>21} {'graphsurg eval (samples/s)':>27} {'wall ratio':>11} "
          f"{'cpu ratio':>10} {'accuracy':>9}")
    for row in rows:
        print(f"{row['model']:<12} {row['bare']:>21,.0f} {row['ours']:>27,.0f} {row['wall']:>10.3f}x "
              f"{row['cpu']:>9.3f}x {row['accuracy']:>9.4f}")
    worst = max(row["cpu"] for row in rows)
    print(f"worst CPU-time ratio {worst:.3f}x, wall {max(row['wall'] for row in rows):.3f}x "
          f"(target <= 1.10x): {'ok' if worst <= 1.10 else 'MISSED'}")


if __name__ == "__main__":
    main()
