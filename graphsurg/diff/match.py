"""Aligns the ops of two graphs even when their names changed.

Phases, each only pairing ops the earlier ones left free:
1. names: ops with the same unique name (or, for unnamed ops, the same unique first output name),
   unless the structure says otherwise (an op whose whole radius-3 neighbourhood is unique on both
   sides and points elsewhere wins over a name: exporters that number their nodes shift names on
   every insertion);
2. structure: ops whose neighbourhood hash is unique on both sides, deepest radius first;
3. propagation: from every pair, producers on the same input port and consumers on the same
   output port with the same op type are paired when that choice is unambiguous;
4. similarity: what is left is paired within each op type by label, agreeing neighbours and
   topological position, and only when there is evidence for the pair.
Ops left unpaired are what was added or removed.
"""

from __future__ import annotations

import bisect
import itertools
from collections import Counter, deque
from collections.abc import Iterable

from graphsurg.diff.features import GraphFeatures
from graphsurg.ir import Op

_WINDOW = 16  # ops sharing a label compared by position with this many neighbours on each side


class Matcher:
    def __init__(self, fa: GraphFeatures, fb: GraphFeatures, use_names: bool = True):
        self.fa, self.fb = fa, fb
        self.a_to_b: dict[Op, Op] = {}
        self.b_to_a: dict[Op, Op] = {}
        self.reasons: Counter = Counter()  # how many pairs each phase made (reported, and handy in tests)
        self.use_names = use_names
        self.strategy = "names" if use_names else "structure"
        self.names_reliable = use_names and _names_reliable(fa, fb)
        self.cost = 0

    # ---- driver ---------------------------------------------------------------------------
    def run(self) -> dict[Op, Op]:
        depth = len(next(iter(self.fa.hashes.values()), [""])) - 1
        strong = self._unique_pairs(self.fa.index.order, self.fb.index.order, depth) if depth > 0 else {}
        if self.use_names:
            self._match_names(strong)
        for a, b in strong.items():
            self._pair(a, b, "structure")
        self._propagate(list(self.a_to_b.items()))
        for level in range(depth - 1, -1, -1):
            fresh = self._unique_pairs(self._free_a(), self._free_b(), level)
            for a, b in fresh.items():
                if self._compatible(a, b):
                    self._pair(a, b, "structure")
            self._propagate(list(fresh.items()))
        for _ in range(3):
            made = self._match_similar()
            if not made:
                break
            self._propagate(made)
        return self.a_to_b

    def _pair(self, a: Op, b: Op, why: str) -> bool:
        if a in self.a_to_b or b in self.b_to_a:
            return False
        self.a_to_b[a] = b
        self.b_to_a[b] = a
        self.reasons[why] += 1
        return True

    def _free_a(self) -> list[Op]:
        return [op for op in self.fa.index.order if op not in self.a_to_b]

    def _free_b(self) -> list[Op]:
        return [op for op in self.fb.index.order if op not in self.b_to_a]

    def _compatible(self, a: Op, b: Op) -> bool:
        """Same kind of op; where names are meaningful in both models, two differently named ops
        pair only when they are alike in every other respect (otherwise one was removed and the
        other added, as a head swap does)."""
        if self.fa.kind(a) != self.fb.kind(b):
            return False
        if self.names_reliable and a.name and b.name and a.name != b.name:
            return self.fa.labels[a] == self.fb.labels[b]
        return True

    # ---- phase 1: names -------------------------------------------------------------------
    def _match_names(self, strong: dict[Op, Op]) -> None:
        strong_b = {b: a for a, b in strong.items()}
        for key in (_op_name, _first_output_name):
            names_a, names_b = _unique_by(self._free_a(), key), _unique_by(self._free_b(), key)
            for name, a in names_a.items():
                b = names_b.get(name)
                if b is None or strong.get(a, b) is not b or strong_b.get(b, a) is not a:
                    continue
                if self.fa.kind(a) == self.fb.kind(b) or _same_context(a, b):
                    self._pair(a, b, "name")

    # ---- phase 2: unique neighbourhood hashes ----------------------------------------------
    def _unique_pairs(self, ops_a: Iterable[Op], ops_b: Iterable[Op], level: int) -> dict[Op, Op]:
        by_a = _unique_by(ops_a, lambda op: self.fa.hashes[op][level])
        by_b = _unique_by(ops_b, lambda op: self.fb.hashes[op][level])
        return {a: by_b[h] for h, a in by_a.items() if h in by_b}

    # ---- phase 3: propagation along ports ---------------------------------------------------
    def _propagate(self, seeds: list[tuple[Op, Op]]) -> None:
        queue = deque(seeds)
        while queue:
            a, b = queue.popleft()
            for na, nb in [*self._producer_pairs(a, b), *self._consumer_pairs(a, b)]:
                if self._compatible(na, nb) and self._pair(na, nb, "neighbours"):
                    queue.append((na, nb))

    def _producer_pairs(self, a: Op, b: Op) -> list[tuple[Op, Op]]:
        pairs = []
        for va, vb in zip(a.inputs, b.inputs, strict=False):
            pa = self.fa.index.producer.get(va) if va is not None else None
            pb = self.fb.index.producer.get(vb) if vb is not None else None
            if pa and pb and pa[1] == pb[1] and pa[0] not in self.a_to_b and pb[0] not in self.b_to_a:
                pairs.append((pa[0], pb[0]))
        return pairs

    def _consumer_pairs(self, a: Op, b: Op) -> list[tuple[Op, Op]]:
        pairs = []
        for va, vb in zip(a.outputs, b.outputs, strict=False):
            if va is None or vb is None:
                continue
            free_a = [(op, port) for op, port in self.fa.index.consumers.get(va, []) if op not in self.a_to_b]
            free_b = [(op, port) for op, port in self.fb.index.consumers.get(vb, []) if op not in self.b_to_a]
            for key in (lambda c, f: (f.kind(c[0]), c[1]), lambda c, f: (f.labels[c[0]], c[1])):
                groups_a = _unique_by(free_a, lambda c, f=self.fa, key=key: key(c, f))
                groups_b = _unique_by(free_b, lambda c, f=self.fb, key=key: key(c, f))
                pairs += [(ca[0], groups_b[k][0]) for k, ca in groups_a.items() if k in groups_b]
        return pairs

    # ---- phase 4: similarity within each op type ---------------------------------------------
    def _match_similar(self) -> list[tuple[Op, Op]]:
        groups_a: dict[tuple, list[Op]] = {}
        groups_b: dict[tuple, list[Op]] = {}
        for op in self._free_a():
            groups_a.setdefault(self.fa.kind(op), []).append(op)
        for op in self._free_b():
            groups_b.setdefault(self.fb.kind(op), []).append(op)
        made = []
        for kind, ops_a in groups_a.items():
            ops_b = groups_b.get(kind)
            if not ops_b:
                continue
            scored = sorted(self._candidates(ops_a, ops_b), key=lambda s: (-s[0], s[1], s[2]))
            for _, ia, ib in scored:
                a, b = ops_a[ia], ops_b[ib]
                if self._compatible(a, b) and self._pair(a, b, "similarity"):
                    made.append((a, b))
        return made

    def _candidates(self, ops_a: list[Op], ops_b: list[Op]) -> Iterable[tuple[float, int, int]]:
        """Scored pairs worth considering: ops with the same label (nearest by position when many
        share it) and ops next to a pair already made. Scoring every pair would be quadratic."""
        index_b = {op: i for i, op in enumerate(ops_b)}
        by_label: dict[str, list[int]] = {}
        for ib, op in enumerate(ops_b):
            by_label.setdefault(self.fb.labels[op], []).append(ib)
        windows = {label: _PositionWindow([ops_b[i] for i in members], members, self.fb.index.position)
                   for label, members in by_label.items() if len(members) > 2 * _WINDOW}
        for ia, a in enumerate(ops_a):
            label = self.fa.labels[a]
            near = windows[label].around(self.fa.index.position[a]) if label in windows else by_label.get(label, [])
            found = set(near)
            found.update(index_b[b] for b in self._beside_pairs(a) if b in index_b)
            for ib in sorted(found):
                score = self._score(a, ops_b[ib])
                if score is not None:
                    yield score, ia, ib

    def _beside_pairs(self, a: Op) -> Iterable[Op]:
        """Ops of b that sit where `a` sits relative to pairs already made: readers of what a's
        producers' partners write, producers of what a's readers' partners read."""
        ia, ib = self.fa.index, self.fb.index
        for value in a.inputs:
            found = ia.producer.get(value) if value is not None else None
            partner = self.a_to_b.get(found[0]) if found else None
            if partner is not None:
                for out in partner.outputs:
                    yield from (user for user, _ in ib.consumers.get(out, []) if user not in self.b_to_a)
        for value in a.outputs:
            for user, _ in ia.consumers.get(value, []) if value is not None else []:
                partner = self.a_to_b.get(user)
                if partner is not None:
                    yield from (p[0] for v in partner.inputs if v is not None and (p := ib.producer.get(v))
                                and p[0] not in self.b_to_a)

    def _score(self, a: Op, b: Op) -> float | None:
        """Evidence that a and b are the same op; None when there is none beyond the op type."""
        same_label = self.fa.labels[a] == self.fb.labels[b]
        neighbours = self._agreeing_neighbours(a, b)
        if not same_label and neighbours == 0:
            return None
        distance = abs(self.fa.index.position[a] - self.fb.index.position[b])
        return 2.0 * same_label + neighbours - distance

    def _agreeing_neighbours(self, a: Op, b: Op) -> int:
        count = 0
        for va, vb in zip(a.inputs, b.inputs, strict=False):
            pa = self.fa.index.producer.get(va) if va is not None else None
            pb = self.fb.index.producer.get(vb) if vb is not None else None
            if pa and pb and self.a_to_b.get(pa[0]) is pb[0]:
                count += 1
            elif va is not None and vb is not None and va in self.fa.index.input_index \
                    and self.fa.index.input_index.get(va) == self.fb.index.input_index.get(vb):
                count += 1
        for va, vb in zip(a.outputs, b.outputs, strict=False):
            if va is None or vb is None:
                continue
            users_b = {op for op, _ in self.fb.index.consumers.get(vb, [])}
            count += sum(1 for op, _ in self.fa.index.consumers.get(va, []) if self.a_to_b.get(op) in users_b)
        return count


def match_ops(fa: GraphFeatures, fb: GraphFeatures) -> Matcher:
    """Names first; when the models share names, also a matching by structure alone, and the one
    that explains the difference with fewer edits wins (ties go to names). Names that exporters
    number in order shift on every insertion and would otherwise pair the wrong ops."""
    by_names = Matcher(fa, fb, use_names=True)
    by_names.run()
    by_names.cost = matching_cost(by_names)
    if not by_names.reasons["name"]:
        by_names.strategy = "structure"  # no name was shared: structure made every pair
    if by_names.cost == 0 or not _shares_names(fa, fb):
        return by_names
    by_structure = Matcher(fa, fb, use_names=False)
    by_structure.run()
    by_structure.cost = matching_cost(by_structure)
    return by_structure if by_structure.cost < by_names.cost else by_names


def matching_cost(matcher: Matcher) -> int:
    """How many edits a matching implies: unmatched ops, matched ops whose label differs, input ports
    whose source does not correspond, and (where names carry meaning) pairs of ops each named with a
    name the other model does not have, which read as one op replaced by another."""
    fa, fb, pairs = matcher.fa, matcher.fb, matcher.a_to_b
    cost = len(fa.index.order) + len(fb.index.order) - 2 * len(pairs)
    reliable = _names_reliable(fa, fb)
    names_a = {op.name for op in fa.index.order}
    names_b = {op.name for op in fb.index.order}
    for a, b in pairs.items():
        cost += fa.labels[a] != fb.labels[b]
        cost += sum(not _same_port_source(matcher, va, vb)
                    for va, vb in itertools.zip_longest(a.inputs, b.inputs))
        if reliable and a.name and b.name and a.name not in names_b and b.name not in names_a:
            cost += 1
    return cost


def _same_port_source(matcher: Matcher, va, vb) -> bool:
    ia, ib = matcher.fa.index, matcher.fb.index
    pa = ia.producer.get(va) if va is not None else None
    pb = ib.producer.get(vb) if vb is not None else None
    if pa is not None or pb is not None:
        return pa is not None and pb is not None and pa[1] == pb[1] and matcher.a_to_b.get(pa[0]) is pb[0]
    if va is None or vb is None:
        return va is vb
    return ia.input_index.get(va) == ib.input_index.get(vb)  # graph inputs by position; constants agree


def _shares_names(fa: GraphFeatures, fb: GraphFeatures) -> bool:
    names_a = {key for op in fa.index.order for key in (_op_name(op), _first_output_name(op)) if key}
    return any(key in names_a for op in fb.index.order for key in (_op_name(op), _first_output_name(op)) if key)


def _unique_by(items: Iterable, key) -> dict:
    """key -> item for the keys that exactly one item has."""
    found: dict = {}
    dupes: set = set()
    for item in items:
        k = key(item)
        if k is None or k in dupes:
            continue
        if k in found:
            dupes.add(k)
            del found[k]
        else:
            found[k] = item
    return found


def _op_name(op: Op) -> str | None:
    return op.name or None


def _first_output_name(op: Op) -> str | None:
    if op.name:
        return None
    first = next((v for v in op.outputs if v is not None), None)
    return first.name if first is not None else None


def _same_context(a: Op, b: Op) -> bool:
    """Two same-named ops of different types are one op whose type changed when they read or
    write values of the same names."""
    names_a = {v.name for v in (*a.inputs, *a.outputs) if v is not None}
    return any(v is not None and v.name in names_a for v in (*b.inputs, *b.outputs))


def _names_reliable(fa: GraphFeatures, fb: GraphFeatures) -> bool:
    """Names carry meaning when most named ops of the smaller model keep their names in the other."""
    names_a = {op.name for op in fa.index.order if op.name}
    names_b = {op.name for op in fb.index.order if op.name}
    smaller = min(len(names_a), len(names_b))
    return smaller > 0 and len(names_a & names_b) >= 0.5 * smaller


class _PositionWindow:
    """Members of a large label group, searchable by topological position."""

    def __init__(self, ops: list[Op], indices: list[int], position: dict[Op, float]):
        order = sorted(range(len(ops)), key=lambda k: position[ops[k]])
        self.keys = [position[ops[k]] for k in order]
        self.indices = [indices[k] for k in order]

    def around(self, where: float) -> list[int]:
        centre = bisect.bisect_left(self.keys, where)
        return self.indices[max(0, centre - _WINDOW):centre + _WINDOW]
