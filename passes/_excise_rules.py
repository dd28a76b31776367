"""How channel labels cross each op (see `_depgraph.py` for the model): the rule registry.

One rule per op family, in `_excise_rules_ops` (shape-neutral, elementwise, normalizations,
reductions, pooling), `_excise_rules_layers` (Conv, ConvTranspose, Gemm, MatMul, Gather: the
layers whose channels get labels) and `_excise_rules_layout` (Transpose, Reshape, Concat, Split,
Slice). A rule reads the labels on its op's inputs and either passes them on (with the axis
mapping the op implies), couples them (`DepGraph.align`), registers the constants and attributes
that must shrink with them, or fixes them with a reason. Ops without a rule fix every label
they receive.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from graphsurg.ir import Op

Rule = Callable[..., None]
RULES: dict[str, Rule] = {}
FOLD_AWARE: set[str] = set()  # ops whose rule also moves folds (see `_excise_folds`); the others fix them
_FAMILIES = ("_excise_rules_ops", "_excise_rules_layers", "_excise_rules_layout")


def load_rules() -> dict[str, Rule]:
    """The registry, with every family module imported (each registers its rules on import)."""
    for family in _FAMILIES:
        importlib.import_module(f"graphsurg.passes.{family}")
    return RULES


def rule(*names: str, folds: bool = False) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for name in names:
            RULES[name] = fn
            if folds:
                FOLD_AWARE.add(name)
        return fn
    return register


def generic_rule(dep, op: Op) -> None:
    if any(dep.get(v) for v in op.inputs):
        dep.fix_inputs(op, f"they flow into {op.op_type} {op.label}, which the pass cannot shrink")


def axis_attr(op: Op, name: str, default: int, rank: int | None) -> int | None:
    """An axis attribute made non-negative (None when it cannot be, or the rank is unknown)."""
    axis = int(op.attr(name, default))
    if rank is None:
        return axis if axis >= 0 else None
    return axis % rank if -rank <= axis < rank else None


def extra_outputs_used(dep, op: Op) -> bool:
    return any(v is not None and dep.graph.is_used(v) for v in op.outputs[1:])
