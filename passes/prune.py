"""prune: unstructured magnitude pruning of constant weights (zeroing, shapes unchanged)."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from graphsurg.passes._excise_weights import WeightRef, resolve_weight, write_source

from graphsurg.ir import Graph, Model, Op, dtypes
from graphsurg.pipeline import Pass, PassContext, PassResult

DEFAULT_SPARSITY = 0.5
# Where each op keeps its weight; other listed op types prune any constant input of rank >= 2.
_WEIGHT_PORTS = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (0, 1), "MatMul": (0, 1), "Gather": (0,)}


@dataclass(frozen=True)
class PruneParams:
    sparsity: float | None = None  # share of weights zeroed (0.5 when no threshold is given)
    threshold: float | None = None  # instead of a sparsity: zero every |w| < threshold
    scope: Literal["global", "layer"] = "global"  # one ranking over all weights, or one per layer
    ops: tuple[str, ...] = ("Conv", "Gemm", "MatMul")
    exclude: tuple[str, ...] = ()  # op, output or weight names (shell patterns) left dense

    def __post_init__(self) -> None:
        if self.sparsity is not None and self.threshold is not None:
            raise ValueError("give sparsity or threshold, not both")
        if self.sparsity is not None and not 0.0 <= self.sparsity <= 1.0:
            raise ValueError("sparsity must be in [0, 1]")
        if self.threshold is not None and self.threshold < 0:
            raise ValueError("threshold must be >= 0")


@dataclass
class _Weight:
    """One weight tensor to prune (a source shared by several eligible ops appears once)."""

    refs: list[WeightRef]
    array: np.ndarray = field(repr=False)

    @property
    def name(self) -> str:
        return self.refs[0].name

    @property
    def ops(self) -> list[str]:
        return [ref.op.label for ref in self.refs]


class Prune(Pass):
    """Zeros the smallest-magnitude weights; shapes stay, recovery keeps the zeros (masks).

    The model compresses better and sparse kernels can skip the zeros; dense kernels do not get
    faster (that is what `excise` is for).

    Handles: weights of the listed op types (Conv and ConvTranspose input 1, Gemm/MatMul constant
    operands of rank >= 2, Gather tables, any constant input of rank >= 2 for other types) held in
    initializers or Constant ops, also behind Transpose/Reshape/Cast chains (magnitudes do not
    depend on layout, so the source is pruned); a weight read by several listed ops is pruned once.
    `sparsity` (exact count per scope: round(s * n)) or `threshold` (|w| < T); `scope=global`
    ranks all weights together, `layer` each on its own. Records per-layer achieved sparsity and
    a boolean mask per weight (True = kept) as `mask/<weight>`.
    Refuses, with the reason recorded: excluded layers, weights computed at run time, non-float
    weights, weights that other (unlisted or excluded) ops also read.
    """

    name = "prune"
    Params = PruneParams

    def run(self, model: Model, ctx: PassContext, result: PassResult) -> None:
        p = self.params
        weights = self._weights(model.graph, result)
        if not weights:
            result.summary = f"found no constant weights of {', '.join(p.ops)} to prune"
            result.refuse("model", result.summary)
            return
        masks = self._masks(weights)
        layers, zeros, total = {}, 0, 0
        for weight, mask in zip(weights, masks, strict=True):
            layers[weight.name] = self._apply(model.graph, weight, mask, result)
            zeros, total = zeros + int(mask.size - mask.sum()), total + mask.size
        result.modified = True
        achieved = zeros / total
        result.changes = {"layers": layers, "sparsity": achieved, "zeros": zeros, "weights": total,
                          "scope": p.scope, "target": self._target_text()}
        result.summary = (f"zeroed {zeros} of {total} weights in {len(weights)} layers "
                          f"(sparsity {achieved:.4f}, {self._target_text()})")

    def _target_text(self) -> str:
        p = self.params
        return f"|w| < {p.threshold}" if p.threshold is not None else f"target {self._sparsity()} ({p.scope})"

    def _sparsity(self) -> float:
        return DEFAULT_SPARSITY if self.params.sparsity is None else self.params.sparsity

    # ---- which weights ---------------------------------------------------------------------
    def _weights(self, graph: Graph, result: PassResult) -> list[_Weight]:
        by_source: dict[int, list[WeightRef]] = {}
        for op in graph.topological_order():
            if op.op_type not in self.params.ops or op.domain not in ("", "ai.onnx"):
                continue
            for ref in self._op_weights(graph, op, result):
                by_source.setdefault(id(ref.source), []).append(ref)
        weights = []
        for refs in by_source.values():
            reason = self._blocker(graph, refs)
            if reason:
                result.refuse(refs[0].name, reason)
                continue
            weights.append(_Weight(refs, refs[0].source_array()))
        return weights

    def _op_weights(self, graph: Graph, op: Op, result: PassResult) -> list[WeightRef]:
        ports = _WEIGHT_PORTS.get(op.op_type, tuple(range(len(op.inputs))))
        found = []
        for port in ports:
            ref = resolve_weight(graph, op, port)
            if ref is None:
                if op.op_type in ("Conv", "ConvTranspose") and port < len(op.inputs):
                    result.refuse(op.label, "its weight is computed at run time, not a constant")
                continue
            if ref.source_array().ndim < 2 and op.op_type not in ("Conv", "ConvTranspose"):
                continue  # a bias or a scalar, not a weight matrix
            if self._excluded(op, ref):
                result.refuse(op.label, "excluded")
                continue
            found.append(ref)
        return found

    def _excluded(self, op: Op, ref: WeightRef) -> bool:
        names = [n for n in (op.name, op.label, ref.name, *(v.name for v in op.outputs if v is not None)) if n]
        return any(fnmatch.fnmatchcase(n, pattern) for n in names for pattern in self.params.exclude)

    @staticmethod
    def _blocker(graph: Graph, refs: list[WeightRef]) -> str | None:
        source, array = refs[0].source, refs[0].source_array()
        # bfloat16 and float8 arrive as integer views: their magnitudes are not the stored numbers.
        if array.dtype.kind != "f" or (source.dtype is not None and source.dtype not in dtypes.FLOAT_CODES):
            return f"not a floating-point tensor ({dtypes.name_of(source.dtype) if source.dtype else array.dtype})"
        readers = {op for op, _ in graph.consumers(source)}
        ours = {ref.chain[0] if ref.chain else ref.op for ref in refs}
        chains_private = all(len(graph.consumers(op.outputs[0])) == 1 for ref in refs for op in ref.chain)
        if readers != ours or not chains_private or source in graph.outputs:
            return "other ops read it too (pruning it would change them as well)"
        return None

    # ---- masks ----------------------------------------------------------------------------------
    def _masks(self, weights: list[_Weight]) -> list[np.ndarray]:
        """Boolean keep-masks, one per weight, shaped like its source."""
        magnitudes = [np.abs(w.array.astype(np.float64, copy=False)) for w in weights]
        if self.params.threshold is not None:
            return [m >= self.params.threshold for m in magnitudes]
        if self.params.scope == "layer":
            return [_keep_largest(m, self._sparsity()) for m in magnitudes]
        flat = _keep_largest(np.concatenate([m.reshape(-1) for m in magnitudes]), self._sparsity())
        bounds = np.cumsum([0, *(m.size for m in magnitudes)])
        return [flat[bounds[i]:bounds[i + 1]].reshape(m.shape) for i, m in enumerate(magnitudes)]

    def _apply(self, graph: Graph, weight: _Weight, mask: np.ndarray, result: PassResult) -> dict:
        pruned = np.where(mask, weight.array, np.zeros((), dtype=weight.array.dtype))
        write_source(graph, weight.refs[0], pruned)
        result.arrays[f"mask/{weight.name}"] = mask
        if weight.refs[0].is_initializer:
            result.touch(weight.name)
        return {"ops": weight.ops, "size": int(mask.size), "sparsity": float(1.0 - mask.mean())}


def _keep_largest(magnitudes: np.ndarray, sparsity: float) -> np.ndarray:
    """Keeps all but the round(sparsity * n) smallest entries (ties broken by position)."""
    count = math.floor(sparsity * magnitudes.size + 0.5)
    keep = np.ones(magnitudes.shape, dtype=bool)
    if count <= 0:
        return keep
    flat = magnitudes.reshape(-1)
    drop = np.argpartition(flat, count - 1, kind="introselect")[:count] if count < flat.size else np.arange(flat.size)
    keep.reshape(-1)[drop] = False
    return keep
