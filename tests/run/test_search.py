"""Minimal surgery search: bisection finds the largest feasible amount in O(log 1/eps) calls."""

from __future__ import annotations

import math

import pytest

from graphsurg.surgery import bisect_largest


@pytest.mark.parametrize("threshold", [0.0, 0.13, 0.5, 0.77, 0.95])
def test_bisection_lands_within_tolerance_below_the_threshold(threshold: float) -> None:
    calls: list[float] = []

    def feasible(x: float) -> bool:
        calls.append(x)
        return x <= threshold

    found = bisect_largest(feasible, 0.0, 0.95, 0.01)
    assert found <= threshold + 1e-12
    assert threshold - found <= 0.01 + 1e-12
    assert len(calls) <= 1 + math.ceil(math.log2(0.95 / 0.01))
