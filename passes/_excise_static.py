"""Shape arithmetic evaluated before excision: exporters compute Slice bounds, Split sizes and
Reshape targets from `Shape(x)` (torch's `chunk`, `view(b, s, h, -1)`). Channel axes are static
(their labels say how long they are), so such integers are often known even when batch and
sequence are symbolic. A value is evaluated twice, with symbolic dimensions taken as 1 and as 7;
it counts as static only when both agree (it does not depend on them).
"""

from __future__ import annotations

import numpy as np
from graphsurg.passes._numpy_ops import KERNELS

from graphsurg.ir import Value


def _mod(op, xs, opset):
    return [np.asarray(np.fmod(xs[0], xs[1]) if op.attr("fmod", 0) else np.mod(xs[0], xs[1]))]


# Integer ops that shape arithmetic uses and constant folding has no kernel for.
_EXTRA = {"Mod": _mod}
_MAX_DEPTH = 24
_MAX_ELEMENTS = 1 << 12  # shape vectors, bounds and sizes are tiny; anything bigger is data
_SYMBOLIC_PROBES = (1, 7)


def static_ints(dep, value: Value | None) -> list[int] | None:
    """The integers `value` holds whatever the symbolic dimensions are, or None."""
    if value is None:
        return None
    results = [_evaluate(dep, value, probe, {}, 0) for probe in _SYMBOLIC_PROBES]
    first = results[0]
    if first is None or first.dtype.kind not in "iu" or any(
            r is None or r.shape != first.shape or not np.array_equal(r, first) for r in results[1:]):
        return None
    return [int(v) for v in first.reshape(-1)]


def ints_param(dep, op, attr: str, port: int) -> tuple[bool, list[int] | None]:
    """(given, integers) of a list given as attribute `attr` (older opsets) or input `port`;
    given but None: computed in a way that depends on symbolic dimensions."""
    if op.attr(attr) is not None:
        return True, [int(v) for v in op.attr(attr)]
    if port < len(op.inputs) and op.inputs[port] is not None:
        return True, static_ints(dep, op.inputs[port])
    return False, None


def split_sizes(dep, op, total: int | None) -> list[int] | None:
    """A Split's part sizes: given (attribute or static input) or even (the last part smaller)."""
    given, sizes = ints_param(dep, op, "split", 1)
    if not given and total is not None:
        count = int(op.attr("num_outputs", len(op.outputs)))
        chunk = -(-total // count)
        sizes = [min(chunk, total - i * chunk) for i in range(count)]
    if sizes is None or len(sizes) != len(op.outputs) or (total is not None and sum(sizes) != total):
        return None
    return sizes


def probed_ints(dep, value: Value | None) -> list[list[int]] | None:
    """The integers of `value` once per probe of the symbolic dimensions (entries that differ
    between probes depend on them), or None when it cannot be evaluated."""
    results = [_evaluate(dep, value, probe, {}, 0) if value is not None else None for probe in _SYMBOLIC_PROBES]
    if any(r is None or r.dtype.kind not in "iu" for r in results):
        return None
    return [[int(v) for v in r.reshape(-1)] for r in results]


def probes() -> tuple[int, ...]:
    return _SYMBOLIC_PROBES


def _evaluate(dep, value: Value, probe: int, memo: dict, depth: int) -> np.ndarray | None:
    if value in memo:
        return memo[value]
    array = dep.graph.const_value(value)
    if array is None and depth < _MAX_DEPTH:
        array = _from_producer(dep, value, probe, memo, depth)
    if array is not None and np.asarray(array).size > _MAX_ELEMENTS:
        array = None
    memo[value] = None if array is None else np.asarray(array)
    return memo[value]


def _from_producer(dep, value: Value, probe: int, memo: dict, depth: int) -> np.ndarray | None:
    op = dep.graph.producer(value)
    if op is None or op.domain not in ("", "ai.onnx"):
        return None
    if op.op_type == "Shape":
        shape = dep.shape(op.inputs[0])
        if shape is None or any(d is None for d in shape):
            return None
        dims = np.array([d if isinstance(d, int) else probe for d in shape], dtype=np.int64)
        return dims[op.attr("start", 0):op.attr("end")]
    kernel = KERNELS.get(op.op_type) or _EXTRA.get(op.op_type)
    if kernel is None or op.subgraphs():
        return None
    inputs = []
    for source in op.inputs:
        if source is None:
            inputs.append(None)
            continue
        evaluated = _evaluate(dep, source, probe, memo, depth + 1)
        if evaluated is None:
            return None
        inputs.append(evaluated)
    try:
        outputs = kernel(op, inputs, dep.model.opset)
    except (ValueError, TypeError, IndexError, ZeroDivisionError, FloatingPointError):
        return None
    return outputs[list(op.outputs).index(value)] if value in op.outputs else None
