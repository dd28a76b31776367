"""The readable text form of a diff: a one-line summary, then edits, interface, ops, weights, numbers.

Rendered from the JSON form, so text and JSON never disagree. Colour only when asked (the CLI asks
when stdout is a terminal): green added, red removed, yellow changed.
"""

from __future__ import annotations

from typing import Any

import click

_MARK = {"+": "green", "-": "red", "~": "yellow"}


class Writer:
    def __init__(self, color: bool):
        self.color = color
        self.lines: list[str] = []

    def line(self, text: str = "", indent: int = 0, mark: str | None = None, bold: bool = False) -> None:
        prefix = "  " * indent + (f"{mark} " if mark else "")
        body = prefix + text
        if self.color and (mark in _MARK or bold):
            body = click.style(body, fg=_MARK.get(mark or ""), bold=bold)
        self.lines.append(body)

    def heading(self, text: str, indent: int = 0) -> None:
        self.line(text, indent, bold=True)

    def text(self) -> str:
        return "\n".join(self.lines)


def render_text(report: dict[str, Any], color: bool = False) -> str:
    out = Writer(color)
    out.line(report["summary"], bold=True)
    for side, mark in (("a", "---"), ("b", "+++")):
        entry = report[side]
        out.line(f"{mark} {entry['path'] or '<memory>'} ({entry['ops']:,} ops, {entry['parameters']:,} parameters)")
    if report["model"]:
        out.heading("model")
        for change in report["model"]:
            out.line(f"{change['field']}: {_short(change['before'])} -> {_short(change['after'])}", 1, "~")
    _graph(out, report["graph"], 0)
    if report.get("numeric"):
        _numeric(out, report["numeric"])
    counts = report["counts"]
    if counts["ops_renamed"] or counts["values_renamed"]:
        out.line(f"renamed (not a difference): {counts['ops_renamed']} ops, {counts['values_renamed']} values")
    return out.text()


def _graph(out: Writer, section: dict[str, Any], indent: int) -> None:
    if section["edits"]:
        out.heading("edits", indent)
        for i, edit in enumerate(section["edits"], 1):
            out.line(f"{i}. {edit['summary']}", indent + 1)
    _interface(out, section, indent)
    _ops(out, section["ops"], indent)
    _weights(out, section["weights"], indent)
    for sub in section["subgraphs"]:
        out.heading(f"subgraph {sub['attribute']} of {sub['op']}", indent)
        _graph(out, sub["graph"], indent + 1)


def _interface(out: Writer, section: dict[str, Any], indent: int) -> None:
    rows = []
    for role in ("inputs", "outputs"):
        report = section[role]
        rows += [("+", f"{role[:-1]} {_io(e)}") for e in report["added"]]
        rows += [("-", f"{role[:-1]} {_io(e)}") for e in report["removed"]]
        rows += [("~", f"{role[:-1]} {_io(e['before'])} -> {_io(e['after'])}") for e in report["changed"]]
    if rows:
        out.heading("inputs and outputs", indent)
        for mark, text in rows:
            out.line(text, indent + 1, mark)


def _io(entry: dict[str, Any]) -> str:
    shape = "?" if entry["shape"] is None else ",".join(str(d) for d in entry["shape"])
    return f"{entry['name']}: {entry['dtype']}[{shape}]"


def _ops(out: Writer, ops: dict[str, Any], indent: int) -> None:
    if not (ops["added"] or ops["removed"] or ops["changed"]):
        return
    out.heading(f"ops: {ops['matched']} matched, {len(ops['added'])} added, {len(ops['removed'])} removed, "
                f"{len(ops['changed'])} changed", indent)
    for op in ops["removed"]:
        out.line(f"{op['op_type']} {op['name']}", indent + 1, "-")
    for op in ops["added"]:
        out.line(f"{op['op_type']} {op['name']}", indent + 1, "+")
    for change in ops["changed"]:
        before, after = change["before"], change["after"]
        name = after["name"] if before["name"] == after["name"] else f"{before['name']} (now {after['name']})"
        out.line(f"{after['op_type']} {name}", indent + 1, "~")
        for entry in change["changes"]:
            out.line(_op_change(entry), indent + 3)


def _op_change(entry: dict[str, Any]) -> str:
    what = entry["what"]
    if what == "attribute":
        return f"attribute {entry['name']}: {_short(entry['before'])} -> {_short(entry['after'])}"
    if what == "input":
        return f"input {entry['port']}: {entry['before'] or '(none)'} -> {entry['after'] or '(none)'}"
    return f"{what}: {_short(entry['before'])} -> {_short(entry['after'])}"


def _weights(out: Writer, weights: dict[str, Any], indent: int) -> None:
    changed, added, removed = weights["changed"], weights["added"], weights["removed"]
    if not (changed or added or removed):
        return
    out.heading(f"weights: {weights['unchanged']} unchanged, {len(changed)} changed, {len(added)} added, "
                f"{len(removed)} removed", indent)
    for entry in changed:
        out.line(_weight_line(entry), indent + 1, "~")
    for entry in added:
        out.line(_weight_line(entry), indent + 1, "+")
    for entry in removed:
        out.line(_weight_line(entry), indent + 1, "-")


def weight_name(entry: dict[str, Any]) -> str:
    before, after = entry["before"], entry["after"]
    if before and after and before != after:
        return f"{before} (now {after})"
    return before or after


def _weight_line(entry: dict[str, Any]) -> str:
    parts = [weight_name(entry), _pair(entry["dtype"], entry["shape"])]
    if entry["rel_change"] is not None:
        parts.append(f"|dW|/|W| {entry['rel_change']:.4g}  max|dW| {entry['max_abs_change']:.4g}")
    sparsity = [s for s in entry["sparsity"] if s is not None]
    if any(s > 0 for s in sparsity) or len(set(sparsity)) > 1:
        parts.append("sparsity " + " -> ".join(f"{s:.1%}" for s in entry["sparsity"] if s is not None))
    quantized = entry["quantized"]
    if quantized[0] != quantized[1] and None not in quantized:
        parts.append("quantized" if quantized[1] else "dequantized")
    elif any(quantized):
        parts.append("quantized")
    users = entry["users"]
    if users:
        parts.append(f"read by {', '.join(users[:3])}{' ...' if len(users) > 3 else ''}")
    return "  ".join(parts)


def _pair(dtypes_: list, shapes: list) -> str:
    def one(dtype, shape):
        return None if dtype is None else f"{dtype}[{','.join(str(d) for d in shape)}]"

    before, after = one(dtypes_[0], shapes[0]), one(dtypes_[1], shapes[1])
    if before is None or after is None or before == after:
        return before or after
    return f"{before} -> {after}"


_TENSOR_ROWS = 20  # matched tensors listed in the text form (all of them are in --json)


def _numeric(out: Writer, numeric: dict[str, Any]) -> None:
    verdict = "within" if numeric["within_tolerance"] else "beyond"
    out.heading(f"numeric: {numeric['samples']} samples of {numeric['data']}, outputs {verdict} tolerance "
                f"{numeric['tolerance']:g}")
    accuracy = numeric.get("accuracy")
    if accuracy:
        a, b = (f"{accuracy[s]:.4f}" if accuracy[s] is not None else "n/a" for s in ("a", "b"))
        notes = "; ".join(f"{side}: {note}" for side, note in accuracy.get("notes", {}).items())
        out.line(f"accuracy ({accuracy['output']}): {a} -> {b}" + (f"  ({notes})" if notes else ""), 1)
    for row in numeric["outputs"]:
        out.line("output " + _numeric_row(row), 1, None if row["within_tolerance"] else "~")
    tensors = sorted(numeric["tensors"], key=_sqnr_key)
    if tensors:
        shown = tensors[:_TENSOR_ROWS]
        more = f", {len(tensors) - len(shown)} more in --json" if len(tensors) > len(shown) else ""
        out.heading(f"matched tensors, lowest SQNR first ({len(tensors)}{more})", 1)
        for row in shown:
            out.line(_numeric_row(row), 2)


def _sqnr_key(row: dict[str, Any]) -> float:
    if row.get("sqnr_infinite"):
        return float("inf")
    return row["sqnr_db"] if row.get("sqnr_db") is not None else float("-inf")


def _numeric_row(row: dict[str, Any]) -> str:
    renamed = row.get("after_name") not in (None, row["name"])
    parts = [f"{row['name']} (now {row['after_name']})" if renamed else row["name"]]
    sqnr = "inf" if row.get("sqnr_infinite") else (f"{row['sqnr_db']:.1f}" if row.get("sqnr_db") is not None else None)
    if sqnr is not None:
        parts.append(f"SQNR {sqnr} dB")
    for key, label, fmt in (("max_abs_diff", "max|diff|", "{:.4g}"), ("agreement", "top-1 agreement", "{:.2%}"),
                            ("cosine", "cosine", "{:.6f}")):
        if row.get(key) is not None:
            parts.append(f"{label} {fmt.format(row[key])}")
    if row.get("note"):
        parts.append(row["note"])
    return "  ".join(parts)


def _short(value: Any, limit: int = 80) -> str:
    text = str(value) if not isinstance(value, str) else repr(value) if value == "" else value
    return text if len(text) <= limit else text[: limit - 3] + "..."
