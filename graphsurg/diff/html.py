"""The HTML page of a diff: one self-contained file (inline CSS, JS and data; nothing fetched).

Python builds the union graph of the two models (matched ops once, removed ops from a, added ops
from b, graph inputs and outputs as pills) with a status per op and per edge, plus weight
histograms; viewer.js lays it out in layers, collapses runs of unchanged ops and draws it.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import networkx as nx

from graphsurg.diff.compare import GraphDiff, WeightChange
from graphsurg.diff.report import ModelDiff, op_entry, weight_entry
from graphsurg.diff.weights import histograms
from graphsurg.fsutil import write_text
from graphsurg.ir import Op, Value

# One source of truth for the colours: the page's CSS variables and the tests read these.
STATUS_COLORS = {
    "added": "#2da44e",
    "removed": "#cf222e",
    "changed": "#e3a008",
    "weights": "#8250df",
    "unchanged": "#e6eaef",
    "io": "#ffffff",
}
EDGE_SAME, EDGE_ADDED, EDGE_REMOVED = 0, 1, 2


def write_html(report: ModelDiff, path: str, payload: dict[str, Any] | None = None) -> None:
    write_text(path, render_html(report, payload))


def render_html(report: ModelDiff, payload: dict[str, Any] | None = None) -> str:
    data = build_page_data(report, payload or report.to_json())
    blob = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    css = _asset("viewer.css").replace("/*STATUS-COLORS*/", _css_colors())
    title = _escape(f"graphsurg diff: {data['summary']}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{title}</title><style>{css}</style></head>\n<body>\n{_asset('viewer.html')}\n"
            f"<script type=\"application/json\" id=\"diff-data\">{blob}</script>\n"
            f"<script>{_asset('viewer.js')}</script>\n</body></html>\n")


def _asset(name: str) -> str:
    return resources.files("graphsurg.diff").joinpath(name).read_text(encoding="utf-8")


def _css_colors() -> str:
    return "".join(f"--{status}:{color};" for status, color in STATUS_COLORS.items())


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def build_page_data(report: ModelDiff, payload: dict[str, Any]) -> dict[str, Any]:
    union = UnionGraph(report.graph)
    return {
        "summary": payload["summary"], "identical": payload["identical"], "a": payload["a"], "b": payload["b"],
        "counts": payload["counts"], "model": payload["model"], "edits": payload["graph"]["edits"],
        "io": {"inputs": payload["graph"]["inputs"], "outputs": payload["graph"]["outputs"]},
        "subgraphs": payload["graph"]["subgraphs"], "numeric": payload["numeric"],
        "colors": STATUS_COLORS, "nodes": union.nodes, "edges": union.edges, "weights": union.weights,
    }


class UnionGraph:
    """Both models in one graph: nodes in a topological order of the union (when it has one)."""

    def __init__(self, diff: GraphDiff):
        self.diff = diff
        self.nodes: list[dict[str, Any]] = []
        self.edges: list[list[int]] = []
        self.weights: list[dict[str, Any]] = []
        self._id: dict[tuple[str, Any], int] = {}
        changes = {c.a: c.changes for c in diff.changed}
        weights_of = self._weights()
        for key in self._order():
            self._add_node(key, changes, weights_of)
        self._add_edges()

    # ---- nodes --------------------------------------------------------------------------------
    def _keys(self) -> list[tuple[str, Any]]:
        diff = self.diff
        keys: list[tuple[str, Any]] = [("in", v) for v in diff.fb.index.input_index]
        keys += [("in_a", v) for v in diff.fa.index.input_index if v not in diff.value_map]
        keys += [("m", a) for a in diff.fa.index.order if a in diff.matched]
        keys += [("a", op) for op in diff.removed] + [("b", op) for op in diff.added]
        keys += [("out", v) for v in diff.fb.index.graph.outputs]
        paired_a = {va for va, _ in diff.output_pairs}
        keys += [("out_a", v) for v in diff.fa.index.graph.outputs if v not in paired_a]  # removed outputs
        return keys

    def _order(self) -> list[tuple[str, Any]]:
        keys = self._keys()
        graph = nx.DiGraph()
        graph.add_nodes_from(keys)
        for src, dst, _ in self._edge_keys():
            graph.add_edge(src, dst)
        rank = {key: (self._position(key), i) for i, key in enumerate(keys)}
        try:
            return list(nx.lexicographical_topological_sort(graph, key=rank.__getitem__))
        except nx.NetworkXUnfeasible:  # matching put two ops in opposite orders: lay out by position
            return sorted(keys, key=rank.__getitem__)

    def _position(self, key: tuple[str, Any]) -> float:
        kind, item = key
        if kind in ("in", "in_a"):
            return -1.0
        if kind in ("out", "out_a"):
            return 2.0
        return (self.diff.fb.index.position if kind == "b" else self.diff.fa.index.position)[item]

    def _add_node(self, key: tuple[str, Any], changes: dict, weights_of: dict) -> None:
        kind, item = key
        self._id[key] = len(self.nodes)
        if kind in ("in", "in_a", "out", "out_a"):
            self.nodes.append(self._io_node(kind, item))
            return
        a = item if kind in ("m", "a") else None
        b = self.diff.matched[item] if kind == "m" else item if kind == "b" else None
        op = b or a
        status = {"a": "removed", "b": "added"}.get(kind) or (
            "changed" if a in changes else "weights" if a in weights_of else "unchanged")
        entry = op_entry(op)
        self.nodes.append({
            "name": op.label, "type": op.op_type, "domain": entry["domain"], "status": status,
            "a": a.label if a else None, "b": b.label if b else None,
            "inputs": entry["inputs"], "outputs": entry["outputs"],
            "before": {"inputs": op_entry(a)["inputs"], "outputs": op_entry(a)["outputs"]} if a and b else None,
            "attrs": _attrs(op), "changes": changes.get(a, []), "weights": weights_of.get(a or b, []),
        })

    def _io_node(self, kind: str, value: Value) -> dict[str, Any]:
        role = "input" if kind.startswith("in") else "output"
        status = "io"
        report = self.diff.inputs if role == "input" else self.diff.outputs
        if kind in ("in_a", "out_a"):
            status = "removed"
        elif any(e["name"] == value.name for e in report["added"]):
            status = "added"
        elif any(e["after"]["name"] == value.name for e in report["changed"]):
            status = "changed"
        shape = "?" if value.shape is None else ",".join("?" if d is None else str(d) for d in value.shape)
        return {"name": value.name, "type": role, "domain": "", "status": status, "io": role,
                "a": None, "b": None, "inputs": [], "outputs": [], "attrs": {"type": f"[{shape}]"},
                "changes": [], "weights": []}

    # ---- weights ------------------------------------------------------------------------------
    def _weights(self) -> dict[Op, list[int]]:
        """Weight entries (with histograms) and, per op (model a's op when matched), their indices."""
        diff = self.diff
        of: dict[Op, list[int]] = {}
        for status, group in (("changed", diff.weights_changed), ("added", diff.weights_added),
                              ("removed", diff.weights_removed)):
            for change in group:
                index = len(self.weights)
                self.weights.append({**weight_entry(change), "status": status,
                                     "histogram": histograms(change.a, change.b)})
                for op in self._weight_ops(change):
                    of.setdefault(op, []).append(index)
        return of

    def _weight_ops(self, change: WeightChange) -> set[Op]:
        ops = {op for op, _ in change.users_a}  # model a's ops key both matched and removed nodes
        ops |= {self.diff.matcher.b_to_a.get(op, op) for op, _ in change.users_b}
        return ops

    # ---- edges --------------------------------------------------------------------------------
    def _edge_keys(self) -> list[tuple[tuple, tuple, int]]:
        """(source key, target key, status) for the dataflow of both models."""
        edges_a = set(self._side_edges(self.diff.fa, "a"))
        edges_b = set(self._side_edges(self.diff.fb, "b"))
        found = [(s, d, EDGE_SAME) for s, d in edges_b & edges_a]
        found += [(s, d, EDGE_ADDED) for s, d in edges_b - edges_a]
        found += [(s, d, EDGE_REMOVED) for s, d in edges_a - edges_b]
        return found

    def _side_edges(self, features, side: str) -> list[tuple[tuple, tuple]]:
        index = features.index
        edges = []
        for op in index.order:
            target = self._op_key(op, side)
            for value in op.inputs:
                source = self._source_key(value, index, side)
                if source is not None:
                    edges.append((source, target))
        for value in index.graph.outputs:
            source = self._source_key(value, index, side)
            target = self._output_key(value, side)
            if source is not None and target is not None:
                edges.append((source, target))
        return edges

    def _op_key(self, op: Op, side: str) -> tuple[str, Any]:
        if side == "a":
            return ("m", op) if op in self.diff.matched else ("a", op)
        a = self.diff.matcher.b_to_a.get(op)
        return ("m", a) if a is not None else ("b", op)

    def _source_key(self, value: Value | None, index, side: str) -> tuple[str, Any] | None:
        if value is None:
            return None
        if value in index.producer:
            return self._op_key(index.producer[value][0], side)
        if value in index.input_index:
            if side == "b":
                return ("in", value)
            mapped = self.diff.value_map.get(value)
            return ("in", mapped) if mapped is not None else ("in_a", value)
        return None

    def _output_key(self, value: Value, side: str) -> tuple[str, Any] | None:
        if side == "b":
            return ("out", value)
        for va, vb in self.diff.output_pairs:
            if va is value:
                return ("out", vb)
        return ("out_a", value)

    def _add_edges(self) -> None:
        found = {(self._id[src], self._id[dst]): status for src, dst, status in self._edge_keys()
                 if src in self._id and dst in self._id}
        self.edges = [[src, dst, status] for (src, dst), status in sorted(found.items())]


def _attrs(op: Op) -> dict[str, Any]:
    from graphsurg.diff.compare import attr_summary

    return {key: _jsonable(attr_summary(attr)) for key, attr in sorted(op.attrs.items())}


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and value != value:  # NaN has no JSON form
        return "nan"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return str(value)
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value
