"""Benchmark: `graphsurg diff` of two generated 5,000-op models (target: under 10 s on this machine).

Model a is a deep residual MLP (MatMul, Add, Relu blocks with a skip Add every few blocks). Model b
is model a re-exported in the worst way for a diff: every op and value renamed, nodes re-sorted,
plus real edits: QDQ pairs inserted, Relus excised, weights
changed, an attribute changed. The diff must find exactly those edits.

    .venv/bin/python bench/diff.py [--ops 5000] [--no-html]

Prints one table, a column per scenario (b renamed throughout; b keeping its names, where the
name-first and structure-only matchings both run): seconds per phase, and the edits found against
the edits made ("want": ops changed are the rewired readers plus the attribute).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from graphsurg import serde
from graphsurg.diff import diff_models
from graphsurg.ir import Graph, Model

WIDTH = 16
OPS_PER_BLOCK = 4  # MatMul, Add (bias), Relu, Add (skip)


def generate(ops: int, seed: int = 0) -> Model:
    """A residual MLP with about `ops` ops; seeded."""
    rng = np.random.default_rng(seed)
    graph = Graph("bench")
    x = graph.add_input("input", 1, ("batch", WIDTH))
    skip = current = x
    for block in range(ops // OPS_PER_BLOCK):
        w = graph.add_initializer(f"w{block}", rng.standard_normal((WIDTH, WIDTH)).astype(np.float32) * 0.2)
        b = graph.add_initializer(f"b{block}", rng.standard_normal(WIDTH).astype(np.float32) * 0.1)
        mm = graph.add_op("MatMul", [current, w], name=f"block{block}/MatMul")
        add = graph.add_op("Add", [mm.outputs[0], b], name=f"block{block}/Add")
        relu = graph.add_op("Relu", [add.outputs[0]], name=f"block{block}/Relu")
        res = graph.add_op("Add", [relu.outputs[0], skip], name=f"block{block}/Residual")
        current = res.outputs[0]
        skip = current if block % 3 == 2 else skip
    graph.outputs.append(current)
    for value in graph.values():
        if value.dtype is None:
            value.dtype, value.shape = 1, ("batch", WIDTH)
    return Model(graph, opset_imports={"": 21})


def edit(model: Model) -> dict[str, int]:
    """Applies known edits through the IR (spread evenly over the model); returns how many of each it made."""
    graph = model.graph
    ops = graph.topological_order()
    relus = [op for op in ops if op.op_type == "Relu"]
    made = {"qdq": 0, "excised": 0, "weights": 0, "attributes": 0}
    for op in relus[5:-5:len(relus) // 10][:10]:  # QDQ after ten Relus
        scale = graph.add_initializer("qs", np.array(0.05, np.float32))
        zero = graph.add_initializer("qz", np.array(0, np.int8))
        q = graph.insert_after(op.outputs[0], "QuantizeLinear", [scale, zero])
        graph.insert_after(q.outputs[0], "DequantizeLinear", [scale, zero])
        made["qdq"] += 1
    for op in relus[7::len(relus) // 5][:5]:  # excise five Relus
        graph.replace_all_uses(op.outputs[0], op.inputs[0])
        graph.remove_op(op)
        made["excised"] += 1
    for name in list(graph.initializers)[::100][:20]:  # twenty weights nudged
        value = graph.initializers[name]
        if value.const.size > 1:
            graph.set_const(value, value.const.numpy() * np.float32(1.01))
            made["weights"] += 1
    target = next(op for op in graph.topological_order() if op.op_type == "MatMul")
    graph.set_attrs(target, note_only=1)  # an attribute onnx ignores; the diff must still see it
    made["attributes"] += 1
    return made


def rename_everything(model: Model) -> None:
    graph = model.graph
    interface = {v.name for v in graph.inputs} | {v.name for v in graph.outputs}
    for i, op in enumerate(graph.ops):
        op.name = f"node_{i}"
    for i, value in enumerate(list(graph.values())):
        if value.name not in interface:
            graph.rename_value(value, f"renamed_{i}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=5000)
    parser.add_argument("--no-html", action="store_true", help="leave the HTML page out of the timing")
    args = parser.parse_args()
    columns = {}
    with tempfile.TemporaryDirectory() as tmp:
        path_a = Path(tmp) / "a.onnx"
        serde.save(generate(args.ops), path_a)
        for scenario, rename in (("renamed", True), ("names kept", False)):
            edited = serde.load(path_a)
            made = edit(edited)
            if rename:
                rename_everything(edited)
                edited.graph.sort()
            path_b = Path(tmp) / f"b_{rename}.onnx"
            serde.save(edited, path_b)
            columns[scenario] = run(path_a, path_b, not args.no_html, made)
    names = [name for name, _ in next(iter(columns.values()))]
    print(f"{'':<24}" + "".join(f"{scenario:>28}" for scenario in columns))
    for i, name in enumerate(names):
        print(f"{name:<24}" + "".join(f"{rows[i][1]:>28}" for rows in columns.values()))


def run(path_a: Path, path_b: Path, html: bool, made: dict[str, int]) -> list[tuple[str, str]]:
    """Times load, match and compare, the JSON and text forms and (optionally) the HTML page."""
    start = time.perf_counter()
    a, b = serde.load(path_a), serde.load(path_b)
    loaded = time.perf_counter()
    report = diff_models(a, b, str(path_a), str(path_b))
    diffed = time.perf_counter()
    payload = report.to_json()
    from graphsurg.diff.text import render_text

    render_text(payload)
    rendered = time.perf_counter()
    page = 0.0
    if html:
        from graphsurg.diff.html import render_html

        render_html(report, payload)
        page = time.perf_counter() - rendered
    total = time.perf_counter() - start
    counts = payload["counts"]
    return [
        ("ops in a / b", f"{payload['a']['ops']} / {payload['b']['ops']}"),
        ("load both (s)", f"{loaded - start:.2f}"), ("match + compare (s)", f"{diffed - loaded:.2f}"),
        ("json + text (s)", f"{rendered - diffed:.2f}"), ("html page (s)", f"{page:.2f}" if html else "-"),
        ("total (s)", f"{total:.2f}"), ("under 10 s", "yes" if total < 10 else "NO"),
        ("matching won by", report.graph.matcher.strategy),
        ("ops added / want", f"{counts['ops_added']} / {2 * made['qdq']}"),
        ("ops removed / want", f"{counts['ops_removed']} / {made['excised']}"),
        ("ops changed / want", f"{counts['ops_changed']} / {made['qdq'] + made['excised'] + made['attributes']}"),
        ("weights changed / want", f"{counts['weights_changed']} / {made['weights']}"),
        ("ops matched", f"{counts['ops_matched']}"),
    ]


if __name__ == "__main__":
    main()
