"""Per-layer error: SQNR of every intermediate tensor the model shares with its reference.

Both models run with their intermediates exposed (`Runner(expose=True)`). A model tensor matches
a reference tensor by name, or through a value map taken from a change record (reference name ->
model name; passes that rename or replace tensors record it as `changes["value_map"]`). Tensors
only one side has (inserted QDQ pairs, fused ops) are listed as unmatched, so the comparison works
when the model has extra or fewer nodes.

The first jump: walking the model in topological order, the first matched tensor whose SQNR falls
`JUMP_DB` below the SQNR it was fed with (the lowest SQNR among its op's matched inputs, infinite
for graph inputs and weights), capped at `NOISE_FLOOR_DB`: differences above the floor are float
rounding (a reordered sum), not an error worth naming.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graphsurg.errors import BadInputError
from graphsurg.eval.metrics import ErrorStats
from graphsurg.ir import Model

JUMP_DB = 10.0
_NOT_FLOAT = "not floating point"
NOISE_FLOOR_DB = 100.0


@dataclass
class _Pair:
    name: str  # in the model
    ref_name: str
    op: str
    op_type: str
    inputs: tuple[str, ...]


class LayerComparison:
    """Streams SQNR per matched tensor over batches; `result()` lists them in topological order."""

    def __init__(self, model: Model, ref: Model, value_map: dict[str, str | None] | None = None):
        ref_names = _produced(ref)
        to_ref = {new: old for old, new in (value_map or {}).items() if new}
        self.pairs: list[_Pair] = []
        matched_ref: set[str] = set()
        self.unmatched_model: list[str] = []
        for op in model.graph.topological_order():
            inputs = tuple(v.name for v in op.inputs if v is not None)
            for value in op.outputs:
                if value is None:
                    continue
                ref_name = to_ref.get(value.name, value.name if value.name in ref_names else None)
                if ref_name is None or ref_name not in ref_names:
                    self.unmatched_model.append(value.name)
                    continue
                matched_ref.add(ref_name)
                self.pairs.append(_Pair(value.name, ref_name, op.label, op.op_type, inputs))
        self.unmatched_ref = [name for name in ref_names if name not in matched_ref]
        self.stats = {pair.name: ErrorStats() for pair in self.pairs}
        self.skipped: dict[str, str] = {}

    def update(self, outputs: dict[str, np.ndarray], ref_outputs: dict[str, np.ndarray]) -> None:
        for pair in self.pairs:
            if pair.name in self.skipped:
                continue
            out, ref = outputs.get(pair.name), ref_outputs.get(pair.ref_name)
            reason = _incomparable(out, ref)
            if reason:
                self.skipped[pair.name] = reason
                continue
            if out.dtype.kind != "f":
                self.skipped[pair.name] = _NOT_FLOAT  # shape arithmetic, indices: no SQNR to speak of
                continue
            self.stats[pair.name].add(np.asarray(out, np.float64), np.asarray(ref, np.float64))

    def result(self) -> dict:
        rows, sqnr_of = [], {}
        first_jump = None
        for pair in self.pairs:
            row = {"name": pair.name, "ref_name": pair.ref_name, "op": pair.op, "op_type": pair.op_type}
            if self.skipped.get(pair.name) == _NOT_FLOAT:
                continue
            if pair.name in self.skipped:
                rows.append({**row, "sqnr_db": None, "sqnr_infinite": False, "max_abs": None,
                             "mean_abs": None, "skipped": self.skipped[pair.name], "jump": False})
                continue
            stats = self.stats[pair.name]
            sqnr = stats.sqnr
            fed = min((sqnr_of[name] for name in pair.inputs if name in sqnr_of), default=math.inf)
            jump = sqnr is not None and sqnr < min(fed, NOISE_FLOOR_DB) - JUMP_DB
            if sqnr is not None:
                sqnr_of[pair.name] = sqnr
            if jump and first_jump is None:
                first_jump = pair.name
            rows.append({**row, **stats.result(), "jump": jump})
        non_float = sum(reason == _NOT_FLOAT for reason in self.skipped.values())
        return {"tensors": rows, "first_jump": first_jump, "non_float_skipped": non_float, "jump_db": JUMP_DB,
                "noise_floor_db": NOISE_FLOOR_DB,
                "unmatched": {"model": self.unmatched_model, "ref": self.unmatched_ref}}


def _produced(model: Model) -> list[str]:
    """Names of every op output of the main graph, in topological order."""
    return [v.name for op in model.graph.topological_order() for v in op.outputs if v is not None]


def _incomparable(out, ref) -> str | None:
    if not isinstance(out, np.ndarray) or not isinstance(ref, np.ndarray):
        return "not a tensor in one of the runs"
    if out.dtype.kind != ref.dtype.kind:
        return f"dtype {out.dtype.name} vs reference {ref.dtype.name}"
    if out.shape != ref.shape:
        return f"shape {list(out.shape)} vs reference {list(ref.shape)}"
    return None


def value_map_from_record(path: str | Path) -> dict[str, str | None]:
    """Composes the `changes["value_map"]` entries of a change record (reference name -> model name,
    None when a tensor is gone), pass after pass."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{path}: not a readable change record ({exc})") from None
    mapping: dict[str, str | None] = {}
    for entry in record.get("passes", []):
        step = (entry.get("changes") or {}).get("value_map") or {}
        produced = set(mapping.values())
        for old, new in list(mapping.items()):
            if new is not None and new in step:
                mapping[old] = step[new]
        for old, new in step.items():
            if old not in produced:  # a name an earlier pass made is not a reference tensor
                mapping.setdefault(old, new)
    return mapping
