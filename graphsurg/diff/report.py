"""The diff of two models and its JSON form (schema `graphsurg.diff/1`, documented in README "Diff").

Top level:
  schema       "graphsurg.diff/1"
  a, b         {"path", "ops", "parameters"}: the two models
  identical    true when nothing differs structurally (names aside) and, with --data, the outputs
               agree within tolerance
  summary      the one-line summary the text form starts with
  counts       ops_added, ops_removed, ops_changed, ops_matched, ops_renamed, values_renamed,
               weights_changed, weights_added, weights_removed, inputs_changed, outputs_changed,
               model_changed, subgraphs_changed, edits
  model        [{"field", "before", "after"}]: IR version, opsets, producer, metadata, functions, ...
  graph        the main graph's section (below)
  numeric      null, or the numeric comparison (see numeric.py)
A graph section:
  edits        [{"kind": insert|remove|replace|modify|interface-*, "summary", "added", "removed",
                 "changed", "after", "before"}]
  inputs, outputs  {"added": [io], "removed": [io], "changed": [{"before": io, "after": io, "changes"}]},
               io = {"name", "dtype", "shape"}
  ops          {"matched", "added": [op], "removed": [op], "changed": [{"before": op, "after": op,
                 "changes": [{"what": op_type|domain|attribute|input|outputs, ...}]}],
                 "renamed": [[name_a, name_b]]}; op = {"name", "op_type", "domain", "inputs", "outputs"}
  weights      {"unchanged": n, "changed", "added", "removed": [{"before", "after", "users", "shape",
                 "dtype", "quantized", "sparsity" (each [a, b]), "rel_change", "max_abs_change"}]}
  matching     "strategy" (names: name-first won; structure: the structure-only matching explained
               the change with fewer edits) and the pairs made by each phase: name, structure,
               neighbours, similarity
  subgraphs    [{"op", "attribute", "graph": a graph section}] for bodies that differ
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graphsurg.diff.compare import GraphDiff, WeightChange
from graphsurg.ir import Model, Op, all_graphs

SCHEMA = "graphsurg.diff/1"


@dataclass
class ModelDiff:
    model_a: Model
    model_b: Model
    graph: GraphDiff
    model_changes: list[dict[str, Any]]
    path_a: str | None = None
    path_b: str | None = None
    numeric: dict[str, Any] | None = None

    @property
    def structurally_identical(self) -> bool:
        return not self.model_changes and self.graph.identical

    @property
    def identical(self) -> bool:
        numeric_ok = self.numeric is None or bool(self.numeric.get("within_tolerance"))
        return self.structurally_identical and numeric_ok

    def counts(self) -> dict[str, int]:
        g = self.graph
        subgraphs = _all_subgraph_diffs(g)
        return {
            "ops_added": len(g.added), "ops_removed": len(g.removed), "ops_changed": len(g.changed),
            "ops_matched": len(g.matched), "ops_renamed": len(g.renamed_ops), "values_renamed": len(g.renamed_values),
            "weights_changed": len(g.weights_changed), "weights_added": len(g.weights_added),
            "weights_removed": len(g.weights_removed),
            "inputs_changed": sum(len(v) for v in g.inputs.values()),
            "outputs_changed": sum(len(v) for v in g.outputs.values()),
            "model_changed": len(self.model_changes),
            "subgraphs_changed": sum(1 for s in subgraphs if not s.diff.identical),
            "edits": len(g.edits),
        }

    def summary(self) -> str:
        counts = self.counts()
        if self.identical:
            renamed = counts["ops_renamed"] + counts["values_renamed"]
            extra = f"; {counts['ops_renamed']} ops and {counts['values_renamed']} values renamed" if renamed else ""
            numeric = "; outputs agree within tolerance" if self.numeric else ""
            return f"identical ({counts['ops_matched']} ops matched{extra}{numeric})"
        parts = [f"{counts[key]} {one if counts[key] == 1 else many}" for key, one, many in _SUMMARY_PARTS
                 if counts[key]]
        if self.numeric and not self.numeric.get("within_tolerance"):
            parts.append("outputs differ beyond tolerance")
        return "differs: " + ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "a": _model_entry(self.model_a, self.path_a),
            "b": _model_entry(self.model_b, self.path_b),
            "identical": self.identical,
            "summary": self.summary(),
            "counts": self.counts(),
            "model": self.model_changes,
            "graph": graph_section(self.graph),
            "numeric": self.numeric,
        }


_SUMMARY_PARTS = [  # count key, singular, plural
    ("ops_added", "op added", "ops added"), ("ops_removed", "op removed", "ops removed"),
    ("ops_changed", "op changed", "ops changed"), ("weights_changed", "weight changed", "weights changed"),
    ("weights_added", "weight added", "weights added"), ("weights_removed", "weight removed", "weights removed"),
    ("inputs_changed", "input change", "input changes"), ("outputs_changed", "output change", "output changes"),
    ("subgraphs_changed", "subgraph changed", "subgraphs changed"),
    ("model_changed", "model field changed", "model fields changed"),
]


def _all_subgraph_diffs(diff: GraphDiff) -> list:
    found = []
    for sub in diff.subgraphs:
        found.append(sub)
        found += _all_subgraph_diffs(sub.diff)
    return found


def _model_entry(model: Model, path: str | None) -> dict[str, Any]:
    ops = sum(len(g.ops) for g in all_graphs(model.graph))
    return {"path": path, "ops": ops, "parameters": model.parameter_count()}


def op_entry(op: Op) -> dict[str, Any]:
    return {"name": op.label, "op_type": op.op_type, "domain": op.domain or "ai.onnx",
            "inputs": [v.name if v is not None else "" for v in op.inputs],
            "outputs": [v.name if v is not None else "" for v in op.outputs]}


def weight_entry(change: WeightChange) -> dict[str, Any]:
    return {"before": change.a.value.name if change.a else None,
            "after": change.b.value.name if change.b else None,
            "users": [f"{op.label}:{port}" for op, port in change.users], **change.stats}


def graph_section(diff: GraphDiff) -> dict[str, Any]:
    return {
        "edits": diff.edits,
        "inputs": diff.inputs,
        "outputs": diff.outputs,
        "ops": {
            "matched": len(diff.matched),
            "added": [op_entry(op) for op in diff.added],
            "removed": [op_entry(op) for op in diff.removed],
            "changed": [{"before": op_entry(c.a), "after": op_entry(c.b), "changes": c.changes} for c in diff.changed],
            "renamed": [[a.label, b.label] for a, b in diff.renamed_ops],
        },
        "weights": {
            "unchanged": diff.weights_same,
            "changed": [weight_entry(w) for w in diff.weights_changed],
            "added": [weight_entry(w) for w in diff.weights_added],
            "removed": [weight_entry(w) for w in diff.weights_removed],
        },
        "matching": {"strategy": diff.matcher.strategy, **dict(sorted(diff.matcher.reasons.items()))},
        "subgraphs": [{"op": s.b.label, "attribute": s.attr, "graph": graph_section(s.diff)}
                      for s in diff.subgraphs if not s.diff.identical],
    }


def model_changes(a: Model, b: Model) -> list[dict[str, Any]]:
    """Differences outside the graph's ops: versions, opsets, producer, metadata, functions."""
    changes: list[dict[str, Any]] = []

    def note(name: str, before: Any, after: Any) -> None:
        if before != after:
            changes.append({"field": name, "before": before, "after": after})

    note("ir_version", a.ir_version, b.ir_version)
    for domain in sorted(set(a.opset_imports) | set(b.opset_imports)):
        note(f"opset {domain or 'ai.onnx'}", a.opset_imports.get(domain), b.opset_imports.get(domain))
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        note(field, getattr(a, field), getattr(b, field))
    for key in sorted(set(a.metadata_props) | set(b.metadata_props)):
        note(f"metadata {key}", a.metadata_props.get(key), b.metadata_props.get(key))
    note("graph name", a.graph.name, b.graph.name)
    note("graph doc_string", a.graph.doc_string, b.graph.doc_string)
    if sorted(a.functions) != sorted(b.functions):
        note("functions", f"{len(a.functions)} functions", f"{len(b.functions)} functions (contents differ)"
             if len(a.functions) == len(b.functions) else f"{len(b.functions)} functions")
    if a.rest_blob != b.rest_blob:
        note("other model fields", "present" if a.rest_blob else "absent", "differ" if b.rest_blob else "absent")
    return changes
