"""Op semantics beyond the coverage list: every case of the onnx wheel's node test generators
(`onnx.backend.test.case.node`) whose ops the table implements, against the expected outputs."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import torch

from graphsurg import serde
from graphsurg.errors import BadInputError
from graphsurg.train.interpreter import GraphModule
from graphsurg.train.ops import OPS, UnsupportedOpError

# Limits of torch or of this table, each raised as a clear error rather than a wrong answer:
# unsigned 16/32/64-bit arithmetic has no torch CPU kernels; dilated AveragePool, blocked
# quantization, column-major MaxPool indices and opset-8 Scan are refused by name.
KNOWN_LIMITS = ("not implemented for 'UInt", "dilated average pooling", "blocked quantization",
                "column-major indices", "Scan before opset 9")


def _ops(graph: onnx.GraphProto) -> set[tuple[str, str]]:
    found = set()
    for node in graph.node:
        found.add((node.domain, node.op_type))
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                found |= _ops(attr.g)
    return found


def _runnable(case) -> bool:
    """Cases of implemented ops whose data numpy and torch both hold (no strings, bfloat16, float8)."""
    if case.model.functions or not all(d in ("", "ai.onnx") and op in OPS for d, op in _ops(case.model.graph)):
        return False
    arrays = [a for inputs, outputs in case.data_sets[:1] for a in (*inputs, *outputs)]
    return all(isinstance(a, np.ndarray) and a.dtype.kind in "biuf" and a.dtype.name in np.sctypeDict for a in arrays)


def _check(case) -> str | None:
    inputs, expected = case.data_sets[0]
    module = GraphModule(serde.load(case.model)).eval()
    with torch.no_grad():
        got = module(*[torch.from_numpy(np.array(x)) for x in inputs])
    for out, want in zip(got, expected, strict=True):
        out = out.numpy()
        if out.shape != want.shape or out.dtype != want.dtype:
            return f"{out.dtype}{list(out.shape)} vs {want.dtype}{list(want.shape)}"
        close = np.allclose(out, want, rtol=1e-3, atol=1e-4, equal_nan=True) if want.dtype.kind == "f" \
            else np.array_equal(out, want)
        if not close:
            return "values differ"
    return None


def test_node_cases_of_implemented_ops(capsys):
    from onnx.backend.test.case import node

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the generators' own overflow warnings
        cases = [c for c in node.collect_testcases(None) if _runnable(c)]
    passed, limits, wrong = 0, [], []
    for case in cases:
        try:
            problem = _check(case)
        except (UnsupportedOpError, BadInputError) as exc:
            (limits if any(k in str(exc) for k in KNOWN_LIMITS) else wrong).append(f"{case.name}: {exc}")
            continue
        if problem:
            wrong.append(f"{case.name}: {problem}")
        else:
            passed += 1
    with capsys.disabled():
        print(f"\nonnx node cases: {passed} pass, {len(limits)} refused as known limits, {len(wrong)} wrong "
              f"(of {len(cases)} with implemented ops)")
    assert not wrong, wrong[:10]
    assert passed >= 900

