"""Which channels go: groups, importance scores and the per-group choice.

A group's units are its classes (a channel, or a whole head). Importance of a unit is summed over
every weight of the group that it indexes, incoming and outgoing (each weight normalized by its
mean so large layers do not drown small ones): `l1` = sum |w|, `l2` = sqrt(sum w^2), `taylor` =
sum |w * dL/dw| (gradients from the context's training backend). A unit whose every outgoing
weight is zero and whose signal leaves through no normalization or reduction contributes nothing
(it is *dead*) and ranks below everything else.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from graphsurg.passes._depgraph import ArrayMember, DepGraph

from graphsurg.errors import BadInputError
from graphsurg.ir import Model, Op
from graphsurg.pipeline import PassContext


@dataclass
class Group:
    """Producers whose channels are ranked together, and what the pass decided for them."""

    producers: list[Op]
    labels: list[np.ndarray]
    units: list[int] = field(default_factory=list)
    headed: bool = False
    status: str = "kept"  # "excised", "refused", "skipped", "kept"
    reason: str = ""
    removed: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.producers[0].label

    @property
    def kind(self) -> str:
        return "heads" if self.headed else "channels"


def collect_groups(dep: DepGraph) -> list[Group]:
    """Groups in the order of their first producer; units in the order they first appear."""
    by_root: dict[int, Group] = {}
    for producer in sorted(dep.producers, key=lambda p: dep.order.get(p.op, 0)):
        root = dep.labels.group(int(producer.labels[0]))
        group = by_root.setdefault(root, Group([], []))
        group.producers.append(producer.op)
        group.labels.append(producer.labels)
    for group in by_root.values():
        roots = dep.labels.roots(np.concatenate(group.labels))
        group.units = list(dict.fromkeys(roots.tolist()))
        group.headed = any(u in dep.labels.headed for u in group.units)
    return list(by_root.values())


# ---- importance -----------------------------------------------------------------------
def unit_scores(dep: DepGraph, model: Model, importance: str, ctx: PassContext) -> tuple[dict, set]:
    """(score per class root, dead class roots)."""
    weights = [m for m in dep.members if m.role in ("in", "out", "scale")]
    grads = _gradients(model, weights, ctx) if importance == "taylor" else {}
    scores: dict[int, float] = defaultdict(float)
    sink: dict[int, float] = defaultdict(float)
    norms = _Norms(grads)
    for member in weights:
        if member.role == "in":
            _accumulate(dep, sink, member, norms.get(member, "l1"))
        per_index = norms.get(member, importance)
        if per_index is not None:
            mean = float(per_index.mean())
            _accumulate(dep, scores, member, per_index / mean if mean > 0 else per_index)
    all_roots = set(dep.labels.roots(np.concatenate([p.labels for p in dep.producers])).tolist())
    dead = {r for r in all_roots if r not in dep.labels.live and sink.get(r, 0.0) == 0.0}
    return scores, dead


class _Norms:
    """Per-index norms of member weights; each weight is read once and reduced once per axis."""

    def __init__(self, grads: dict[str, np.ndarray]) -> None:
        self.grads = grads
        self.magnitudes: dict[tuple, np.ndarray] = {}
        self.sums: dict[tuple, np.ndarray | None] = {}

    def get(self, member: ArrayMember, importance: str) -> np.ndarray | None:
        key = (member.ref.key, member.axis, importance)
        if key not in self.sums:
            values = self._values(member.ref, importance)
            self.sums[key] = None if values is None else _per_index(values, member.axis)
            if importance == "l2" and values is not None:
                self.sums[key] = np.sqrt(self.sums[key])
        return self.sums[key]

    def _values(self, ref, importance: str) -> np.ndarray | None:
        if ref.key not in self.magnitudes:
            self.magnitudes[ref.key] = np.abs(np.asarray(ref.effective(), dtype=np.float32))
        magnitude = self.magnitudes[ref.key]
        if importance == "l1":
            return magnitude
        if importance == "l2":
            return magnitude * magnitude
        grad = self.grads.get(ref.name)
        if grad is None:
            return None  # a weight the training backend does not see (a Constant node): no evidence
        return magnitude * np.abs(ref.effective(np.asarray(grad, dtype=np.float32).reshape(ref.source_array().shape)))


def _per_index(values: np.ndarray, axis: int) -> np.ndarray:
    others = tuple(a for a in range(values.ndim) if a != axis)
    return (values.sum(axis=others) if others else values).astype(np.float64)


def _accumulate(dep: DepGraph, into: dict, member: ArrayMember, per_index: np.ndarray) -> None:
    roots = dep.labels.roots(member.labels)
    unique, inverse = np.unique(roots, return_inverse=True)
    sums = np.zeros(len(unique))
    np.add.at(sums, inverse, per_index)
    for root, value in zip(unique.tolist(), sums.tolist(), strict=True):
        into[root] += value


def _gradients(model: Model, weights: list[ArrayMember], ctx: PassContext) -> dict[str, np.ndarray]:
    names = sorted({m.ref.name for m in weights if m.ref.is_initializer})
    grads = ctx.gradients(model, names, "excise{importance=taylor}")
    if not grads:
        raise BadInputError("excise{importance=taylor}: the gradients service returned no gradients")
    return grads


# ---- choice ------------------------------------------------------------------------------
def units_to_remove(count: int, ratio: float, round_to: int) -> int:
    """How many of `count` units go: round(ratio * count), kept count a multiple of `round_to`,
    never all of them."""
    keep = count - math.floor(ratio * count + 0.5)
    if round_to > 1 and count >= round_to:
        keep = min(count, max(round_to, round_to * math.floor(keep / round_to + 0.5)))
    return count - max(1, keep)


def choose(group: Group, dep: DepGraph, scores: dict, dead: set, ratio: float, round_to: int,
           skip: str | None = None) -> None:
    """Removes the lowest-ranked prunable units (dead ones first), leaving fixed units alone;
    `skip` leaves a group that could be excised alone with that reason."""
    prunable = [u for u in group.units if u not in dep.labels.fixed]
    wanted = units_to_remove(len(group.units), ratio, round_to)
    count = min(wanted, len(prunable))
    if not prunable:
        group.status, group.reason = "refused", _fixed_reasons(group, dep)
        return
    if skip:
        group.status, group.reason = "skipped", skip
        return
    if count == 0:
        group.status = "kept"
        group.reason = ("a group of one unit keeps it" if len(group.units) == 1 else
                        f"ratio {ratio} of {len(group.units)} units rounds to none")
        return
    position = {u: i for i, u in enumerate(group.units)}
    ranked = sorted(prunable, key=lambda u: (u not in dead, scores.get(u, 0.0), position[u]))
    group.removed = ranked[:count]
    group.status = "excised"
    if count < wanted:
        group.reason = f"{len(group.units) - len(prunable)} units are fixed: {_fixed_reasons(group, dep)}"


def _fixed_reasons(group: Group, dep: DepGraph) -> str:
    reasons: list[str] = []
    for unit in group.units:
        for reason in dep.labels.fixed.get(unit, []):
            if reason not in reasons:
                reasons.append(reason)
    shown = "; ".join(reasons[:3])
    return shown + (f" (and {len(reasons) - 3} more)" if len(reasons) > 3 else "")


def emptied_groups(dep: DepGraph, groups: list[Group]) -> list[tuple[Group, str]]:
    """Groups whose removals would leave some tensor with no channel along an axis."""
    removed = {u: g for g in groups if g.status == "excised" for u in g.removed}
    if not removed:
        return []
    found: dict[int, tuple[Group, str]] = {}
    for value, slots in dep.slots.items():
        for labels in slots.values():
            roots = dep.labels.roots(labels)
            if all(r in removed for r in roots.tolist()):
                for root in set(roots.tolist()):
                    group = removed[root]
                    found.setdefault(id(group), (group, f"removing them would leave {value.name!r} empty"))
    return list(found.values())
