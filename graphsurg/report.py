"""`graphsurg inspect`: what a model is made of, as a dict (JSON) and as text."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from graphsurg.ir import ExternalTensor, Model, Value, all_graphs, dtypes


def _shape(value: Value) -> list | None:
    return None if value.shape is None else [d if d is not None else "?" for d in value.shape]


def _io(value: Value) -> dict[str, Any]:
    return {"name": value.name, "dtype": dtypes.name_of(value.dtype), "shape": _shape(value)}


def inspect_model(model: Model, path: str | None = None, top: int = 10) -> dict[str, Any]:
    graphs = list(all_graphs(model.graph))
    histogram = Counter(
        f"{op.domain}::{op.op_type}" if op.domain not in ("", "ai.onnx") else op.op_type
        for g in graphs for op in g.ops
    )
    params = [v for g in graphs for v in g.initializers.values()]
    by_dtype: dict[str, dict[str, int]] = {}
    for value in params:
        entry = by_dtype.setdefault(dtypes.name_of(value.const.dtype), {"count": 0, "bytes": 0})
        entry["count"] += value.const.size
        entry["bytes"] += value.const.nbytes
    external = sorted({os.path.relpath(v.const.location.path, model.source_dir or ".")
                       for v in params if isinstance(v.const, ExternalTensor)})
    inputs = [v for v in model.graph.inputs if not v.is_const]
    return {
        "model": path,
        "ir_version": model.ir_version,
        "opsets": {k or "ai.onnx": v for k, v in model.opset_imports.items()},
        "producer": {"name": model.producer_name, "version": model.producer_version},
        "inputs": [_io(v) for v in inputs],
        "outputs": [_io(v) for v in model.graph.outputs],
        "ops": sum(histogram.values()),
        "op_histogram": dict(histogram.most_common()),
        "parameters": {"count": sum(v.const.size for v in params), "bytes": sum(v.const.nbytes for v in params),
                       "by_dtype": by_dtype},
        "largest_layers": _largest_layers(model, top),
        "subgraphs": [{"op": g.owner.label, "op_type": g.owner.op_type, "name": g.name, "ops": len(g.ops)}
                      for g in graphs[1:] if g.owner is not None],
        "external_data": external,
    }


def _largest_layers(model: Model, top: int) -> list[dict[str, Any]]:
    rows = []
    for graph in all_graphs(model.graph):
        for op in graph.ops:
            weights = [v for v in op.inputs if v is not None and v.is_const]
            if weights:
                rows.append({
                    "op": op.label, "op_type": op.op_type,
                    "parameters": sum(v.const.size for v in weights),
                    "bytes": sum(v.const.nbytes for v in weights),
                })
    rows.sort(key=lambda r: (-r["parameters"], r["op"]))
    return rows[:top]


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def format_report(info: dict[str, Any]) -> str:
    opsets = ", ".join(f"{k} {v}" for k, v in info["opsets"].items())
    producer = f"{info['producer']['name']} {info['producer']['version']}".strip() or "(unknown)"
    lines = [
        f"model      {info['model'] or '<memory>'}",
        f"ir         {info['ir_version']}   opsets: {opsets}   producer: {producer}",
        f"parameters {info['parameters']['count']:,} ({human_bytes(info['parameters']['bytes'])})  "
        + "  ".join(f"{k}: {v['count']:,}" for k, v in info["parameters"]["by_dtype"].items()),
        "inputs",
        *[f"  {io['name']:<24} {io['dtype']:<8} {io['shape']}" for io in info["inputs"]],
        "outputs",
        *[f"  {io['name']:<24} {io['dtype']:<8} {io['shape']}" for io in info["outputs"]],
        f"ops ({info['ops']})",
        *[f"  {name:<24} {count}" for name, count in info["op_histogram"].items()],
    ]
    if info["largest_layers"]:
        lines.append("largest layers")
        lines += [f"  {r['op']:<32} {r['op_type']:<12} {r['parameters']:>12,}  {human_bytes(r['bytes'])}"
                  for r in info["largest_layers"]]
    if info["subgraphs"]:
        lines.append("subgraphs")
        lines += [f"  {s['op']} ({s['op_type']}): {s['name']}, {s['ops']} ops" for s in info["subgraphs"]]
    if info["external_data"]:
        lines.append("external data")
        lines += [f"  {name}" for name in info["external_data"]]
    return "\n".join(lines)
