"""Accuracy-aware fallback: which quantized ops go back to float so a degradation budget holds.

Ranking: leave-one-out. Starting from the fully quantized model, each op in turn is put back in
float alone and the degradation is measured with onnxruntime; an op's sensitivity is how much
the degradation drops. This measures each op at the operating point the search explores (every
other op quantized, so error that only hurts on top of upstream noise counts), which quantizing
one op at a time into a float model would miss; both cost n evaluations.

Search: ops sorted by sensitivity, the answer is the shortest prefix of that ranking whose float
fallback meets the budget. Degradation is taken as non-increasing along the prefix length, so a
binary search finds it with ceil(log2(n + 1)) + 1 evaluations after the ranking. Every measured
setting is kept; when none meets the budget the best one is returned with `budget_met` False.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Measure = Callable[[frozenset[str]], float]


@dataclass
class Fallback:
    float_keys: list[str]
    degradation: float
    budget_met: bool
    ranking: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    search_evaluations: int = 0

    def to_json(self, labels: dict[str, str] | None = None) -> dict[str, Any]:
        """The record, with op keys shown as `labels` (the names users know) where given."""
        name = (labels or {}).get
        return {"float_ops": [name(k, k) for k in self.float_keys], "degradation": self.degradation,
                "budget_met": self.budget_met,
                "ranking": [{**entry, "op": name(entry["op"], entry["op"])} for entry in self.ranking],
                "evaluations": [{**e, "float_ops": sorted(name(k, k) for k in e["float_ops"])}
                                for e in self.evaluations],
                "evaluations_after_ranking": self.search_evaluations}


class _Memo:
    """Measures each setting once and remembers every result (the record lists them)."""

    def __init__(self, measure: Measure):
        self.measure = measure
        self.seen: dict[frozenset[str], float] = {}
        self.order: list[frozenset[str]] = []

    def __call__(self, float_keys: frozenset[str]) -> float:
        if float_keys not in self.seen:
            self.seen[float_keys] = float(self.measure(float_keys))
            self.order.append(float_keys)
        return self.seen[float_keys]

    def best(self) -> tuple[frozenset[str], float]:
        return min(self.seen.items(), key=lambda kv: (kv[1], len(kv[0])))


def rank(keys: Sequence[str], memo: _Memo) -> list[tuple[str, float]]:
    """(key, sensitivity) with the most sensitive op first; ties keep graph order."""
    base = memo(frozenset())
    gains = [(k, base - memo(frozenset([k]))) for k in keys]
    position = {k: i for i, k in enumerate(keys)}
    return sorted(gains, key=lambda kg: (-kg[1], position[kg[0]]))


def search(keys: Sequence[str], measure: Measure, budget: float) -> Fallback:
    """The fewest ops of the sensitivity ranking to keep in float so that degradation <= budget."""
    memo = _Memo(measure)
    base = memo(frozenset())
    if base <= budget:
        return Fallback([], base, True, evaluations=_evaluations(memo))
    ranking = rank(keys, memo)
    order = [k for k, _ in ranking]
    ranked = [{"op": k, "sensitivity": g} for k, g in ranking]
    before = len(memo.seen)

    def prefix(n: int) -> frozenset[str]:
        return frozenset(order[:n])

    lo, hi = 0, len(order)  # the prefix of length lo misses the budget
    if memo(prefix(hi)) > budget:
        best, value = memo.best()
        chosen = [k for k in order if k in best]
        return Fallback(chosen, value, False, ranked, _evaluations(memo), len(memo.seen) - before)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if memo(prefix(mid)) <= budget:
            hi = mid
        else:
            lo = mid
    return Fallback(order[:hi], memo(prefix(hi)), True, ranked, _evaluations(memo), len(memo.seen) - before)


def _evaluations(memo: _Memo) -> list[dict[str, Any]]:
    return [{"float_ops": sorted(keys), "degradation": memo.seen[keys]} for keys in memo.order]
