"""A conservative sign analysis: is a value provably non-negative?

graft{activation=relu} may only insert Relu(I·x) where x >= 0 everywhere, since only there is the
Relu an identity. The analysis follows producers backwards: some ops always give x >= 0 (Relu,
Sigmoid, Softmax, ...), some keep the sign of their data input (pooling, reshaping), some need
all inputs non-negative (Add, Mul, Concat). Anything else may be negative. It answers with the
reason, so a refusal can say why.
"""

from __future__ import annotations

from graphsurg.ir import Graph, Op, Value

# Ops whose outputs are >= 0 whatever their inputs.
_ALWAYS = {
    "Relu", "Sigmoid", "Softmax", "Abs", "Exp", "Softplus", "HardSigmoid", "Sqrt", "ReduceL1", "ReduceL2",
    "ReduceSumSquare", "Shape", "Size", "Erfc",
}
# Ops whose output sign follows their first (data) input.
_FIRST_INPUT = {
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool", "Flatten", "Reshape",
    "Transpose", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Slice", "Gather", "GatherElements", "GatherND",
    "Expand", "Tile", "SpaceToDepth", "DepthToSpace", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum",
    "ReduceProd", "Cast", "Split", "Ceil", "Floor", "Round", "Upsample",
    "Pow",  # base >= 0 gives base**y >= 0 for any exponent
}
# Ops whose output is >= 0 when every data input is.
_ALL_INPUTS = {"Add", "Mul", "Div", "Concat", "Sum", "Mean", "Min", "MatMul"}
_MAX_DEPTH = 200


def negativity_reason(graph: Graph, value: Value) -> str | None:
    """None when `value` is provably >= 0, else a sentence saying where a negative may come from."""
    return _Analysis(graph).reason(value, 0)


class _Analysis:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.memo: dict[Value, str | None] = {}

    def reason(self, value: Value, depth: int) -> str | None:
        if value in self.memo:
            return self.memo[value]
        if depth > _MAX_DEPTH:
            return f"the sign analysis stopped {_MAX_DEPTH} ops upstream of it"
        found = self._compute(value, depth)
        self.memo[value] = found
        return found

    def _compute(self, value: Value, depth: int) -> str | None:
        array = self.graph.const_value(value)
        if array is not None:
            negative = array.size > 0 and float(array.min()) < 0
            return f"constant {value.name!r} has negative entries" if negative else None
        op = self.graph.producer(value) if value.graph is self.graph else None
        if op is None:
            return f"{value.name!r} is a graph input, which may hold any sign"
        if op.domain not in ("", "ai.onnx"):
            return f"it comes out of {op.label} ({op.domain}.{op.op_type}), whose sign is unknown"
        return self._from_op(op, depth)

    def _from_op(self, op: Op, depth: int) -> str | None:
        kind = op.op_type
        if kind in _ALWAYS:
            return None
        data = [v for v in op.inputs if v is not None]
        if kind in _FIRST_INPUT and data:
            return self.reason(data[0], depth + 1)
        if kind == "Clip":
            return self._clip(op, depth)
        if kind == "Max":
            # max(a, b) >= 0 as soon as one operand is.
            reasons = [self.reason(v, depth + 1) for v in data]
            return None if any(r is None for r in reasons) else reasons[0]
        if kind == "Where" and len(data) == 3:
            return self._all(data[1:], depth)
        if kind in _ALL_INPUTS:
            return self._all(data, depth)
        return f"it comes out of {op.label} ({kind}), which can produce negative values"

    def _all(self, values: list[Value], depth: int) -> str | None:
        for value in values:
            found = self.reason(value, depth + 1)
            if found is not None:
                return found
        return None

    def _clip(self, op: Op, depth: int) -> str | None:
        low, high = self._clip_bound(op, "min", 1), self._clip_bound(op, "max", 2)
        if high is not None and high < 0:
            return f"{op.label} clips to a negative maximum"
        if low is not None and low >= 0:
            return None
        return self.reason(op.inputs[0], depth + 1)

    def _clip_bound(self, op: Op, attr: str, port: int) -> float | None:
        if attr in op.attrs:  # opset < 11 keeps the bounds as attributes
            return float(op.attr(attr))
        array = self.graph.const_value(op.inputs[port] if len(op.inputs) > port else None)
        return None if array is None or array.size != 1 else float(array.reshape(-1)[0])
