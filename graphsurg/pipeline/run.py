"""Runs passes in order, validating after each, and keeps the change record."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graphsurg.errors import PassError
from graphsurg.fsutil import atomic_write, write_text
from graphsurg.ir import Model
from graphsurg.pipeline.base import Pass, PassContext, PassResult
from graphsurg.serde.check import CheckError, check


@dataclass
class ChangeRecord:
    results: list[PassResult] = field(default_factory=list)

    @property
    def modified(self) -> bool:
        return any(r.modified for r in self.results)

    def to_json(self) -> dict:
        return {"passes": [r.to_json() for r in self.results]}

    def touched(self) -> list[str]:
        return sorted({name for r in self.results for name in r.touched})

    def save(self, path: str | Path) -> None:
        """Writes the JSON record, and array records (masks) to a .npz beside it."""
        write_text(path, json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")
        arrays = {f"{i}/{key}": arr for i, r in enumerate(self.results) for key, arr in r.arrays.items()}
        if arrays:
            buffer = io.BytesIO()
            np.savez_compressed(buffer, **arrays)
            with atomic_write(Path(path).with_suffix(".npz")) as handle:
                handle.write(buffer.getvalue())


def run_passes(model: Model, passes: Sequence[Pass], ctx: PassContext | None = None,
               validate: bool = True) -> ChangeRecord:
    """Applies passes in order; a pass whose result fails onnx's checker raises PassError."""
    ctx = ctx or PassContext()
    record = ChangeRecord()
    for p in passes:
        result = p.apply(model, ctx)
        record.results.append(result)
        if validate and result.modified:
            try:
                check(model, full=True)
            except CheckError as exc:
                raise PassError(f"pass {p.name!r} produced a model onnx's checker rejects: {exc}") from None
    return record
