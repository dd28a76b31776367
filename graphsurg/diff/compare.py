"""Compares two graphs once their ops are matched: ops, wiring, weights, interface and subgraphs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from graphsurg.diff.features import GraphFeatures, WeightSource, attr_digest, tensor_digest
from graphsurg.diff.match import Matcher, match_ops
from graphsurg.diff.weights import same_contents, weight_stats
from graphsurg.ir import Attr, Graph, Op, Value, dtypes


@dataclass
class OpChange:
    """A matched pair of ops that differ; `changes` are JSON-ready entries with a `what` key."""

    a: Op
    b: Op
    changes: list[dict[str, Any]]


@dataclass
class WeightChange:
    """A weight as seen by matched ops on both sides (or on one side only, when added/removed)."""

    a: WeightSource | None
    b: WeightSource | None
    users_a: list[tuple[Op, int]] = field(default_factory=list)  # (op, input port) reading it in model a
    users_b: list[tuple[Op, int]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def users(self) -> list[tuple[Op, int]]:
        """The readers to show: in model b where the weight exists there, else in model a."""
        return self.users_b if self.b is not None else self.users_a


@dataclass
class SubgraphDiff:
    a: Op
    b: Op
    attr: str
    diff: GraphDiff


@dataclass
class GraphDiff:
    fa: GraphFeatures
    fb: GraphFeatures
    matcher: Matcher
    value_map: dict[Value, Value]
    added: list[Op] = field(default_factory=list)
    removed: list[Op] = field(default_factory=list)
    changed: list[OpChange] = field(default_factory=list)
    weights_changed: list[WeightChange] = field(default_factory=list)
    weights_added: list[WeightChange] = field(default_factory=list)
    weights_removed: list[WeightChange] = field(default_factory=list)
    weights_same: int = 0
    inputs: dict[str, list] = field(default_factory=dict)
    outputs: dict[str, list] = field(default_factory=dict)
    input_pairs: list[tuple[Value, Value]] = field(default_factory=list)
    output_pairs: list[tuple[Value, Value]] = field(default_factory=list)
    renamed_ops: list[tuple[Op, Op]] = field(default_factory=list)
    renamed_values: list[tuple[Value, Value]] = field(default_factory=list)
    subgraphs: list[SubgraphDiff] = field(default_factory=list)
    edits: list[dict[str, Any]] = field(default_factory=list)

    @property
    def matched(self) -> dict[Op, Op]:
        return self.matcher.a_to_b

    @property
    def identical(self) -> bool:
        io_same = not any(self.inputs.values()) and not any(self.outputs.values())
        return (io_same and not self.added and not self.removed and not self.changed
                and not self.weights_changed and not self.weights_added and not self.weights_removed
                and all(s.diff.identical for s in self.subgraphs))


def diff_graphs(ga: Graph, gb: Graph, outer: dict[Value, Value] | None = None) -> GraphDiff:
    """Matches the ops of `ga` and `gb` and lists every difference. `outer` maps values of enclosing
    graphs (for If/Loop/Scan bodies)."""
    from graphsurg.diff.hunks import find_edits

    fa, fb = GraphFeatures.build(ga), GraphFeatures.build(gb)
    matcher = match_ops(fa, fb)
    diff = GraphDiff(fa, fb, matcher, dict(outer or {}))
    diff.inputs = _map_inputs(diff)
    _map_op_outputs(diff)
    _compare_weights(diff)
    _compare_ops(diff)
    diff.outputs = _compare_outputs(diff)
    diff.added = [op for op in fb.index.order if op not in matcher.b_to_a]
    diff.removed = [op for op in fa.index.order if op not in matcher.a_to_b]
    diff.renamed_ops = [(a, b) for a, b in _in_order(diff) if a.name != b.name]
    diff.renamed_values = [(va, vb) for va, vb in diff.value_map.items()
                           if va.graph is ga and va.name != vb.name]
    diff.edits = find_edits(diff)
    return diff


def _in_order(diff: GraphDiff) -> list[tuple[Op, Op]]:
    return [(a, diff.matched[a]) for a in diff.fa.index.order if a in diff.matched]


# ---- values and interface ------------------------------------------------------------------
def _real_inputs(graph: Graph) -> list[Value]:
    return [v for v in graph.inputs if not v.is_const]


def _map_inputs(diff: GraphDiff) -> dict[str, list]:
    """Pairs graph inputs by name, then by the matched ops that read them; lists what changed."""
    ins_a, ins_b = _real_inputs(diff.fa.index.graph), _real_inputs(diff.fb.index.graph)
    by_name = {v.name: v for v in ins_b}
    pairs = [(va, by_name[va.name]) for va in ins_a if va.name in by_name]
    left_a = [v for v in ins_a if v.name not in by_name]
    names_a = {v.name for v in ins_a}
    left_b = [v for v in ins_b if v.name not in names_a]
    for va in list(left_a):
        readers = {(diff.matched.get(op), port) for op, port in diff.fa.index.consumers.get(va, [])}
        vb = next((v for v in left_b if readers & set(diff.fb.index.consumers.get(v, []))), None)
        if vb is None and len(left_a) == 1 and len(left_b) == 1:
            vb = left_b[0]
        if vb is not None:
            pairs.append((va, vb))
            left_a.remove(va)
            left_b.remove(vb)
    for va, vb in pairs:
        diff.value_map[va] = vb
    diff.input_pairs = pairs
    return _io_report(pairs, left_a, left_b)


def _map_op_outputs(diff: GraphDiff) -> None:
    for a, b in diff.matched.items():
        for va, vb in zip(a.outputs, b.outputs, strict=False):
            if va is not None and vb is not None:
                diff.value_map[va] = vb


def _compare_outputs(diff: GraphDiff) -> dict[str, list]:
    """Graph outputs pair through their producers, then by name (a new head keeps the output name)."""
    outs_a, outs_b = list(diff.fa.index.graph.outputs), list(diff.fb.index.graph.outputs)
    pairs, left_a = [], []
    left_b = list(outs_b)
    for va in outs_a:
        vb = diff.value_map.get(va)
        if vb is None or vb not in left_b:
            vb = next((v for v in left_b if v.name == va.name), None)
        if vb is None:
            left_a.append(va)
        else:
            pairs.append((va, vb))
            left_b.remove(vb)
    diff.output_pairs = pairs
    return _io_report(pairs, left_a, left_b)


def io_entry(value: Value) -> dict[str, Any]:
    shape = None if value.shape is None else [d if d is not None else "?" for d in value.shape]
    return {"name": value.name, "dtype": dtypes.name_of(value.dtype), "shape": shape}


def _io_report(pairs: list[tuple[Value, Value]], removed: list[Value], added: list[Value]) -> dict[str, list]:
    changed = []
    for va, vb in pairs:
        before, after = io_entry(va), io_entry(vb)
        what = [key for key in ("name", "dtype", "shape") if before[key] != after[key]]
        if what:
            changed.append({"before": before, "after": after, "changes": what})
    return {"added": [io_entry(v) for v in added], "removed": [io_entry(v) for v in removed], "changed": changed}


# ---- weights --------------------------------------------------------------------------------
def _compare_weights(diff: GraphDiff) -> None:
    """Pairs the weights that matched ops read on the same port; stored constants nobody pairs are
    added or removed (those read only by added/removed ops belong to those ops and are not listed)."""
    pairs: dict[tuple[int, int], WeightChange] = {}
    for a, b in _in_order(diff):
        for port, (va, vb) in enumerate(zip(a.inputs, b.inputs, strict=False)):
            sa, sb = diff.fa.index.weight_source(va), diff.fb.index.weight_source(vb)
            if sa is None or sb is None:
                continue
            entry = pairs.setdefault((id(sa.value), id(sb.value)), WeightChange(sa, sb))
            entry.users_a.append((a, port))
            entry.users_b.append((b, port))
    _pair_unread(diff, pairs)
    paired_a, paired_b = set(), set()
    for entry in pairs.values():
        paired_a.update(entry.a.stored())
        paired_b.update(entry.b.stored())
        diff.value_map.setdefault(entry.a.value, entry.b.value)
        if entry.a.constant is not None and diff.matched.get(entry.a.constant) is entry.b.constant:
            continue  # a matched Constant op: a new tensor shows as its attribute change
        if same_contents(entry.a, entry.b):
            diff.weights_same += 1
        else:
            entry.stats = weight_stats(entry.a, entry.b)
            diff.weights_changed.append(entry)
    diff.weights_removed = _unpaired(diff.fa, diff.matcher.a_to_b, paired_a, side="a")
    diff.weights_added = _unpaired(diff.fb, diff.matcher.b_to_a, paired_b, side="b")


def _pair_unread(diff: GraphDiff, pairs: dict[tuple[int, int], WeightChange]) -> None:
    """Initializers no op reads pair by name, then (renamed) by identical contents, so an unused
    tensor kept in both files is not reported as removed and added."""
    taken_a = {key[0] for key in pairs}
    taken_b = {key[1] for key in pairs}
    left_a = [v for v in diff.fa.index.graph.initializers.values()
              if id(v) not in taken_a and not diff.fa.index.consumers.get(v)]
    left_b = [v for v in diff.fb.index.graph.initializers.values()
              if id(v) not in taken_b and not diff.fb.index.consumers.get(v)]
    by_name = {v.name: v for v in left_b}
    found = [(va, by_name[va.name]) for va in left_a if va.name in by_name]
    named = {va for va, _ in found} | {vb for _, vb in found}
    contents_b = _unique_by_contents(v for v in left_b if v not in named)
    for key, va in _unique_by_contents(v for v in left_a if v not in named).items():
        if key in contents_b:
            found.append((va, contents_b[key]))
    for va, vb in found:
        pairs[(id(va), id(vb))] = WeightChange(WeightSource(va), WeightSource(vb))


def _unique_by_contents(values) -> dict[str, Value]:
    seen: dict[str, Value | None] = {}
    for value in values:
        key = tensor_digest(value.const)
        seen[key] = None if key in seen else value
    return {key: value for key, value in seen.items() if value is not None}


def _unpaired(features: GraphFeatures, matched: dict[Op, Op], paired: set[Value], side: str) -> list[WeightChange]:
    found = []
    for value in features.index.graph.initializers.values():
        if value in paired:
            continue
        users = features.index.consumers.get(value, [])
        if users and not any(op in matched for op, _ in users):
            continue  # part of an added or removed op
        source = WeightSource(value)
        if side == "a":
            change = WeightChange(source, None, users_a=list(users))
        else:
            change = WeightChange(None, source, users_b=list(users))
        change.stats = weight_stats(change.a, change.b)
        found.append(change)
    return found


# ---- ops ------------------------------------------------------------------------------------
def _compare_ops(diff: GraphDiff) -> None:
    for a, b in _in_order(diff):
        changes = _kind_changes(a, b) + _attr_changes(diff, a, b) + _wiring_changes(diff, a, b)
        if changes:
            diff.changed.append(OpChange(a, b, changes))


def _kind_changes(a: Op, b: Op) -> list[dict[str, Any]]:
    changes = []
    if a.op_type != b.op_type:
        changes.append({"what": "op_type", "before": a.op_type, "after": b.op_type})
    if (a.domain or "ai.onnx") != (b.domain or "ai.onnx"):
        changes.append({"what": "domain", "before": a.domain or "ai.onnx", "after": b.domain or "ai.onnx"})
    return changes


def _attr_changes(diff: GraphDiff, a: Op, b: Op) -> list[dict[str, Any]]:
    changes = []
    for key in sorted(set(a.attrs) | set(b.attrs)):
        attr_a, attr_b = a.attrs.get(key), b.attrs.get(key)
        if _is_graph(attr_a) and _is_graph(attr_b) and attr_a.kind == attr_b.kind:
            changes += _diff_subgraphs(diff, a, b, key)
            continue
        if attr_a is not None and attr_b is not None and attr_digest(attr_a) == attr_digest(attr_b):
            continue
        changes.append({"what": "attribute", "name": key, "before": attr_summary(attr_a),
                        "after": attr_summary(attr_b)})
    return changes


def _is_graph(attr: Attr | None) -> bool:
    return attr is not None and attr.kind in ("graph", "graphs")


def _diff_subgraphs(diff: GraphDiff, a: Op, b: Op, key: str) -> list[dict[str, Any]]:
    """Diffs the bodies recursively (they are reported under `subgraphs`); a change in the number of
    bodies is an attribute change of the op."""
    single = a.attrs[key].kind == "graph"
    subs_a = [a.attrs[key].value] if single else list(a.attrs[key].value)
    subs_b = [b.attrs[key].value] if single else list(b.attrs[key].value)
    for i, (sa, sb) in enumerate(zip(subs_a, subs_b, strict=False)):
        name = key if single else f"{key}[{i}]"
        diff.subgraphs.append(SubgraphDiff(a, b, name, diff_graphs(sa, sb, diff.value_map)))
    if len(subs_a) == len(subs_b):
        return []
    return [{"what": "attribute", "name": key, "before": f"{len(subs_a)} graphs", "after": f"{len(subs_b)} graphs"}]


def attr_summary(attr: Attr | None) -> Any:
    """A short JSON-ready rendering of an attribute value."""
    if attr is None:
        return None
    if attr.kind == "string":
        return attr.value.decode("utf-8", "replace")
    if attr.kind == "strings":
        return [s.decode("utf-8", "replace") for s in attr.value]
    if attr.kind == "tensor":
        tensor = attr.value
        return f"tensor {dtypes.name_of(tensor.dtype)}{list(tensor.shape)} {attr_digest(attr)[2:]}"
    if attr.kind in ("graph", "graphs"):
        return f"subgraph {attr_digest(attr)[2:]}"
    if attr.kind == "opaque":
        return f"opaque {attr_digest(attr)[2:]}"
    return attr.value


def _wiring_changes(diff: GraphDiff, a: Op, b: Op) -> list[dict[str, Any]]:
    changes = []
    for port in range(max(len(a.inputs), len(b.inputs))):
        va = a.inputs[port] if port < len(a.inputs) else None
        vb = b.inputs[port] if port < len(b.inputs) else None
        if not _same_source(diff, va, vb):
            changes.append({"what": "input", "port": port, "before": describe_source(diff.fa, va),
                            "after": describe_source(diff.fb, vb)})
    if len(a.outputs) != len(b.outputs):
        changes.append({"what": "outputs", "before": len(a.outputs), "after": len(b.outputs)})
    return changes


def _same_source(diff: GraphDiff, va: Value | None, vb: Value | None) -> bool:
    if va is None or vb is None:
        return va is vb
    if diff.fa.index.weight_source(va) is not None and diff.fb.index.weight_source(vb) is not None:
        return True  # both read a weight (maybe now through DequantizeLinear): compared under weights
    mapped = diff.value_map.get(va)
    if mapped is not None:
        return mapped is vb
    outer_a = va.graph is not diff.fa.index.graph
    outer_b = vb.graph is not diff.fb.index.graph
    return outer_a and outer_b and va.name == vb.name


def describe_source(features: GraphFeatures, value: Value | None) -> str | None:
    """Where an input comes from, in words a reader recognises."""
    if value is None:
        return None
    index = features.index
    if value in index.input_index:
        return f"input {value.name}"
    found = index.producer.get(value)
    if found is not None:
        op, port = found
        return f"{op.label}" if len(op.outputs) == 1 else f"{op.label}:{port}"
    if value.is_const:
        return f"weight {value.name}"
    return f"outer {value.name}"
