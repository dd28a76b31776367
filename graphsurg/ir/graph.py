"""The `Graph` façade: a bipartite networkx MultiDiGraph of ops and values.

Edges carry ports: value -> op with key = input port, op -> value with key = output port, and
value -> op with key CAPTURE where a subgraph of the op reads an outer value (so liveness and
topological order see those uses). Passes edit only through these methods, which keep
`Op.inputs`/`Op.outputs` and the edges in step; algorithms may read `graph.nx`.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import networkx as nx
import numpy as np

from graphsurg.ir.nodes import Attr, Op, Shape, Value, attr_from_python
from graphsurg.ir.tensor import ArrayTensor, Tensor

CAPTURE = "capture"
# The cached topological order lives in networkx's per-graph cache dict, which networkx (>= 3.3)
# clears on every change made through its methods, edits behind the façade included; the façade's
# own edits call `_changed` (networkx < 3.3 clears nothing itself).
_ORDER_KEY = "graphsurg.topological_order"


class GraphError(ValueError):
    """An edit or a loaded graph breaks an IR invariant."""


class Graph:
    def __init__(self, name: str = "graph", parent: Graph | None = None):
        self.nx = nx.MultiDiGraph()
        if not hasattr(self.nx, "__networkx_cache__"):  # networkx < 3.3 has none
            self.nx.__networkx_cache__ = {}
        self.name = name
        self.doc_string = ""
        self.rest_blob: bytes | None = None  # GraphProto fields the IR does not model
        self.parent = parent
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.initializers: dict[str, Value] = {}
        self._values: dict[str, Value] = {}
        self._ops: dict[Op, int] = {}
        self._order = itertools.count()
        self._names: set[str] = set() if parent is None else parent._names
        self.owner: Op | None = None  # the If/Loop/Scan op whose body this is
        # serde bookkeeping, so value_info keeps its order and entries for names it cannot place
        self.value_info_names: list[str] = []
        self.orphan_value_info: list[bytes] = []
        # IR version < 4 lists every initializer as a graph input too (they are constants all the
        # same): `inputs` holds only what can be fed; this keeps the file's order of the listing
        self.input_order: list[str] = []

    # ---- lookup -------------------------------------------------------------------------
    @property
    def root(self) -> Graph:
        return self if self.parent is None else self.parent.root

    @property
    def ops(self) -> list[Op]:
        return list(self._ops)

    def values(self) -> list[Value]:
        return list(self._values.values())

    def value(self, name: str) -> Value:
        found = self.lookup(name)
        if found is None:
            raise KeyError(f"no value named {name!r}")
        return found

    def lookup(self, name: str) -> Value | None:
        """Finds a value here or in an enclosing graph (outer scope)."""
        graph: Graph | None = self
        while graph is not None:
            if name in graph._values:
                return graph._values[name]
            graph = graph.parent
        return None

    def find_op(self, name: str) -> Op | None:
        """An op by its name, or by the name of one of its outputs (many exports leave ops unnamed)."""
        for op in self._ops:
            if op.name == name:
                return op
        value = self._values.get(name)
        return self.producer(value) if value is not None else None

    # The hot lookups read networkx's adjacency dicts (`_pred`/`_succ`: {node: {neighbour: {key: data}}})
    # directly; every change still goes through networkx's methods.

    def producer(self, value: Value) -> Op | None:
        for op in self.nx._pred.get(value, ()):
            if isinstance(op, Op):
                return op
        return None

    def consumers(self, value: Value) -> list[tuple[Op, int]]:
        """(op, input port) for each direct use; captures by subgraphs are not listed."""
        return [(op, port) for op, ports in self.nx._succ.get(value, {}).items() for port in ports if port != CAPTURE]

    def is_used(self, value: Value) -> bool:
        return bool(self.nx._succ.get(value)) or value in self.outputs

    def is_fixed(self, value: Value) -> bool:
        """True for a constant no feed can replace: an initializer that is not also an input (from
        IR version 4 such an initializer is only a default; serde keeps the initializers that
        older files list as inputs out of `inputs`)."""
        return value.is_const and value not in self.inputs

    def iter_all_ops(self) -> Iterator[Op]:
        """Every op, descending into If/Loop/Scan bodies."""
        for op in self._ops:
            yield op
            for sub in op.subgraphs():
                yield from sub.iter_all_ops()

    # ---- names --------------------------------------------------------------------------
    def fresh_name(self, base: str) -> str:
        """A name unused anywhere in the model (values and ops share one namespace here)."""
        base = base or "v"
        if base not in self._names:
            self._names.add(base)
            return base
        for i in itertools.count(1):
            candidate = f"{base}_{i}"
            if candidate not in self._names:
                self._names.add(candidate)
                return candidate
        raise AssertionError("unreachable")

    def claim_name(self, name: str) -> None:
        self._names.add(name)

    # ---- networkx vertices and edges ---------------------------------------------------
    # What MultiDiGraph.add_node/add_edge do (plain dicts, one key dict shared by _succ and _pred,
    # its cache cleared), without their per-call overhead: loading builds tens of thousands.

    def _add_vertex(self, node: Op | Value) -> None:
        g = self.nx
        if node not in g._succ:
            g._succ[node] = {}
            g._pred[node] = {}
            g._node[node] = {}
            self._changed()

    def _add_edge(self, u: Op | Value, v: Op | Value, key: int | str) -> None:
        g = self.nx
        if u not in g._succ:
            self._add_vertex(u)
        if v not in g._succ:
            self._add_vertex(v)
        keys = g._succ[u].get(v)
        if keys is None:
            keys = g._succ[u][v] = {}
            g._pred[v][u] = keys
        keys.setdefault(key, {})
        self._changed()

    def _changed(self) -> None:
        cache = self.nx.__networkx_cache__
        if cache:
            cache.clear()

    # ---- values -------------------------------------------------------------------------
    def _register_value(self, value: Value) -> Value:
        name = value.name
        if name in self._values:
            raise GraphError(f"value {name!r} is defined twice")
        self._values[name] = value
        self._names.add(name)
        value.graph = self
        g = self.nx
        if value not in g._succ:  # _add_vertex, inline: loading registers every value here
            g._succ[value], g._pred[value], g._node[value] = {}, {}, {}
            self._changed()
        return value

    def add_value(self, name: str, dtype: int | None = None, shape: Shape = None, fresh: bool = True) -> Value:
        return self._register_value(Value(self.fresh_name(name) if fresh else name, dtype, shape))

    def add_input(self, name: str, dtype: int | None, shape: Shape, fresh: bool = False) -> Value:
        value = self.add_value(name, dtype, shape, fresh=fresh)
        self.inputs.append(value)
        return value

    def add_initializer(self, name: str, data: Tensor | np.ndarray, fresh: bool = True) -> Value:
        tensor = data if isinstance(data, Tensor) else ArrayTensor(data)
        value = self._register_value(Value(self.fresh_name(name) if fresh else name, const=tensor))
        self.initializers[value.name] = value
        return value

    def set_const(self, value: Value, data: Tensor | np.ndarray) -> None:
        """Replaces an initializer's tensor (a new tensor: loaded arrays are read-only)."""
        if value.name not in self.initializers:
            raise GraphError(f"{value.name!r} is not an initializer of this graph")
        tensor = data if isinstance(data, Tensor) else ArrayTensor(data)
        value.const = tensor
        value.dtype, value.shape = tensor.dtype, tensor.shape

    def remove_value(self, value: Value) -> None:
        """Drops an unused value (an initializer, a graph input or a dead op output)."""
        if self.is_used(value):
            raise GraphError(f"value {value.name!r} is still used")
        if self.producer(value) is not None:
            raise GraphError(f"value {value.name!r} still has a producer")
        self.initializers.pop(value.name, None)
        if value in self.inputs:
            self.inputs.remove(value)
        del self._values[value.name]
        self._names.discard(value.name)
        self.nx.remove_node(value)
        self._changed()

    def rename_value(self, value: Value, new_name: str) -> None:
        if new_name == value.name:
            return
        if new_name in self._names:
            raise GraphError(f"name {new_name!r} is taken")
        del self._values[value.name]
        if value.name in self.initializers:
            self.initializers = {new_name if k == value.name else k: v for k, v in self.initializers.items()}
        self._names.discard(value.name)
        value.name = new_name
        self._values[new_name] = value
        self._names.add(new_name)

    # ---- ops ----------------------------------------------------------------------------
    def add_op(
        self,
        op_type: str,
        inputs: Sequence[Value | None],
        outputs: int | Sequence[str | Value] = 1,
        attrs: dict[str, Any] | None = None,
        name: str = "",
        domain: str = "",
    ) -> Op:
        """Adds an op; `outputs` is a count (fresh names), names, or existing unproduced values."""
        op = Op(op_type, domain, self.fresh_name(name) if name else "", graph=self)
        op.attrs = {k: attr_from_python(v) for k, v in (attrs or {}).items()}
        self._ops[op] = next(self._order)
        self._add_vertex(op)
        for port, value in enumerate(inputs):
            self._connect_input(op, port, value)
        op.inputs = tuple(inputs)
        if isinstance(outputs, int):
            outputs = [f"{name or op_type.lower()}_out" for _ in range(outputs)]
        made = [self._adopt_output(out) for out in outputs]
        for port, value in enumerate(made):
            self._add_edge(op, value, port)
        op.outputs = tuple(made)
        self._adopt_subgraphs(op)
        return op

    def _adopt_subgraphs(self, op: Op) -> None:
        for sub in op.subgraphs():
            if sub.parent is not self:
                raise GraphError(f"subgraph {sub.name!r} of {op.label} must be created with this graph as parent")
            sub.owner = op
        self.refresh_captures(op)

    def adopt_op(self, op: Op, inputs: Sequence[Value | None], outputs: Sequence[Value | None]) -> Op:
        """Attaches a prepared op to already registered values (serde builds graphs this way,
        since ONNX files need not list nodes in dataflow order). None marks an omitted output."""
        op.inputs = tuple(inputs)
        op.outputs = tuple(outputs)  # type: ignore[arg-type]
        self.adopt_ops([op])
        return op

    def adopt_ops(self, ops: Iterable[Op]) -> None:
        """`adopt_op` for many new ops whose `inputs`/`outputs` tuples are already set to values
        registered here (or, for inputs, visible from an outer scope). Writes networkx's adjacency
        dicts in one pass, as `_add_vertex`/`_add_edge` would: loading adopts every op this way."""
        succ, pred, attrs = self.nx._succ, self.nx._pred, self.nx._node
        index, order, names = self._ops, self._order, self._names
        for op in ops:
            if op in succ:
                raise GraphError(f"{op.label} is already in graph {self.name!r}")
            op.graph = self
            index[op] = next(order)
            reads: dict = {}
            writes: dict = {}
            pred[op], succ[op], attrs[op] = reads, writes, {}
            for port, value in enumerate(op.inputs):
                if value is None:
                    continue
                if value.graph is self and value in succ:
                    keys = reads.get(value)
                    if keys is None:
                        keys = reads[value] = succ[value][op] = {}
                    keys[port] = {}
                else:
                    self._connect_input(op, port, value)
            for port, value in enumerate(op.outputs):
                if value is None:
                    continue
                if value not in succ:
                    self._add_vertex(value)
                keys = writes.get(value)
                if keys is None:
                    keys = writes[value] = pred[value][op] = {}
                keys[port] = {}
            if op.name:
                names.add(op.name)
        self._changed()

    def _adopt_output(self, out: str | Value) -> Value:
        if isinstance(out, Value):
            if self.producer(out) is not None or out.is_const:
                raise GraphError(f"value {out.name!r} already has a producer")
            return out
        return self.add_value(out)

    def _connect_input(self, op: Op, port: int, value: Value | None) -> None:
        if value is None:
            return
        self._check_visible(value)
        if value.graph is self:
            self._add_edge(value, op, port)
        else:
            self._note_outer_use(value)

    def _check_visible(self, value: Value) -> None:
        if value.graph is not self and not self._is_outer(value):
            raise GraphError(f"value {value.name!r} is not visible in graph {self.name!r}")

    def _is_outer(self, value: Value) -> bool:
        graph = self.parent
        while graph is not None:
            if graph._values.get(value.name) is value:
                return True
            graph = graph.parent
        return False

    def _capture_site(self, value: Value) -> tuple[Graph, Op] | None:
        """The graph that owns outer `value` and its op whose body (maybe nested) is this graph."""
        graph = self
        while graph.parent is not None:
            if graph.parent is value.graph:
                return (graph.parent, graph.owner) if graph.owner is not None else None
            graph = graph.parent
        return None

    def _note_outer_use(self, value: Value) -> None:
        """Keeps the capture edge in the owning graph, so liveness and order see this use."""
        site = self._capture_site(value)
        if site is not None:
            owner_graph, op = site
            if op in owner_graph._ops and not owner_graph.nx.has_edge(value, op, key=CAPTURE):
                owner_graph._add_edge(value, op, CAPTURE)

    def _forget_outer_use(self, value: Value | None) -> None:
        """Re-derives the capture edges at `value`'s owning graph after a body stopped reading it."""
        if value is None or value.graph is self:
            return
        site = self._capture_site(value)
        if site is not None and site[1] in site[0]._ops:
            site[0].refresh_captures(site[1])

    def set_input(self, op: Op, port: int, value: Value | None) -> None:
        """Points one input port of `op` at another value."""
        if value is not None:
            self._check_visible(value)
        old = op.inputs[port] if port < len(op.inputs) else None
        if old is not None and old.graph is self:
            self.nx.remove_edge(old, op, key=port)
            self._changed()
        inputs = list(op.inputs) + [None] * (port + 1 - len(op.inputs))
        inputs[port] = value
        while inputs and inputs[-1] is None:
            inputs.pop()
        op.inputs = tuple(inputs)
        self._connect_input(op, port, value)
        if old is not None and old is not value:
            self._forget_outer_use(old)

    def set_inputs(self, op: Op, values: Sequence[Value | None]) -> None:
        for port in range(len(op.inputs) - 1, len(values) - 1, -1):
            self.set_input(op, port, None)
        for port, value in enumerate(values):
            self.set_input(op, port, value)

    def remove_op(self, op: Op, remove_outputs: bool = True) -> None:
        """Removes an op; its outputs must be unused (rewire them first) unless kept."""
        for value in op.outputs:
            if value is not None and remove_outputs and self.is_used(value):
                raise GraphError(f"cannot remove {op.label}: its output {value.name!r} is still used")
        self.nx.remove_node(op)
        del self._ops[op]
        for value in op.outputs:
            if value is not None and remove_outputs:
                del self._values[value.name]
                self._names.discard(value.name)
                self.nx.remove_node(value)
        self._changed()
        op.graph = None
        for value in set(op.inputs):
            self._forget_outer_use(value)

    def replace_all_uses(self, old: Value, new: Value, outputs: bool = True) -> None:
        """Every consumer of `old` reads `new`; with `outputs`, graph outputs too.

        The op producing `new` keeps reading `old`, so `replace_all_uses(x, add_op(f, [x]) output)`
        puts `f` after `x`. Refuses (before changing anything) when a subgraph reads `old` by name.
        """
        for op in list(self._ops):
            if any(old.name in sub.free_names() for sub in op.subgraphs()):
                raise GraphError(f"{old.name!r} is read inside a subgraph of {op.label}; rename instead")
        self._check_visible(new)
        maker = self.producer(new) if new.graph is self else None
        for op, port in self.consumers(old):
            if op is not maker:
                self.set_input(op, port, new)
        if outputs:
            self.outputs = [new if v is old else v for v in self.outputs]

    def insert_after(self, value: Value, op_type: str, extra_inputs: Sequence[Value | None] = (),
                     attrs: dict[str, Any] | None = None, name: str = "") -> Op:
        """Inserts `op_type(value, *extra_inputs)` between `value` and all its consumers.

        When `value` is a graph output, the new op's output takes over the output's name so the
        model's interface does not change.
        """
        consumers = self.consumers(value)
        op = self.add_op(op_type, [value, *extra_inputs], 1, attrs, name=name)
        new = op.outputs[0]
        new.dtype, new.shape = value.dtype, value.shape
        for consumer, port in consumers:
            self.set_input(consumer, port, new)
        if value in self.outputs:
            self.outputs = [new if v is value else v for v in self.outputs]
            old_name = value.name
            spare = self.fresh_name(old_name)
            self._names.discard(spare)
            self.rename_value(value, spare)
            self.rename_value(new, old_name)
        return op

    def refresh_captures(self, op: Op) -> None:
        """Re-derives the capture edges of an op whose subgraphs read outer values."""
        stale = [src for src, keys in self.nx._pred[op].items() if CAPTURE in keys]
        for src in stale:
            self.nx.remove_edge(src, op, key=CAPTURE)
        self._changed()
        for value in self.captured_values(op):
            self._add_edge(value, op, CAPTURE)

    def captured_values(self, op: Op) -> list[Value]:
        """Values of this graph that the subgraphs of `op` read by name."""
        found: dict[Value, None] = {}
        for sub in op.subgraphs() if op.attrs else ():
            for name in sorted(sub.free_names()):
                value = self._values.get(name)
                if value is not None:
                    found[value] = None
        return list(found)

    def free_names(self) -> set[str]:
        """Names read here (or in nested bodies) but defined in an enclosing scope."""
        free: set[str] = set()
        for op in self._ops:
            free.update(v.name for v in op.inputs if v is not None and v.name not in self._values)
            for sub in op.subgraphs():
                free.update(n for n in sub.free_names() if n not in self._values)
        free.update(v.name for v in self.outputs if v.name not in self._values)
        return free

    # ---- order --------------------------------------------------------------------------
    def topological_order(self) -> list[Op]:
        """A topological order that keeps insertion order wherever dependencies allow (stable).

        Cached until the graph changes: loading computes it (to refuse cycles) and saving reuses it.
        """
        cache = self.nx.__networkx_cache__
        order = cache.get(_ORDER_KEY)
        if order is None:
            order = self._insertion_order_if_sorted()
            if order is None:
                order = self._stable_order()
            cache[_ORDER_KEY] = order
        return list(order)

    def _insertion_order_if_sorted(self) -> list[Op] | None:
        """The ops in insertion order when every op comes after the producers it reads (most files
        list nodes so): then that is exactly the stable order, found without the heap."""
        pred = self.nx._pred
        placed: set[Op] = set()
        for op in self._ops:
            for value in pred[op]:
                for producer in pred[value]:
                    if producer not in placed:
                        return None
            placed.add(op)
        return list(self._ops)

    def _stable_order(self) -> list[Op]:
        pred, succ = self.nx._pred, self.nx._succ
        indegree: dict[Op, int] = {}
        ready = []
        for op, index in self._ops.items():
            producers = {p for value in pred[op] for p in pred[value]}
            indegree[op] = len(producers)
            if not producers:
                ready.append((index, id(op), op))
        heapq.heapify(ready)
        order: list[Op] = []
        while ready:
            _, _, op = heapq.heappop(ready)
            order.append(op)
            successors = {c for value in op.outputs if value is not None for c in succ[value]}
            for successor in successors:
                indegree[successor] -= 1
                if indegree[successor] == 0:
                    heapq.heappush(ready, (self._ops[successor], id(successor), successor))
        if len(order) != len(self._ops):
            stuck = sorted(op.label for op, deg in indegree.items() if deg > 0)
            raise GraphError(f"the graph has a cycle through {', '.join(stuck[:5])}")
        return order

    def sort(self) -> None:
        """Renumbers ops in topological order, so export order follows dataflow."""
        order = self.topological_order()
        self._ops = {op: i for i, op in enumerate(order)}
        self._order = itertools.count(len(order))

    # ---- convenience for passes --------------------------------------------------------
    def const_value(self, value: Value | None) -> np.ndarray | None:
        """The array of a constant value: an initializer or the output of a Constant op."""
        if value is None:
            return None
        if value.const is not None:
            return value.const.numpy()
        producer = value.graph.producer(value) if value.graph is not None else None
        if producer is not None and producer.op_type == "Constant" and producer.domain in ("", "ai.onnx"):
            attr = producer.attrs.get("value")
            if attr is not None and attr.kind == "tensor":
                return attr.value.numpy()
        return None

    def set_attrs(self, op: Op, **attrs: Any) -> None:
        """Sets (None: removes) attributes; a new If/Loop/Scan body is attached with its captures."""
        for key, value in attrs.items():
            if value is None:
                op.attrs.pop(key, None)
            else:
                op.attrs[key] = value if isinstance(value, Attr) else attr_from_python(value)
        self._adopt_subgraphs(op)

    def verify(self) -> None:
        from graphsurg.ir.verify import verify

        verify(self)

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self._ops)} ops, {len(self._values)} values)"


def all_graphs(graph: Graph) -> Iterable[Graph]:
    yield graph
    for op in graph.ops:
        if op.attrs:  # only attributes hold subgraphs; most ops have none
            for sub in op.subgraphs():
                yield from all_graphs(sub)
