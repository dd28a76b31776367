"""excise: structured removal of channels, neurons and attention heads with dependency groups."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from graphsurg.passes._depgraph import DepGraph
from graphsurg.passes._excise_apply import Excision
from graphsurg.passes._excise_plan import Group, choose, collect_groups, emptied_groups, unit_scores
from graphsurg.passes._excise_untie import Untied, untie_broadcasts

from graphsurg.ir import Model
from graphsurg.pipeline import Pass, PassContext, PassResult


@dataclass(frozen=True)
class ExciseParams:
    ratio: float = 0.3  # share of each group's units removed (rounded to the nearest unit)
    importance: Literal["l1", "l2", "taylor"] = "l1"
    target: Literal["channels", "heads", "auto"] = "auto"
    exclude: tuple[str, ...] = ()  # op, output or weight names (shell patterns) whose layers stay whole
    round_to: int = 1  # kept units per group: a multiple of this

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError("ratio must be in [0, 1)")
        if self.round_to < 1:
            raise ValueError("round_to must be at least 1")


class Excise(Pass):
    """Removes whole output channels/neurons and attention heads, shrinking every consumer.

    Handles: output channels of Conv (plain; grouped: the same positions go in every group;
    depthwise: channels follow their input), ConvTranspose, Gemm, MatMul and embedding Gather
    whose weights are initializers, Constant ops, or behind Transpose/Reshape/Squeeze/Unsqueeze/
    Cast of one. Dependency groups are built once: BatchNorm/InstanceNorm/LayerNorm parameters,
    LRN, elementwise ops and activations,
    residual Add/Sub/Mul (same channels go in every member, importance summed), Concat (offsets),
    Split/Slice/Gather (bounds and indices updated), Flatten/Reshape after a conv (channel x
    spatial mapping), decomposed LayerNorm (ReduceMean/Sub/Pow/Sqrt/Div), attention (a Reshape
    that splits channels into heads ties each head: Q, K, V columns and the output projection
    rows go together; target=heads or auto), symbolic batch/sequence dimensions, and Reshape
    targets, Slice bounds and Split sizes that carry a head count or width, also when computed
    from Shape (rewritten as constants). torch's nn.MultiheadAttention (TorchScript export:
    TransformerEncoderLayer, TransformerDecoderLayer self- and cross-attention, separate q/k/v
    projections when kdim/vdim differ, need_weights on or off): a packed in-projection
    unflattened into q/k/v segments (the same heads go from each), a packed weight cut into q
    and k/v rows by Slices with bounds from Shape (each part gets its own sliced copy), heads
    folded into the symbolic batch (seq, batch*heads, head_dim: that target entry becomes -1;
    attention, softmax and elementwise ops on the folded layout), a padding mask Expanded over
    the heads (its size rewritten). The same layers as torch's dynamo exporter writes them
    (opset 20): q, k, v picked from the packed projection by Gather, heads folded and unfolded
    again as (batch, heads, seq, head_dim), a target entry that copies the head count from
    Shape of a tensor with the same heads (left as it is: it adapts at run time), target shapes
    shared by the layers (a shared Concat is copied for each Reshape it is rewritten for), one
    expanded mask added in every layer (the Expand and the layout ops after it are copied per
    reader first, so each layer's heads stay a group of their own).
    `target`: channels (no head splits), heads (only groups with heads), auto (both).
    Refuses, per group and with the reasons listed: channels that reach a graph output, ops it
    cannot shrink, softmax/ArgMax/ReduceProd over channels, tensors without labels combined with
    them, shared weights or weights that are graph inputs, excluded layers, Reshapes into a
    symbolic dimension, channel counts read by Shape that reach a place the pass cannot rewrite,
    heads folded into a symbolic dimension that reach an op other than Reshape, Transpose,
    MatMul between activations, Softmax, elementwise ops and Shape (or a Reshape that infers
    another dimension, a contraction over them, a tensor folded otherwise), GroupNorm and
    grouped ConvTranspose. Never removes
    a group's last unit. Main graph only; a value read inside an If/Loop/Scan body is left alone.
    """

    name = "excise"
    Params = ExciseParams

    def run(self, model: Model, ctx: PassContext, result: PassResult) -> None:
        p = self.params
        before = model.parameter_count()
        untied = untie_broadcasts(model.graph) if p.target != "channels" else Untied()
        dep = DepGraph.build(model, "channels" if p.target == "channels" else "heads", p.exclude)
        groups = collect_groups(dep)
        scores, dead = unit_scores(dep, model, p.importance, ctx) if groups else ({}, set())
        for group in groups:
            skip = "target=heads: not an attention-head group" if p.target == "heads" and not group.headed else None
            choose(group, dep, scores, dead, p.ratio, p.round_to, skip)
        self._undo_emptying(dep, groups)
        removed = {u for g in groups if g.status == "excised" for u in g.removed}
        if not removed:  # the copies only served the grouping: nothing removed, nothing changed
            untied.undo(model.graph)
        touched = Excision(dep, removed).run() if removed else []
        result.touch(*touched)
        self._record(dep, groups, result, before, model.parameter_count())
        result.changes["untied_copies"] = len(untied.rewired)

    @staticmethod
    def _undo_emptying(dep: DepGraph, groups: list[Group]) -> None:
        while True:
            emptied = emptied_groups(dep, groups)
            if not emptied:
                return
            for group, reason in emptied:
                group.status, group.reason, group.removed = "refused", reason, []

    def _record(self, dep: DepGraph, groups: list[Group], result: PassResult, before: int, after: int) -> None:
        entries = [_group_entry(dep, g) for g in groups]
        for group in groups:  # every group left whole (or partly whole) is listed with its reason
            if group.status != "excised" or group.reason:
                result.refuse(f"group {group.name}", group.reason)
        excised = [g for g in groups if g.status == "excised"]
        removed = sum(len(g.removed) for g in excised)
        result.modified = removed > 0
        result.changes = {"groups": entries, "parameters_before": before, "parameters_after": after}
        if not groups:
            result.summary = "found no Conv, Gemm, MatMul or Gather layer with constant weights to excise"
            result.refuse("model", "no prunable layer (constant-weight Conv, ConvTranspose, Gemm, MatMul, Gather)")
            return
        left = len(groups) - len(excised)
        result.summary = (f"removed {removed} units in {len(excised)} of {len(groups)} groups, "
                          f"{before} -> {after} parameters ({after / max(before, 1):.3f}x); "
                          f"{left} groups left whole (reasons listed)")


def _group_entry(dep: DepGraph, group: Group) -> dict:
    """The change-record entry of a group: its layers, and per layer the removed output indices."""
    removed = set(group.removed)
    per_layer = {}
    for op, labels in zip(group.producers, group.labels, strict=True):
        roots = dep.labels.roots(labels)
        per_layer[op.label] = np.flatnonzero(np.isin(roots, list(removed))).tolist()
    position = {u: i for i, u in enumerate(group.units)}
    entry = {"group": group.name, "kind": group.kind, "layers": [op.label for op in group.producers],
             "units": len(group.units), "status": group.status,
             "removed_units": sorted(position[u] for u in group.removed), "removed": per_layer}
    if group.reason:
        entry["reason"] = group.reason
    return entry
