"""A stable text form of one model, for git's textconv (`git diff` on .onnx files).

Deterministic and line-oriented so that a line-based diff of two versions is readable: a header,
the interface, one line per initializer (dtype, shape, content hash and summary statistics, never
the raw values of a large tensor) and one line per op in topological order, If/Loop/Scan bodies
indented below their op. The same file always gives the same text. Weights in external data files
are shown by location, not by content: git hands textconv a lone temporary copy of the old model
file, so their data is not at hand on that side (the data file's own diff shows changed bytes).
"""

from __future__ import annotations

import numpy as np

from graphsurg.diff.features import digest, tensor_digest
from graphsurg.diff.weights import as_float
from graphsurg.ir import Attr, DetachedTensor, Graph, Model, Op, Tensor, Value, dtypes

_INLINE_ELEMENTS = 8  # tensors this small are printed by value


def textconv(model: Model) -> str:
    lines = ["# graphsurg textconv 1", _header(model)]
    for key, value in sorted(model.metadata_props.items()):
        lines.append(f"metadata {key} = {_quote(value)}")
    if model.doc_string:
        lines.append(f"doc {_quote(model.doc_string)}")
    if model.functions:
        lines.append(f"functions {len(model.functions)} {digest(b''.join(sorted(model.functions)), 12)}")
    lines += _graph_lines(model.graph, "")
    return "\n".join(lines) + "\n"


def _header(model: Model) -> str:
    opsets = " ".join(f"{domain or 'ai.onnx'}:{version}" for domain, version in sorted(model.opset_imports.items()))
    producer = f"{model.producer_name} {model.producer_version}".strip()
    return f"model ir={model.ir_version} opsets={opsets} producer={_quote(producer)} graph={_quote(model.graph.name)}"


def _graph_lines(graph: Graph, indent: str) -> list[str]:
    lines = []
    for value in graph.inputs:
        if not value.is_const:
            lines.append(f"{indent}input {value.name}: {_type(value)}")
    for value in graph.outputs:
        lines.append(f"{indent}output {value.name}: {_type(value)}")
    for name in sorted(graph.initializers):
        lines.append(f"{indent}init {name}: {_tensor(graph.initializers[name].const)}")
    for op in graph.topological_order():
        lines.append(indent + _op_line(op))
        for key, attr in sorted(op.attrs.items()):
            subs = [attr.value] if attr.kind == "graph" else attr.value if attr.kind == "graphs" else []
            for i, sub in enumerate(subs):
                label = key if attr.kind == "graph" else f"{key}[{i}]"
                lines.append(f"{indent}  {label} {{")
                lines += _graph_lines(sub, indent + "    ")
                lines.append(f"{indent}  }}")
    return lines


def _op_line(op: Op) -> str:
    domain = f"{op.domain}." if op.domain not in ("", "ai.onnx") else ""
    attrs = [f"{k}={_attr(a)}" for k, a in sorted(op.attrs.items()) if a.kind not in ("graph", "graphs")]
    outs = ", ".join(v.name if v is not None else "" for v in op.outputs)
    ins = ", ".join(v.name if v is not None else "" for v in op.inputs)
    attr_text = f"<{', '.join(attrs)}>" if attrs else ""
    name = f"  # {op.name}" if op.name else ""
    return f"{outs} = {domain}{op.op_type}{attr_text}({ins}){name}"


def _type(value: Value) -> str:
    shape = "?" if value.shape is None else ",".join("?" if d is None else str(d) for d in value.shape)
    return f"{dtypes.name_of(value.dtype)}[{shape}]"


def _attr(attr: Attr) -> str:
    if attr.kind == "string":
        return _quote(attr.value.decode("utf-8", "replace"))
    if attr.kind == "strings":
        return "[" + ", ".join(_quote(s.decode("utf-8", "replace")) for s in attr.value) + "]"
    if attr.kind == "tensor":
        return _tensor(attr.value)
    if attr.kind == "opaque":
        return f"opaque:{digest(attr.value, 12)}"
    if attr.kind == "float":
        return repr(float(attr.value))
    return repr(attr.value)


def _tensor(tensor: Tensor) -> str:
    head = f"{dtypes.name_of(tensor.dtype)}[{','.join(str(d) for d in tensor.shape)}]"
    if isinstance(tensor, DetachedTensor):
        return f"{head} external={_quote(tensor.location)}"  # offsets are layout: one resized tensor moves all
    array = as_float(tensor)
    if tensor.size <= _INLINE_ELEMENTS and array is not None:
        return f"{head} = {np.array2string(tensor.numpy().reshape(-1), separator=', ', precision=8)}"
    parts = [head, f"hash={tensor_digest(tensor)}"]
    if array is not None and array.size:
        parts.append(f"mean={array.mean():.6g} std={array.std():.6g} min={array.min():.6g} max={array.max():.6g}")
        parts.append(f"zeros={np.count_nonzero(array == 0) / array.size:.2%}")
    return " ".join(parts)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
