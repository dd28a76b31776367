"""Carrying out an excision plan: slice every member constant, update every fixup, shrink the
recorded shapes. Everything is computed from the labels first, then the graph is edited."""

from __future__ import annotations

import numpy as np
from graphsurg.passes._depgraph import DepGraph, Fixup
from graphsurg.passes._excise_reshape import apply_shape_patch
from graphsurg.passes._excise_weights import (
    WeightRef,
    materialize,
    refresh_chain_shapes,
    replace_effective,
    resolve_weight,
    set_const_input,
    write_source,
)

from graphsurg.ir import Graph


class Excision:
    """Keeps the removed class roots and answers "which indices stay" for any label array."""

    def __init__(self, dep: DepGraph, removed: set[int]):
        self.dep, self.graph = dep, dep.graph
        every = np.arange(len(dep.labels.parent), dtype=np.int64)
        self.kept = ~np.isin(dep.labels.roots(every), np.array(sorted(removed), dtype=np.int64))

    def keep(self, labels: np.ndarray) -> np.ndarray:
        return self.kept[labels]

    def run(self) -> list[str]:
        """Applies the plan; returns the initializers it changed or created."""
        slices = self._slices()
        sizes = {value: {axis: int(self.keep(labels).sum()) for axis, labels in slots.items()}
                 for value, slots in self.dep.slots.items()}
        touched = [name for ref, axes in slices.values() for name in _slice(self.graph, ref, axes)]
        for fixup in self.dep.fixups:
            if fixup.op.graph is self.graph:  # not dropped with the chain of a weight given its own copy
                self._fixup(fixup, sizes)
        for value, new in sizes.items():
            if value.shape is not None:
                value.shape = tuple(new.get(a, d) if isinstance(d, int) else d for a, d in enumerate(value.shape))
        self._forget_folded_dims()
        return touched

    def _forget_folded_dims(self) -> None:
        """A fold that lost heads no longer has its recorded size ("4*batch"): that dimension
        becomes unknown, or onnxruntime would take it for the same size as an intact layer's."""
        for value, folds in self.dep.folds.items():
            shrunk = {axis for axis, fold in folds.items() if not self.keep(fold.labels).all()}
            if shrunk and value.shape is not None:
                value.shape = tuple(None if a in shrunk else d for a, d in enumerate(value.shape))

    def _slices(self) -> dict[tuple, tuple[WeightRef, dict[int, np.ndarray]]]:
        slices: dict[tuple, tuple[WeightRef, dict[int, np.ndarray]]] = {}
        for member in self.dep.members:
            keep = self.keep(member.labels)
            if keep.all():
                continue
            ref, axes = slices.setdefault(member.ref.key, (member.ref, {}))
            if member.axis in axes and not np.array_equal(axes[member.axis], keep):
                raise AssertionError(f"{member.ref.name}: two groups disagree on axis {member.axis}")
            axes[member.axis] = keep
        return slices

    def _fixup(self, fixup: Fixup, sizes: dict) -> None:
        op, opset = fixup.op, self.dep.model.opset
        if fixup.kind == "reshape":
            out = op.outputs[0]
            slots = {**self.dep.get(out), **{a: fold.labels for a, fold in self.dep.folds.get(out, {}).items()}}
            kept = {a: int(self.keep(slots[a]).sum()) for a in fixup.data["axes"]}
            unchanged = all(kept[a] == len(slots[a]) for a in kept)
            # Computed targets may take a count from Shape of a tensor that did shrink: their places are
            # written even when their own axes keep every unit.
            if not unchanged or resolve_weight(self.graph, op, 1) is None:
                apply_shape_patch(self.graph, op, fixup.data, kept)
            return
        if fixup.kind == "freeze":
            set_const_input(self.graph, op, fixup.data["port"], fixup.data["values"], "frozen")
            return
        keep = self.keep(fixup.labels)
        if keep.all() and not _computed_bounds(self.graph, fixup):
            return
        if fixup.kind == "conv_groups":
            self.graph.set_attrs(op, group=int(keep.sum()))
        elif fixup.kind == "split":
            _split(self.graph, op, keep, fixup, opset)
        elif fixup.kind == "slice":
            _slice_bounds(self.graph, op, keep, fixup, opset)
        elif fixup.kind == "expand":
            spec = np.array(fixup.data["spec"], dtype=np.int64)
            spec[fixup.data["axis"]] = int(keep.sum())
            set_const_input(self.graph, op, 1, spec)
        elif fixup.kind == "gather":
            ref = resolve_weight(self.graph, op, 1)
            picked = np.asarray(ref.effective(), dtype=np.int64) % len(keep)
            position = np.cumsum(keep) - 1
            replace_effective(self.graph, ref, position[picked[keep[picked]]].astype(ref.effective().dtype),
                              "excised")


def _computed_bounds(graph: Graph, fixup: Fixup) -> bool:
    """Slice bounds or Split sizes computed at run time (from Shape): rewritten even when their own
    channels stay, since the shape they read from may have shrunk."""
    ports = {"slice": (1, 2), "split": (1,)}.get(fixup.kind, ())
    op = fixup.op
    return any(port < len(op.inputs) and op.inputs[port] is not None and resolve_weight(graph, op, port) is None
               for port in ports)


def _slice(graph: Graph, ref: WeightRef, axes: dict[int, np.ndarray]) -> list[str]:
    """Slices the constant behind `ref` along effective axes; in place when the chain allows."""
    mapped = {ref.source_axis(a): keep for a, keep in axes.items()} if ref.exclusive else {None: None}
    if None not in mapped:
        array = ref.source_array()
        for axis, keep in mapped.items():
            array = np.compress(keep, array, axis=axis)
        write_source(graph, ref, array)
        refresh_chain_shapes(ref)
        return [ref.name] if ref.is_initializer else []
    array = ref.effective()
    for axis, keep in axes.items():
        array = np.compress(keep, array, axis=axis)
    return [materialize(graph, ref, array, "excised").name]


def _split(graph: Graph, op, keep: np.ndarray, fixup: Fixup, opset: int) -> None:
    offsets = np.cumsum([0, *fixup.data["sizes"]])
    sizes = [int(keep[offsets[i]:offsets[i + 1]].sum()) for i in range(len(offsets) - 1)]
    if opset < 13:
        graph.set_attrs(op, split=sizes)
        return
    set_const_input(graph, op, 1, np.array(sizes, dtype=np.int64), "split")
    graph.set_attrs(op, num_outputs=None)  # explicit sizes replace an even split


def _slice_bounds(graph: Graph, op, keep: np.ndarray, fixup: Fixup, opset: int) -> None:
    """New bounds count the kept channels before the old ones; computed bounds become constants."""
    index, start, end = fixup.data["index"], fixup.data["start"], fixup.data["end"]
    new_start = int(keep[:start].sum())
    new_end = new_start + int(keep[start:max(start, end)].sum())
    for name, port, value in (("starts", 1, new_start), ("ends", 2, new_end)):
        values = list(fixup.data[name])
        values[index] = value
        if opset < 10:
            graph.set_attrs(op, **{name: values})
        else:
            set_const_input(graph, op, port, np.array(values, dtype=np.int64))
