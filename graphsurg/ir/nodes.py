"""Values, ops and attributes: the vertices of the IR's bipartite graph.

Ops and values are hashed by identity, so they can be networkx vertices and tests can follow
them through edits. Their connectivity is owned by `Graph`; do not assign `inputs`/`outputs`
directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from graphsurg.ir import dtypes
from graphsurg.ir.tensor import Tensor

if TYPE_CHECKING:
    from graphsurg.ir.graph import Graph

Dim = int | str | None  # a static size, a symbolic name, or unknown
Shape = tuple[Dim, ...] | None  # None: unknown rank


class Value:
    """A named tensor edge of the dataflow: produced by one op, or a graph input, or a constant.

    `const` holds the tensor of an initializer. `type_blob` keeps the original serialized type so
    types the IR does not model (sequences, maps, denotations) survive a round trip.
    """

    __slots__ = (
        "name", "dtype", "shape", "const", "doc_string", "meta_blob", "type_blob", "_blob_key",
        "in_value_info", "graph", "__weakref__",
    )

    def __init__(self, name: str, dtype: int | None = None, shape: Shape = None, const: Tensor | None = None):
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.const = const
        self.doc_string = ""
        self.meta_blob: bytes | None = None
        self.type_blob: bytes | None = None
        self._blob_key: tuple | None = None
        self.in_value_info = False
        self.graph: Graph | None = None
        if const is not None:
            self.dtype = const.dtype
            self.shape = const.shape

    def keep_type_blob(self, blob: bytes) -> None:
        """Remember the original type; it is re-emitted while dtype and shape stay as loaded."""
        self.type_blob = blob
        self._blob_key = (self.dtype, self.shape)

    def original_type_blob(self) -> bytes | None:
        if self.type_blob is not None and self._blob_key == (self.dtype, self.shape):
            return self.type_blob
        return None

    @property
    def is_const(self) -> bool:
        return self.const is not None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    def static_shape(self) -> tuple[int, ...] | None:
        if self.shape is None or not all(isinstance(d, int) for d in self.shape):
            return None
        return tuple(self.shape)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        shape = "?" if self.shape is None else list(self.shape)
        return f"Value({self.name!r}, {dtypes.name_of(self.dtype)}{shape})"


ATTR_KINDS = ("int", "float", "string", "ints", "floats", "strings", "tensor", "graph", "graphs", "opaque")


@dataclass
class Attr:
    """An op attribute. `opaque` keeps the serialized form of kinds the IR does not interpret."""

    kind: str
    value: Any
    doc_string: str = ""
    ref_attr_name: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ATTR_KINDS:
            raise ValueError(f"unknown attribute kind {self.kind!r}")


def attr_from_python(value: Any) -> Attr:
    """Infers the attribute kind of a plain Python value, as passes write them."""
    from graphsurg.ir.graph import Graph

    if isinstance(value, Attr):
        return value
    if isinstance(value, bool | int):
        return Attr("int", int(value))
    if isinstance(value, float):
        return Attr("float", value)
    if isinstance(value, str | bytes):
        return Attr("string", value.encode() if isinstance(value, str) else value)
    if isinstance(value, Tensor):
        return Attr("tensor", value)
    if isinstance(value, Graph):
        return Attr("graph", value)
    if isinstance(value, list | tuple):
        items = list(value)
        if all(isinstance(v, bool | int) for v in items):
            return Attr("ints", [int(v) for v in items])
        if all(isinstance(v, int | float) for v in items):
            return Attr("floats", [float(v) for v in items])
        if all(isinstance(v, str | bytes) for v in items):
            return Attr("strings", [v.encode() if isinstance(v, str) else v for v in items])
    raise TypeError(f"cannot infer an attribute kind for {value!r}")


@dataclass(eq=False)
class Op:
    """An operator. `inputs` may hold None for an omitted optional input."""

    op_type: str
    domain: str = ""
    name: str = ""
    attrs: dict[str, Attr] = field(default_factory=dict)
    inputs: tuple[Value | None, ...] = ()
    outputs: tuple[Value | None, ...] = ()  # None: an omitted optional output
    doc_string: str = ""
    rest_blob: bytes | None = None  # NodeProto fields the IR does not model (metadata, overload, ...)
    graph: Graph | None = field(default=None, repr=False)

    __hash__ = object.__hash__  # identity (and at C speed: ops are hashed on every graph lookup)

    def attr(self, name: str, default: Any = None) -> Any:
        attr = self.attrs.get(name)
        return default if attr is None else attr.value

    def set_attr(self, name: str, value: Any) -> None:
        self.attrs[name] = attr_from_python(value)

    def subgraphs(self) -> list[Graph]:
        found: list[Graph] = []
        for attr in self.attrs.values():
            if attr.kind == "graph":
                found.append(attr.value)
            elif attr.kind == "graphs":
                found.extend(attr.value)
        return found

    @property
    def label(self) -> str:
        """A name to show users: the op's name, else its first output's name."""
        if self.name:
            return self.name
        first = next((v for v in self.outputs if v is not None), None)
        return f"{self.op_type}->{first.name}" if first else self.op_type

    def __repr__(self) -> str:
        ins = ", ".join(v.name if v else "" for v in self.inputs)
        outs = ", ".join(v.name if v else "" for v in self.outputs)
        return f"Op({self.op_type} {self.name!r}: ({ins}) -> ({outs}))"
