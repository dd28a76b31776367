"""MLIR-style textual pass specs: `name{key=value,key=value}`.

A value may itself hold commas (`ops=Conv,Gemm,MatMul`): a segment without `=` continues the
previous value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from graphsurg.errors import UsageError

_SPEC = re.compile(r"^\s*([A-Za-z][\w-]*)\s*(?:\{(.*)\})?\s*$", re.S)


@dataclass(frozen=True)
class PassSpec:
    name: str
    params: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        if not self.params:
            return self.name
        return self.name + "{" + ",".join(f"{k}={v}" for k, v in self.params) + "}"


def parse_spec(text: str) -> PassSpec:
    match = _SPEC.match(text)
    if not match:
        raise UsageError(f"bad pass spec {text!r}: expected name or name{{key=value,...}}")
    name, body = match.group(1), (match.group(2) or "").strip()
    params: list[list[str]] = []
    for segment in body.split(",") if body else []:
        if "=" in segment:
            key, value = segment.split("=", 1)
            if not key.strip():
                raise UsageError(f"bad pass spec {text!r}: empty parameter name")
            params.append([key.strip(), value.strip()])
        elif params:
            params[-1][1] += "," + segment.strip()
        else:
            raise UsageError(f"bad pass spec {text!r}: {segment.strip()!r} is not key=value")
    keys = [k for k, _ in params]
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    if duplicated:
        raise UsageError(f"bad pass spec {text!r}: parameter {duplicated[0]!r} given twice")
    return PassSpec(name, tuple((k, v) for k, v in params))
