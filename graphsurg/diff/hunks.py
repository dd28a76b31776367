"""Groups the differences of a graph diff into edits, the way a text diff groups lines into hunks.

Added, removed and changed ops that touch each other form one edit; its kind says what happened
(insert, remove, replace, modify) and its boundary (the unchanged ops around it) says where. So a
QDQ insertion reads "insert QuantizeLinear, DequantizeLinear after X, before Y", an excised layer
"remove Relu after X, before Y" and a new classifier "replace Gemm with Gemm, Relu, Gemm".
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from graphsurg.diff.features import is_constant
from graphsurg.ir import Op

if TYPE_CHECKING:
    from graphsurg.diff.compare import GraphDiff

_LIST_LIMIT = 4  # op types named in an edit's one-line summary before "..."


def find_edits(diff: GraphDiff) -> list[dict[str, Any]]:
    """Connected groups of changed ops (in either model), in topological order, then interface changes."""
    members = _members(diff)
    parent = {key: key for key in members}

    def root(key):
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    rewired = _rewired_only(diff)
    for key in members:
        for other in _neighbours(diff, key):
            # An op that only reads from somewhere new belongs to the insertion or removal next to
            # it, and does not chain two separate edits together (a residual Add reading both).
            if other in parent and not (key[0] == other[0] == "m" and (key[1] in rewired or other[1] in rewired)):
                parent[root(key)] = root(other)
    _join_replacements(diff, members, parent, root)
    groups: dict[Any, list] = {}
    for key in members:
        groups.setdefault(root(key), []).append(key)
    ordered = sorted(groups.values(), key=lambda keys: min(_position(diff, k) for k in keys))
    return [_describe(diff, keys) for keys in ordered] + _interface_edits(diff)


def _join_replacements(diff: GraphDiff, members: list, parent: dict, root) -> None:
    """A removed op and an added op that read the same value, or feed the same reader or graph
    output, are one replacement (a new head where the old one was), not two edits."""
    seen: dict[tuple, Any] = {}
    for key in members:
        if key[0] == "m":
            continue
        for anchor in _anchors(diff, key):
            other = seen.setdefault(anchor, key)
            if other[0] != key[0]:
                parent[root(key)] = root(other)


def _anchors(diff: GraphDiff, key: tuple[str, Op]) -> list[tuple]:
    """The model-b places an added or removed op attaches to: values it reads, (reader, port) pairs
    and graph outputs it writes."""
    side, op = key
    features = diff.fa if side == "a" else diff.fb
    found = []
    for value in op.inputs:
        mapped = diff.value_map.get(value) if side == "a" else value
        if mapped is not None and (side == "b" or value in diff.value_map):
            found.append(("reads", id(mapped)))
    for value in op.outputs:
        for user, port in features.index.consumers.get(value, []) if value is not None else []:
            reader = diff.matched.get(user) if side == "a" else user
            if reader is not None:
                found.append(("feeds", id(reader), port))
        if side == "a":
            found += [("writes", id(vb)) for va, vb in diff.output_pairs if va is value]
        elif value is not None and value in features.index.output_index:
            found += [("writes", id(value))]
    return found


def _members(diff: GraphDiff) -> list[tuple[str, Op]]:
    """Union keys: ("a", op) removed, ("b", op) added, ("m", op_a) matched ops that changed."""
    weighted = _weight_readers(diff)
    keys = [("a", op) for op in diff.fa.index.order if op not in diff.matched]
    keys += [("b", op) for op in diff.fb.index.order if op not in diff.matcher.b_to_a]
    changed = {c.a for c in diff.changed}
    for a in diff.matched:
        if a in changed or a in weighted:
            keys.append(("m", a))
    return keys


def _weight_readers(diff: GraphDiff) -> set[Op]:
    """Matched ops (as their model-a op) that read a weight which changed, appeared or went away."""
    readers: set[Op] = set()
    for change in diff.weights_changed + diff.weights_added + diff.weights_removed:
        readers.update(op for op, _ in change.users_a if op in diff.matched)
        readers.update(diff.matcher.b_to_a[op] for op, _ in change.users_b if op in diff.matcher.b_to_a)
    return readers


def _key_a(diff: GraphDiff, op: Op) -> tuple[str, Op]:
    return ("m", op) if op in diff.matched else ("a", op)


def _key_b(diff: GraphDiff, op: Op) -> tuple[str, Op]:
    a = diff.matcher.b_to_a.get(op)
    return ("m", a) if a is not None else ("b", op)


def _neighbours(diff: GraphDiff, key: tuple[str, Op]) -> list[tuple[str, Op]]:
    side, op = key
    found = []
    if side in ("a", "m"):
        found += [_key_a(diff, n) for n in _adjacent(diff.fa, op)]
    if side in ("b", "m"):
        b = op if side == "b" else diff.matched[op]
        found += [_key_b(diff, n) for n in _adjacent(diff.fb, b)]
    return found


def _adjacent(features, op: Op) -> list[Op]:
    index = features.index
    ops = [index.producer[v][0] for v in op.inputs if v is not None and v in index.producer]
    ops += [user for v in op.outputs if v is not None for user, _ in index.consumers.get(v, [])]
    return ops


def _position(diff: GraphDiff, key: tuple[str, Op]) -> float:
    side, op = key
    return diff.fb.index.position[op] if side == "b" else diff.fa.index.position[op]


def _describe(diff: GraphDiff, keys: list[tuple[str, Op]]) -> dict[str, Any]:
    """One edit. Ops that only read from a new place (rewired around an insertion or removal) are
    its boundary rather than its content, so "remove Relu after X, before Y" names Y."""
    keys = sorted(keys, key=lambda k: _position(diff, k))
    added = [op for side, op in keys if side == "b"]
    removed = [op for side, op in keys if side == "a"]
    kind = "replace" if added and removed else "insert" if added else "remove" if removed else "modify"
    rewired = _rewired_only(diff) if kind != "modify" else set()
    core = [key for key in keys if not (key[0] == "m" and key[1] in rewired)]
    changed = [diff.matched[op] for side, op in keys if side == "m"]
    after, before = _boundary(diff, core, set(core))
    summary = _summary(kind, added, removed, changed, diff)
    if kind != "modify":
        extra = [diff.matched[op] for side, op in core if side == "m"]
        if extra:
            summary += f"; modify {_names([op.label for op in extra])} ({', '.join(_change_kinds(diff, extra))})"
        if after:
            summary += f" after {_names(after)}"
        if before:
            summary += f"{',' if after else ''} before {_names(before)}"
    return {
        "kind": kind, "summary": summary,
        "added": [op.label for op in added], "removed": [op.label for op in removed],
        "changed": [op.label for op in changed],
        "after": after, "before": before,
    }


def _rewired_only(diff: GraphDiff) -> set[Op]:
    """Matched ops (model a) whose only difference is where some inputs come from."""
    readers = _weight_readers(diff)
    return {c.a for c in diff.changed
            if all(entry["what"] == "input" for entry in c.changes) and c.a not in readers}


def _boundary(diff: GraphDiff, keys: list, inside: set) -> tuple[list[str], list[str]]:
    """Unchanged ops (or graph inputs/outputs) feeding the edit and reading from it, as labels in model b."""
    after: list[str] = []
    before: list[str] = []
    for side, op in keys:
        for features, node in _sides(diff, side, op):
            index = features.index
            for value in node.inputs:
                if value is not None and value in index.input_index:
                    _add(after, f"input {value.name}")
                elif value is not None and value in index.producer:
                    _add_op(diff, after, features, index.producer[value][0], inside)
            for value in node.outputs:
                if value is not None and value in index.output_index:
                    _add(before, f"output {value.name}")
                for user, _ in index.consumers.get(value, []) if value is not None else []:
                    _add_op(diff, before, features, user, inside)
    return after, before


def _sides(diff: GraphDiff, side: str, op: Op) -> list:
    if side == "a":
        return [(diff.fa, op)]
    if side == "b":
        return [(diff.fb, op)]
    return [(diff.fa, op), (diff.fb, diff.matched[op])]


def _add_op(diff: GraphDiff, bucket: list[str], features, op: Op, inside: set) -> None:
    key = _key_a(diff, op) if features is diff.fa else _key_b(diff, op)
    if key in inside:
        return
    shown = diff.matched[key[1]] if key[0] == "m" else op
    _add(bucket, shown.label)


def _add(bucket: list[str], label: str) -> None:
    if label not in bucket:
        bucket.append(label)


def _summary(kind: str, added: list[Op], removed: list[Op], changed: list[Op], diff: GraphDiff) -> str:
    folded = _folded(diff, removed) if kind == "remove" else None
    if folded:
        return f"fold {_types(removed)} into initializer{'s' if len(folded) > 1 else ''} {_names(folded)}"
    if kind == "insert":
        return f"insert {_types(added)}"
    if kind == "remove":
        return f"remove {_types(removed)}"
    if kind == "replace":
        return f"replace {_types(removed)} with {_types(added)}"
    whats = _change_kinds(diff, changed)
    return f"modify {_names([op.label for op in changed])} ({', '.join(whats)})"


def _folded(diff: GraphDiff, removed: list[Op]) -> list[str] | None:
    """Initializer names, when every removed op is a Constant whose tensor model b keeps as an
    initializer (what fold-constants does)."""
    names = []
    for op in removed:
        value = op.outputs[0] if is_constant(op) and op.outputs else None
        mapped = diff.value_map.get(value) if value is not None else None
        if mapped is None or not mapped.is_const:
            return None
        names.append(mapped.name)
    return names


_CHANGE_WORDS = {"input": "rewired", "outputs": "output count", "op_type": "op type", "domain": "domain"}


def _change_kinds(diff: GraphDiff, ops: list[Op]) -> list[str]:
    """What happened to these matched ops (model b's), in words: "attribute axis", "rewired",
    "weights reshaped net.5.weight [10,64]->[5,64]"."""
    wanted = set(ops)
    found: list[str] = []
    for change in diff.changed:
        if change.b in wanted:
            for entry in change.changes:
                what = entry["what"]
                _add(found, f"attribute {entry['name']}" if what == "attribute" else _CHANGE_WORDS.get(what, what))
    wanted_a = {diff.matcher.b_to_a.get(op) for op in ops}
    by_kind: dict[str, list] = {}
    for change in diff.weights_changed + diff.weights_added + diff.weights_removed:
        if any(op in wanted_a for op, _ in change.users_a) or any(op in wanted for op, _ in change.users_b):
            by_kind.setdefault(_weight_kind(change), []).append(change)
    for kind, changes in by_kind.items():
        found.append(f"{kind} {_weight_example(changes[0])}" + (f" +{len(changes) - 1}" if len(changes) > 1 else ""))
    return found


def _weight_kind(change) -> str:
    stats = change.stats
    if change.a is None:
        return "weight added"
    if change.b is None:
        return "weight removed"
    if stats["quantized"][0] != stats["quantized"][1]:
        return "weights quantized" if stats["quantized"][1] else "weights dequantized"
    if stats["shape"][0] != stats["shape"][1]:
        return "weights reshaped"
    return "weights changed"


def _weight_example(change) -> str:
    """One weight of the group: its name and what changed about it."""
    source = change.b or change.a
    shapes, dtypes_ = change.stats["shape"], change.stats["dtype"]
    text = source.value.name
    if change.a is not None and change.b is not None:
        if shapes[0] != shapes[1]:
            text += f" {_dims(shapes[0])}->{_dims(shapes[1])}"
        elif dtypes_[0] != dtypes_[1]:
            text += f" {dtypes_[0]}->{dtypes_[1]}"
        elif change.stats["rel_change"] is not None:
            text += f" |dW|/|W| {change.stats['rel_change']:.3g}"
    return text


def _dims(shape: list[int] | None) -> str:
    return "[" + ",".join(str(d) for d in shape or []) + "]"


def _types(ops: list[Op]) -> str:
    counts = Counter(op.op_type for op in ops)
    parts = [f"{t}" if n == 1 else f"{n}x {t}" for t, n in counts.items()]
    if len(parts) > _LIST_LIMIT:
        parts = parts[:_LIST_LIMIT] + ["..."]
    return ", ".join(parts)


def _names(labels: list[str]) -> str:
    if len(labels) > _LIST_LIMIT:
        return ", ".join(labels[:_LIST_LIMIT]) + f" (+{len(labels) - _LIST_LIMIT})"
    return ", ".join(labels)


def _interface_edits(diff: GraphDiff) -> list[dict[str, Any]]:
    edits = []
    for role, report in (("input", diff.inputs), ("output", diff.outputs)):
        for entry in report.get("added", []):
            edits.append(_io_edit("add", f"add {role} {entry['name']}"))
        for entry in report.get("removed", []):
            edits.append(_io_edit("remove", f"remove {role} {entry['name']}"))
        for entry in report.get("changed", []):
            edits.append(_io_edit("modify", f"change {role} {entry['before']['name']} ({', '.join(entry['changes'])})"))
    return edits


def _io_edit(kind: str, summary: str) -> dict[str, Any]:
    return {"kind": f"interface-{kind}", "summary": summary, "added": [], "removed": [], "changed": [],
            "after": [], "before": []}
