"""Dependency groups for structured excision: the DepGraph idea (Torch-Pruning) on an ONNX graph.

Every output channel of a prunable layer (Conv, ConvTranspose, Gemm, MatMul or Gather with a
constant weight) gets a *label*. Labels travel forward through the graph as per-axis arrays on the
values they index ("slots"): an activation passes them on, a Flatten repeats each one over the
spatial positions, a Concat lays several side by side, a Reshape that splits channels into heads
ties each head's labels together. Where two tensors meet index by index (a residual Add, a gating
Mul, the batch axes of an attention MatMul) their labels are unioned: the channels must go
together. A union-find over labels yields *classes* (what is removed as one unit: a channel, or a
whole head) and *groups* (classes coupled through shared layers, ranked against each other).

Constants read along a labeled axis become *members* to slice (weights' rows and columns, BN
parameters, biases, position embeddings); ops whose attributes or shape tensors count channels
get *fixups* (Conv group, Split sizes, Slice bounds, Gather indices, Reshape shape tensors). A
label that reaches something the pass cannot shrink (a graph output, an unknown op, a softmax
over channels, a tensor without labels of the same size) is *fixed*, with the reason kept, and a
fixed class is never removed. Heads folded into a symbolic dimension (batch*heads) are kept as
*folds* beside the slots (`_excise_folds.py`). The op rules live in `_excise_rules*.py`; shapes
are refined by `_excise_shapes.py` (static sizes behind shape arithmetic) and counts read
through `Shape` are checked by `_excise_dims.py`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from graphsurg.passes._excise_folds import Fold
from graphsurg.passes._excise_shapes import static_shapes
from graphsurg.passes._excise_static import static_ints
from graphsurg.passes._excise_weights import WeightRef, resolve_weight

from graphsurg.ir import Graph, Model, Op, Value

MAX_REASONS = 3


class Labels:
    """Two union-finds over channel labels: classes (removed together) and groups (ranked together).

    Class roots carry metadata: why they are fixed, whether some of their signal leaves through a
    path other than a weight (a normalization or reduction: never provably dead), and whether they
    were tied into attention heads.
    """

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.group_parent: list[int] = []
        self.fixed: dict[int, list[str]] = {}
        self.live: set[int] = set()
        self.headed: set[int] = set()
        self._table: np.ndarray | None = None  # root of every label, once unions are over

    def new(self, count: int, grouped: bool = False) -> np.ndarray:
        """Fresh labels, each its own class; `grouped` puts them in one group (a layer's channels)."""
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        self.group_parent.extend([start] * count if grouped else range(start, start + count))
        self._table = None
        return np.arange(start, start + count, dtype=np.int64)

    @staticmethod
    def _find(parent: list[int], x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression keeps later finds O(1)
            parent[x], x = root, parent[x]
        return root

    def find(self, x: int) -> int:
        return self._find(self.parent, int(x))

    def group(self, x: int) -> int:
        return self._find(self.group_parent, int(x))

    def freeze(self) -> None:
        """Tabulates every label's root, so `roots` becomes one array lookup (no unions after)."""
        self._table = np.array([self.find(x) for x in range(len(self.parent))], dtype=np.int64)

    def roots(self, labels: np.ndarray) -> np.ndarray:
        if self._table is not None:
            return self._table[labels]
        unique, inverse = np.unique(labels, return_inverse=True)
        return np.array([self.find(x) for x in unique], dtype=np.int64)[inverse].reshape(labels.shape)

    def union(self, a: int, b: int) -> None:
        self._table = None
        self._union_groups(a, b)
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        keep, gone = min(ra, rb), max(ra, rb)
        self.parent[gone] = keep
        if gone in self.fixed:
            merged = self.fixed.setdefault(keep, [])
            merged.extend(r for r in self.fixed.pop(gone) if r not in merged)
        for flags in (self.live, self.headed):
            if gone in flags:
                flags.discard(gone)
                flags.add(keep)

    def _union_groups(self, a: int, b: int) -> None:
        ga, gb = self.group(a), self.group(b)
        if ga != gb:
            self.group_parent[max(ga, gb)] = min(ga, gb)

    def union_arrays(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in set(zip(a.tolist(), b.tolist(), strict=True)):
            self.union(x, y)

    def tie(self, labels: np.ndarray) -> int:
        """Makes all `labels` one class; returns a label of it."""
        first = int(labels.reshape(-1)[0])
        for x in set(labels.reshape(-1).tolist()):
            self.union(first, x)
        return first

    def fix(self, labels: np.ndarray, reason: str) -> None:
        for root in {self.find(x) for x in np.asarray(labels).reshape(-1).tolist()}:
            reasons = self.fixed.setdefault(root, [])
            if reason not in reasons and len(reasons) < MAX_REASONS:
                reasons.append(reason)

    def mark(self, flags: set[int], labels: np.ndarray) -> None:
        flags.update(self.find(x) for x in set(labels.reshape(-1).tolist()))


@dataclass
class ArrayMember:
    """A constant sliced along `axis` (of the array its op sees) by `labels` (one per index)."""

    ref: WeightRef
    axis: int
    labels: np.ndarray
    role: str  # "out"/"in": a layer's output rows/input columns; "scale": a norm's scale; "param": other data


@dataclass
class Fixup:
    """An op whose attributes or shape inputs count channels; `labels` index its input axis."""

    kind: str  # "conv_groups", "split", "slice", "gather", "reshape", "expand", "freeze" (a static shape input)
    op: Op
    labels: np.ndarray | None = None
    data: dict = field(default_factory=dict)


@dataclass
class Producer:
    op: Op
    labels: np.ndarray


class DepGraph:
    """Labels, slots, members and fixups of one graph; see the module docstring.

    `mode` is "channels" (a Reshape that splits channels into heads fixes them) or "heads"
    (such splits tie each head into one class). `exclude` lists op, output or weight names
    (shell-style patterns allowed) whose layers keep all their channels.
    """

    def __init__(self, model: Model, mode: str = "heads", exclude: Iterable[str] = ()):
        self.model = model
        self.graph: Graph = model.graph
        self.mode = mode
        self.exclude = tuple(exclude)
        self.labels = Labels()
        self.slots: dict[Value, dict[int, np.ndarray]] = {}
        self.members: list[ArrayMember] = []
        self.fixups: list[Fixup] = []
        self.producers: list[Producer] = []
        self.order: dict[Op, int] = {}
        self.shapes: dict[Value, tuple] = {}  # probed static shapes (see _excise_shapes)
        self.folds: dict[Value, dict[int, Fold]] = {}  # heads folded into symbolic dims (see _excise_folds)

    @classmethod
    def build(cls, model: Model, mode: str = "heads", exclude: Iterable[str] = ()) -> DepGraph:
        from graphsurg.passes._excise_dims import check_dimension_reads
        from graphsurg.passes._excise_rules import FOLD_AWARE, generic_rule, load_rules

        dep = cls(model, mode, exclude)
        rules, order = load_rules(), dep.graph.topological_order()
        static_shapes(dep, order)
        for index, op in enumerate(order):
            dep.order[op] = index
            rule: Callable[[DepGraph, Op], None] = rules.get(op.op_type, generic_rule) \
                if op.domain in ("", "ai.onnx") else generic_rule
            if op.op_type not in FOLD_AWARE:
                dep.fix_folds(op)
            rule(dep, op)
        dep._fix_boundaries()
        check_dimension_reads(dep)
        dep.labels.freeze()
        return dep

    def fix_folds(self, op: Op) -> None:
        for value in op.inputs:
            for fold in self.folds.get(value, {}).values():
                self.labels.fix(fold.labels, f"{op.label} reads them folded into a symbolic dimension")

    def _fix_boundaries(self) -> None:
        for value in self.graph.outputs:
            for labels in [*self.get(value).values(), *(f.labels for f in self.folds.get(value, {}).values())]:
                self.labels.fix(labels, f"they reach the graph output {value.name!r}")
        for op in self.graph.ops:
            for sub in op.subgraphs():
                for name in sub.free_names():
                    value = self.graph.lookup(name)
                    for labels in (self.get(value) if value is not None else {}).values():
                        self.labels.fix(labels, f"a subgraph of {op.label} reads {name!r}")

    # ---- slots -------------------------------------------------------------------------
    def get(self, value: Value | None) -> dict[int, np.ndarray]:
        return self.slots.get(value, {}) if value is not None else {}

    def put(self, value: Value | None, axis: int, labels: np.ndarray) -> None:
        if value is not None and len(labels):
            self.slots.setdefault(value, {})[axis] = labels

    def fold(self, value: Value | None, axis: int, fold: Fold) -> None:
        if value is not None and len(fold.labels):
            self.folds.setdefault(value, {})[axis] = fold

    def rank(self, value: Value | None) -> int | None:
        if value is None:
            return None
        array = self.graph.const_value(value)
        if array is not None:
            return array.ndim
        shape = self.base_shape(value)
        return None if shape is None else len(shape)

    def size(self, value: Value | None, axis: int) -> int | None:
        """The static size of `value` along `axis` (labels know it even when shapes do not)."""
        if value is None:
            return None
        if axis in self.get(value):
            return len(self.get(value)[axis])
        array = self.graph.const_value(value)
        shape = array.shape if array is not None else self.base_shape(value)
        if shape is None or not 0 <= axis < len(shape):
            return None
        dim = shape[axis]
        return dim if isinstance(dim, int) else None

    def base_shape(self, value: Value) -> tuple | None:
        """The shape before excision, as static as probing could make it."""
        return self.shapes.get(value, value.shape)

    def shape(self, value: Value | None) -> tuple | None:
        """The value's shape with labeled axes filled in from their labels."""
        if value is None:
            return None
        array = self.graph.const_value(value)
        if array is not None:
            return tuple(array.shape)
        if self.base_shape(value) is None:
            return None
        dims = list(self.base_shape(value))
        for axis, labels in self.get(value).items():
            if axis < len(dims):
                dims[axis] = len(labels)
        return tuple(dims)

    # ---- fixing and membership ---------------------------------------------------------
    def fix_value(self, value: Value | None, reason: str) -> None:
        for labels in self.get(value).values():
            self.labels.fix(labels, reason)

    def fix_inputs(self, op: Op, reason: str) -> None:
        for value in op.inputs:
            self.fix_value(value, reason)

    def weight(self, op: Op, port: int) -> WeightRef | None:
        return resolve_weight(self.graph, op, port, lambda value: static_ints(self, value))

    def excluded(self, op: Op, *refs: WeightRef | None) -> bool:
        if not self.exclude:
            return False
        names = [op.name, op.label, *(v.name for v in op.outputs if v is not None)]
        names += [ref.name for ref in refs if ref is not None]
        return any(fnmatch.fnmatchcase(name, pattern) for name in names if name for pattern in self.exclude)

    def new_producer(self, op: Op, count: int) -> np.ndarray:
        labels = self.labels.new(count, grouped=True)
        self.producers.append(Producer(op, labels))
        return labels

    def member(self, ref: WeightRef, axis: int, labels: np.ndarray, role: str) -> None:
        self.members.append(ArrayMember(ref, axis, labels, role))

    # ---- alignment ---------------------------------------------------------------------
    def align(self, op: Op, operands: list[tuple[int, list]]) -> dict:
        """Couples labels of operands that meet index by index.

        `operands` holds (input port, joint id of each of that input's axes); axes with the same
        joint id are aligned (broadcasting allowed). Labels on one joint are unioned pointwise;
        a full-size constant there becomes a member; a full-size tensor without labels fixes
        them. Returns joint id -> labels.
        """
        found: dict = {}
        for port, joints in operands:
            for axis, labels in self.get(op.inputs[port]).items():
                if axis < len(joints):
                    found.setdefault(joints[axis], []).append(labels)
        result = {}
        for joint, arrays in found.items():
            count = len(arrays[0])
            if any(len(a) != count for a in arrays):
                for a in arrays:
                    self.labels.fix(a, f"{op.label} broadcasts them against a different size")
                continue
            for a in arrays[1:]:
                self.labels.union_arrays(arrays[0], a)
            self._align_others(op, operands, joint, arrays[0])
            result[joint] = arrays[0]
        return result

    def align_folds(self, op: Op, operands: list[tuple[int, list]]) -> dict:
        """Folds meeting on a joint, as `align` for slots: unioned pointwise when they have the
        same period and outer factors, while operands without the fold broadcast there (size 1);
        otherwise fixed. Returns joint id -> fold."""
        found: dict = {}
        for port, joints in operands:
            for axis, fold in self.folds.get(op.inputs[port], {}).items():
                if axis < len(joints):
                    found.setdefault(joints[axis], []).append(fold)
        result = {}
        for joint, folds in found.items():
            first = folds[0]
            unfolded = [self.size(op.inputs[port], axis) for port, joints in operands for axis, j in enumerate(joints)
                        if j == joint and axis not in self.folds.get(op.inputs[port], {})]
            if any(len(f.labels) != len(first.labels) or f.outer != first.outer for f in folds) \
                    or any(size != 1 for size in unfolded):
                for fold in folds:
                    self.labels.fix(fold.labels, f"{op.label} combines them, folded, with a tensor folded otherwise")
                continue
            for fold in folds[1:]:
                self.labels.union_arrays(first.labels, fold.labels)
            result[joint] = first
        return result

    def _align_others(self, op: Op, operands: list[tuple[int, list]], joint, labels: np.ndarray) -> None:
        for port, joints in operands:
            value = op.inputs[port]
            for axis in (i for i, j in enumerate(joints) if j == joint):
                if axis in self.get(value):
                    continue
                size = self.size(value, axis)
                if size == 1:
                    continue  # broadcast: every channel sees the same element
                ref = self.weight(op, port) if size == len(labels) else None
                if ref is not None:
                    self.member(ref, axis, labels, "param")
                elif size is None:
                    self.labels.fix(labels, f"{op.label} combines them with {value.name!r}, whose size is unknown")
                else:
                    self.labels.fix(labels, f"{op.label} combines them with {value.name!r}, which has no "
                                            "prunable channels")
