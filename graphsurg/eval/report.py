"""Text and JSON renderings of an `evaluate()` result (what `graphsurg eval` prints)."""

from __future__ import annotations

from typing import Any

# The stable JSON contract first, in this order; everything else follows.
CONTRACT_KEYS = ("model", "ref", "samples", "metrics", "per_output", "latency_ms", "size_bytes")


def to_json(result: dict[str, Any]) -> dict[str, Any]:
    """The result with the contract's keys first (order is cosmetic; the keys are the contract)."""
    ordered = {key: result.get(key) for key in CONTRACT_KEYS}
    ordered.update((key, value) for key, value in result.items() if key not in ordered)
    return ordered


def _num(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if value == 0:
        return "0"
    return f"{value:.{digits}f}" if abs(value) >= 10 ** -digits else f"{value:.2e}"


def _sqnr(entry: dict[str, Any]) -> str:
    if entry.get("sqnr_infinite"):
        return "inf dB"
    value = entry.get("sqnr_db")
    return "n/a" if value is None else f"{value:.1f} dB"


def _fidelity_line(entry: dict[str, Any]) -> str:
    return (f"agreement {_num(entry.get('agreement'))}  KL {_num(entry.get('kl'))}  "
            f"cosine {_num(entry.get('cosine'), 6)}  SQNR {_sqnr(entry)}  "
            f"max|d| {_num(entry.get('max_abs'))}  mean|d| {_num(entry.get('mean_abs'))}")


def format_text(result: dict[str, Any]) -> str:
    """A human summary: task metrics, fidelity, latency, size, per-output and per-layer tables."""
    metrics = result["metrics"]
    lines = [f"model      {result.get('model') or '<model>'} ({result['size_bytes']:,} bytes)",
             f"data       {result.get('data')}: {result['samples']} samples, provider {result.get('provider')}"]
    if result.get("ref") or result.get("reference") == "data":
        lines.append(f"reference  {result.get('ref') or 'outputs stored with the data'}")
    if metrics.get("loss_kind"):
        kind = "cross-entropy" if metrics["loss_kind"] == "cross_entropy" else "MSE"
        lines.append(f"task       loss {_num(metrics['loss'])} ({kind})  accuracy {_num(metrics['accuracy'])}"
                     f"  [output {result.get('task_output')}]")
    else:
        lines.append("task       n/a (no labels that fit an output)")
    lines.append(f"fidelity   {_fidelity_line(metrics)}" if result.get("reference") else "fidelity   n/a (no --ref)")
    lines.append(_latency_line(result.get("latency_ms") or {}))
    if result.get("reference") and len(result["per_output"]) > 1:
        lines.append("per output")
        lines += [f"  {name:<24} {_fidelity_line(entry)}" for name, entry in result["per_output"].items()]
    if result.get("per_layer"):
        lines += format_layers(result["per_layer"])
    return "\n".join(lines)


def _latency_line(latency: dict[str, Any]) -> str:
    if latency.get("median") is None:
        return "latency    not measured"
    return (f"latency    median {latency['median']:.3f} ms  p90 {latency['p90']:.3f} ms at batch {latency['batch']}"
            f" ({latency.get('runs')} runs after {latency.get('warmup')} warm-up)")


def format_layers(per_layer: dict[str, Any]) -> list[str]:
    """The per-layer table in topological order, the first jump marked."""
    if "error" in per_layer:
        return [f"per layer  {per_layer['error']}"]
    rows = per_layer["tensors"]
    width = min(60, max([len(r["name"]) for r in rows] + [6]))
    lines = [f"per layer (SQNR against the reference, topological order; {len(rows)} matched tensors)"]
    for row in rows:
        value = row.get("skipped") or _sqnr(row)
        mark = "  <- first jump" if row["name"] == per_layer["first_jump"] else ""
        lines.append(f"  {row['name']:<{width}} {row['op_type']:<20} {value}{mark}")
    lines.append(f"first jump {per_layer['first_jump'] or 'none'}")
    unmatched = per_layer["unmatched"]
    if unmatched["model"] or unmatched["ref"]:
        lines.append(f"unmatched  {len(unmatched['model'])} tensors only in the model, "
                     f"{len(unmatched['ref'])} only in the reference")
    return lines
