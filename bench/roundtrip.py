"""Round-trip benchmark: graphsurg's load + save beside plain onnx.load + onnx.save,
onnx-graphsurgeon's import + export, and `cp` of the files, all in the same run.

    python bench/roundtrip.py [--repeat N] [--skip-big] [--keep]

Models: the bundled digits models, the largest `pytorch-converted` and `light` models of the
onnx wheel's test data (by file size), light_vgg19 with its ConstantOfShape weights folded into
575 MB of inline initializers, and a generated 1 GiB external-data model (16 MatMul layers of
4096x4096 float32); and a graph-heavy stress model (10,000 ops, 42 MB) where the per-op cost of
building the IR dominates. The generated models live in a temporary folder that is removed at the
end.

Each measurement runs in its own subprocess, so peak RSS is per tool (the process's own
high-water mark, VmHWM). `time` is the wall time of
the round trip inside that process (imports and interpreter start excluded; for cp, the whole
process); `+RSS` is the process's peak RSS above what it held before loading (the interpreter
with the tool imported). The median of `--repeat` runs is shown. Outputs are deleted and the page
cache is flushed (`sync`) before every run, so no run pays for another's writeback.

Targets (from issue 2): on the 1 GiB model, graphsurg within 1.5x of cp and under 100 MB above
its baseline; on models of 10 MB and more, within 1.5x of onnx.load + onnx.save.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]
ONNX_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"

CHILD = textwrap.dedent("""
    import json, os, resource, sys, time
    tool, src, out, external = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
    def peak_mb():
        # VmHWM: this process's own high-water mark (ru_maxrss would include the parent's, which
        # Linux carries across fork and exec)
        try:
            with open("/proc/self/status") as status:
                return next(int(l.split()[1]) for l in status if l.startswith("VmHWM")) / 1024
        except (OSError, StopIteration):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    import onnx
    if tool.startswith("graphsurg"):
        from graphsurg import serde
    elif tool == "onnx-graphsurgeon":
        import onnx_graphsurgeon as gs
    def onnx_save(model):
        if external:
            onnx.save_model(model, out, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=os.path.basename(out) + ".data", size_threshold=1024)
        else:
            onnx.save_model(model, out)
    base = peak_mb()
    start = time.perf_counter()
    if tool.startswith("graphsurg"):
        serde.save(serde.load(src), out, durable=tool.endswith("(durable)"))
    elif tool == "onnx":
        onnx_save(onnx.load(src))
    elif tool == "onnx-graphsurgeon":
        onnx_save(gs.export_onnx(gs.import_onnx(onnx.load(src))))
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb(), "base_mb": base}))
""")

# cp's own peak RSS comes from GNU time where it is installed (a child forked from Python would
# report Python's RSS: Linux keeps the high-water mark across exec).
CP = textwrap.dedent("""
    import json, os, subprocess, sys, tempfile, time
    timer = "/usr/bin/time" if os.path.exists("/usr/bin/time") else None
    with tempfile.NamedTemporaryFile("r") as report:
        prefix = [timer, "-f", "%M", "-o", report.name] if timer else []
        start = time.perf_counter()
        subprocess.run([*prefix, "cp", *sys.argv[2:], sys.argv[1]], check=True)
        seconds = time.perf_counter() - start
        peak = float(report.read().strip().splitlines()[-1]) / 1024 if timer else float("nan")
    print(json.dumps({"seconds": seconds, "peak_mb": peak, "base_mb": 0.0}))
""")


@dataclass
class Subject:
    label: str
    path: Path
    external: bool = False
    big: bool = False  # the 1 GiB model: its targets are against cp
    files: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.files:
            self.files = [self.path]

    @property
    def size(self) -> int:
        return sum(f.stat().st_size for f in self.files)


@dataclass
class Measure:
    seconds: float
    peak_mb: float
    growth_mb: float


def measure(tool: str, subject: Subject, out_dir: Path, repeat: int) -> Measure:
    runs = []
    for _ in range(repeat):
        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.mkdir(parents=True)
        os.sync()
        out = out_dir / subject.path.name
        if tool == "cp":
            args = [sys.executable, "-c", CP, str(out_dir), *map(str, subject.files)]
        else:
            args = [sys.executable, "-c", CHILD, tool, str(subject.path), str(out), "1" if subject.external else "0"]
        done = subprocess.run(args, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} on {subject.label} failed: {done.stderr.strip().splitlines()[-1:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        runs.append(Measure(result["seconds"], result["peak_mb"], result["peak_mb"] - result["base_mb"]))
    shutil.rmtree(out_dir, ignore_errors=True)
    return Measure(statistics.median(r.seconds for r in runs), statistics.median(r.peak_mb for r in runs),
                   statistics.median(r.growth_mb for r in runs))


def largest(folder: Path, pattern: str) -> Path:
    return max(folder.glob(pattern), key=lambda p: (p.stat().st_size, p.name))


def make_big_external(folder: Path, layers: int = 16, n: int = 4096) -> Subject:
    """16 MatMul layers of 4096x4096 float32 in one external data file (1 GiB)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "big.onnx.data"
    rng = np.random.default_rng(0)
    initializers, nodes = [], []
    with open(data, "wb") as handle:
        for i in range(layers):
            weight = rng.standard_normal((n, n), dtype=np.float32) * np.float32(1 / 64)
            offset = handle.tell()
            handle.write(weight.tobytes())
            tensor = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[n, n],
                                 data_location=TensorProto.EXTERNAL)
            for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(weight.nbytes))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            initializers.append(tensor)
            nodes.append(helper.make_node("MatMul", [f"x{i}", f"w{i}"], [f"x{i + 1}"], name=f"layer{i}"))
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x0", TensorProto.FLOAT, ["batch", n])],
                              [helper.make_tensor_value_info(f"x{layers}", TensorProto.FLOAT, ["batch", n])],
                              initializers)
    path = folder / "big.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return Subject("generated 16 x MatMul 4096^2 (external)", path, external=True, big=True, files=[path, data])


def make_folded_vgg19(folder: Path) -> Subject:
    """light_vgg19 with its ConstantOfShape weights folded: 575 MB of inline initializers."""
    from graphsurg import serde
    from graphsurg.pipeline import make_pass, run_passes

    model = serde.load(ONNX_DATA / "light" / "light_vgg19.onnx")
    run_passes(model, [make_pass("fold-constants"), make_pass("cleanup")], validate=False)
    path = folder / "light_vgg19_folded.onnx"
    serde.save(model, path, external_data=False)
    return Subject("light_vgg19, weights folded (inline)", path)


def make_many_nodes(folder: Path, blocks: int = 2500, n: int = 64) -> Subject:
    """A graph-heavy model: 10,000 ops (MatMul, Add, Relu, Identity) and 5,000 small weights, 42 MB.

    The opposite of the weight-heavy models above: graphsurg's per-op cost (building the networkx
    IR) outweighs the bytes, and is held to the same 1.5x of onnx.load + onnx.save."""
    rng = np.random.default_rng(0)
    nodes, initializers, previous = [], [], "x"
    for i in range(blocks):
        initializers.append(helper.make_tensor(f"w{i}", TensorProto.FLOAT, [n, n],
                                               (rng.standard_normal((n, n), dtype=np.float32) / n).tobytes(), raw=True))
        initializers.append(helper.make_tensor(f"b{i}", TensorProto.FLOAT, [n], np.zeros(n, np.float32).tobytes(),
                                               raw=True))
        nodes += [helper.make_node("MatMul", [previous, f"w{i}"], [f"m{i}"], name=f"mm{i}"),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"], name=f"add{i}"),
                  helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"relu{i}"),
                  helper.make_node("Identity", [f"r{i}"], [f"h{i}"], name=f"id{i}")]
        previous = f"h{i}"
    graph = helper.make_graph(nodes, "many", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])],
                              [helper.make_tensor_value_info(previous, TensorProto.FLOAT, ["batch", n])],
                              initializers)
    path = folder / "many_nodes.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return Subject("stress: 10k ops, 5k small weights (inline)", path)


def subjects(tmp: Path, skip_big: bool) -> list[Subject]:
    found = [Subject(f"bundled {p.stem}", p) for p in sorted((ROOT / "models").glob("*.onnx"))]
    converted = largest(ONNX_DATA / "pytorch-converted", "*/model.onnx")
    found.append(Subject(f"pytorch-converted {converted.parent.name} (largest)", converted))
    light = largest(ONNX_DATA / "light", "*.onnx")
    found.append(Subject(f"light {light.stem} (largest)", light))
    if not skip_big:
        found.append(make_folded_vgg19(tmp))
        found.append(make_big_external(tmp / "big"))
    found.append(make_many_nodes(tmp))
    return found


def tools_for(subject: Subject) -> list[str]:
    tools = ["graphsurg", "onnx", "onnx-graphsurgeon", "cp"]
    if subject.big:
        tools.insert(1, "graphsurg (durable)")
    try:
        import onnx_graphsurgeon  # noqa: F401
    except ImportError:
        tools.remove("onnx-graphsurgeon")
    return tools


def human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (median shown)")
    parser.add_argument("--skip-big", action="store_true", help="leave out the generated 575 MB and 1 GiB models")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="graphsurg-bench-"))
    misses: list[str] = []
    try:
        rows = []
        for subject in subjects(tmp, args.skip_big):
            results = {tool: measure(tool, subject, tmp / "out", args.repeat) for tool in tools_for(subject)}
            rows.append((subject, results))
            print_rows([rows[-1]], header=len(rows) == 1)
        misses = check_targets(rows)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if misses else 0


def print_rows(rows, header: bool) -> None:
    if header:
        print(f"{'model':<46} {'size':>9}  {'tool':<20} {'time s':>8} {'x onnx':>7} {'x cp':>6} "
              f"{'peak RSS':>9} {'+RSS':>8}")
        print("-" * 122)
    for subject, results in rows:
        onnx_s, cp_s = results["onnx"].seconds, results["cp"].seconds
        for i, (tool, m) in enumerate(results.items()):
            label = f"{subject.label:<46} {human(subject.size):>9}" if i == 0 else " " * 56
            growth = "-" if tool == "cp" else f"{m.growth_mb:.0f} MB"
            print(f"{label}  {tool:<20} {m.seconds:>8.3f} {m.seconds / onnx_s:>7.2f} {m.seconds / cp_s:>6.2f} "
                  f"{m.peak_mb:>6.0f} MB {growth:>8}")
        sys.stdout.flush()


def check_targets(rows) -> list[str]:
    print("\ntargets")
    misses = []

    def report(ok: bool, text: str) -> None:
        print(f"  [{'ok' if ok else 'MISSED'}] {text}")
        if not ok:
            misses.append(text)

    for subject, results in rows:
        gs, plain, cp = results["graphsurg"], results["onnx"], results["cp"]
        if subject.big:
            report(gs.seconds <= 1.5 * cp.seconds,
                   f"{subject.label}: graphsurg {gs.seconds:.2f} s within 1.5x of cp {cp.seconds:.2f} s "
                   f"({gs.seconds / cp.seconds:.2f}x)")
            report(gs.growth_mb < 100, f"{subject.label}: graphsurg peak RSS +{gs.growth_mb:.0f} MB < 100 MB above "
                                       "its baseline")
        if subject.size >= 10 * 2**20:
            report(gs.seconds <= 1.5 * plain.seconds,
                   f"{subject.label}: graphsurg {gs.seconds:.2f} s within 1.5x of onnx.load+save "
                   f"{plain.seconds:.2f} s ({gs.seconds / plain.seconds:.2f}x)")
    return misses


if __name__ == "__main__":
    sys.exit(main())
