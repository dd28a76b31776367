"""quantize: int8 QDQ quantization with calibration, per-channel weights and accuracy-aware fallback."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any, Literal

from graphsurg.passes._quant_calib import activation_qparams, activation_range
from graphsurg.passes._quant_fallback import Fallback, search
from graphsurg.passes._quant_insert import QDQWriter, QuantSettings, write_target
from graphsurg.passes._quant_plan import Plan, make_plan
from graphsurg.passes._quant_prep import ensure_opset, fold_batchnorms, matmuls_to_gemm, normalize_gemm
from graphsurg.passes._quant_smooth import smooth_plan

from graphsurg import serde
from graphsurg.errors import UsageError
from graphsurg.ir import Model
from graphsurg.pipeline import Pass, PassContext, PassResult

DEGRADATION_METRICS = ("agreement", "accuracy", "cosine", "kl", "sqnr_db")


@dataclass(frozen=True)
class QuantizeParams:
    activations: Literal["uint8", "int8", "none"] = "uint8"
    weights: Literal["int8"] = "int8"
    per_channel: bool = True
    symmetric_weights: bool = True
    calibration: Literal["minmax", "percentile", "entropy", "mse"] = "percentile"
    percentile: float = 99.99
    weight_clipping: Literal["none", "mse"] = "none"
    ops: tuple[str, ...] = ("Conv", "MatMul", "Gemm", "Gather", "LayerNormalization")
    exclude: tuple[str, ...] = ()
    act_matmul: bool = False
    smooth: float = 0.0
    max_samples: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError("percentile must be in (0, 100]")
        if not 0.0 <= self.smooth <= 1.0:
            raise ValueError("smooth (SmoothQuant's alpha) must be in [0, 1]; 0 turns it off")
        if self.max_samples < 0:
            raise ValueError("max_samples must be >= 0 (0: all of --data)")


class Quantize(Pass):
    """Inserts QuantizeLinear/DequantizeLinear in the layout onnxruntime fuses into integer kernels.

    Handles: Conv (-> QLinearConv: uint8 activations, int8 per-channel weights, int32 bias, a Q
    after the Conv or after its ReLU), Gemm (-> QGemm, int32 bias), MatMul with a constant weight
    (-> MatMulIntegerToFloat), Gather on an embedding table (int8 table, weights only), the input
    of a LayerNormalization after a residual Add (keeps onnxruntime from fusing them into its slow
    SkipLayerNormalization), and with act_matmul=true activation x activation MatMul. One Q/DQ
    pair per tensor shared by its quantized consumers; float consumers keep the float tensor.
    BatchNormalization after a Conv is folded first; the opset is raised to 13 when that is safe
    and per-channel scales need it.
    Calibration (activations=uint8|int8) runs the model once over --data: minmax, percentile,
    entropy (KL) or mse (golden-section clipping search); activations=none needs no data. Weights
    use their per-channel min/max unless weight_clipping=mse (golden-section search per channel on
    the exact weights; it lowers weight MSE but can hurt transformers, whose large weights matter).
    `smooth=ALPHA` applies SmoothQuant before calibration. With --max-degradation, ops are ranked by
    leave-one-out sensitivity and the fewest go back to float (binary search) until the budget holds.
    Refuses, with the reason recorded: ops of other types or domains, weights that are not float32
    initializers, activation x activation MatMul unless asked, ops inside subgraphs, excluded ops.
    Records for every weight the check max|W_q - W| <= scale/2.
    """

    name = "quantize"
    Params = QuantizeParams

    def run(self, model: Model, ctx: PassContext, result: PassResult) -> None:
        p = self.params
        weights_only = p.activations == "none"
        if not weights_only:
            ctx.require("activation_stats", "quantize with activations=" + p.activations)
        per_channel, opset_note = ensure_opset(model, p.per_channel)
        if model.opset < 10:
            result.refuse("model", opset_note)
            result.summary = "nothing quantized: " + opset_note
            return
        serde.infer_shapes(model)
        folded = fold_batchnorms(model.graph) if "Conv" in p.ops else []
        plan, as_gemm = self._plan(model, per_channel, weights_only)
        changes: dict[str, Any] = {"batchnorms_folded": folded, "matmul_add_as_gemm": as_gemm,
                                   "per_channel": per_channel}
        if opset_note:
            changes["opset"] = opset_note
        if p.smooth > 0 and not weights_only:
            changes["smoothquant"] = smooth_plan(model, plan, ctx, p.smooth, self._stat_options())
        qparams = {} if weights_only else self._calibrate(model, plan, ctx)
        fallback = self._fallback(model, plan, qparams, ctx)
        float_keys = set(fallback.float_keys) if fallback else set()
        writer = self._write(model, plan, qparams, float_keys)
        self._record(result, plan, writer, fallback, changes)
        # the function-preserving preparation changes the model even when nothing gets quantized
        prepared = folded or as_gemm or "raised" in (opset_note or "") or changes.get("smoothquant", {}).get("smoothed")
        result.modified = bool(writer.log.quantized_ops or prepared)

    # ---- steps --------------------------------------------------------------------------------
    def _plan(self, model: Model, per_channel: bool, weights_only: bool) -> tuple[Plan, list[str]]:
        p = self.params
        as_gemm = matmuls_to_gemm(model.graph) if {"MatMul", "Gemm"} <= set(p.ops) else []
        if "Gemm" in p.ops:
            for op in model.graph.ops:
                if op.op_type == "Gemm" and op.domain in ("", "ai.onnx"):
                    normalize_gemm(model.graph, op)
        return make_plan(model.graph, p.ops, p.exclude, per_channel, weights_only, p.act_matmul), as_gemm

    def _stat_options(self) -> dict[str, Any]:
        return {"max_samples": self.params.max_samples} if self.params.max_samples else {}

    def _calibrate(self, model: Model, plan: Plan, ctx: PassContext) -> dict[str, tuple]:
        """One pass over the data for every tensor the plan quantizes; scales and zero points."""
        p = self.params
        names = plan.calibration_names(model.graph)
        if not names:
            return {}
        stats = ctx.activation_stats(model, names, "quantize calibration", histogram=p.calibration != "minmax",
                                     **self._stat_options())
        qparams = {}
        for name in names:
            lo, hi = activation_range(stats[name], p.calibration, p.percentile)
            qparams[name] = activation_qparams(lo, hi, p.activations)
        return qparams

    def _settings(self) -> QuantSettings:
        p = self.params
        return QuantSettings(None if p.activations == "none" else p.activations, p.symmetric_weights,
                             p.weight_clipping == "mse")

    def _write(self, model: Model, plan: Plan, qparams: dict, float_keys: set[str]) -> QDQWriter:
        writer = QDQWriter(model.graph, self._settings(), qparams)
        for target in plan.targets:
            if target.key not in float_keys:
                write_target(writer, target)
        writer.drop_unused_float_weights()
        return writer

    def _fallback(self, model: Model, plan: Plan, qparams: dict, ctx: PassContext) -> Fallback | None:
        budget = getattr(ctx, "max_degradation", None)
        if budget is None or not plan.targets:
            return None
        metric = getattr(ctx, "metric", None) or "agreement"
        if metric not in DEGRADATION_METRICS:
            raise UsageError(f"--metric {metric!r}: quantize measures {', '.join(DEGRADATION_METRICS)}")
        ctx.require("evaluate", "the quantize fallback (--max-degradation)")
        snapshot = serde.to_bytes(model)
        degradation = Degradation(ctx, serde.load(snapshot), metric)

        def measure(float_keys: frozenset[str]) -> float:
            candidate = serde.load(snapshot)
            self._write(candidate, plan, qparams, set(float_keys))
            value = degradation(candidate)
            del candidate
            gc.collect()  # the IR is full of reference cycles: free each candidate's weights now
            return value

        return search([t.key for t in plan.targets], measure, float(budget))

    # ---- record ---------------------------------------------------------------------------------
    def _record(self, result: PassResult, plan: Plan, writer: QDQWriter, fallback: Fallback | None,
                changes: dict[str, Any]) -> None:
        for label, reason in plan.refused:
            result.refuse(label, reason)
        labels = {t.key: t.label for t in plan.targets}
        if fallback:
            for key in fallback.float_keys:
                result.refuse(labels[key], f"kept in float by the fallback (degradation budget; "
                                           f"sensitivity rank {_rank_of(fallback, key)})")
        bounds = writer.log.weights
        changes.update({
            "quantized_ops": writer.log.quantized_ops,
            "activations": writer.log.activations,
            "weights": bounds,
            "int32_biases": writer.log.int32_biases,
            "float_weights_removed": writer.dropped,
            "error_bound_holds": all(w["holds"] for w in bounds.values()),
        })
        if fallback:
            changes["fallback"] = fallback.to_json(labels)
            changes["budget_met"] = fallback.budget_met
        result.changes = changes
        result.touch(*(w["int8"] for w in bounds.values()))
        result.summary = _summary(writer, plan, fallback)


def _rank_of(fallback: Fallback, key: str) -> int:
    return next(i + 1 for i, entry in enumerate(fallback.ranking) if entry["op"] == key)


def _summary(writer: QDQWriter, plan: Plan, fallback: Fallback | None) -> str:
    text = (f"quantized {len(writer.log.quantized_ops)} ops ({len(writer.log.weights)} int8 weights, "
            f"{len(writer.log.activations)} activation Q/DQ pairs); {len(plan.refused)} refused (reasons listed)")
    if fallback:
        state = "met" if fallback.budget_met else "MISSED"
        text += (f"; fallback kept {len(fallback.float_keys)} ops in float, degradation "
                 f"{fallback.degradation:.4g} (budget {state})")
    return text


class Degradation:
    """How much worse a candidate is than the reference on ctx's data, in one metric (0: identical).

    agreement and cosine: 1 - value; accuracy: reference accuracy - candidate accuracy; kl: the
    divergence itself; sqnr_db: -SQNR (a budget of -30 asks for at least 30 dB). Measured by the
    evaluation service (`ctx.evaluate(model, why, ref=...)`, onnxruntime over --data).
    """

    def __init__(self, ctx: PassContext, reference: Model, metric: str):
        self.ctx, self.reference, self.metric = ctx, reference, metric
        self._reference_accuracy: float | None = None

    def __call__(self, candidate: Model) -> float:
        why = "the quantize fallback (--max-degradation)"
        metrics = self.ctx.evaluate(candidate, why, ref=self.reference)["metrics"]
        if self.metric == "sqnr_db" and metrics.get("sqnr_infinite"):
            return -float("inf")
        value = _required(metrics, self.metric)
        if self.metric in ("agreement", "cosine"):
            return 1.0 - value
        if self.metric == "accuracy":
            return self.reference_accuracy() - value
        return -value if self.metric == "sqnr_db" else value

    def reference_accuracy(self) -> float:
        if self._reference_accuracy is None:
            metrics = self.ctx.evaluate(self.reference, "the quantize fallback (reference accuracy)")["metrics"]
            self._reference_accuracy = _required(metrics, "accuracy")
        return self._reference_accuracy


def _required(metrics: dict[str, Any], metric: str) -> float:
    value = metrics.get(metric)
    if value is None:
        hint = " (give labels with --labels)" if metric == "accuracy" else ""
        raise UsageError(f"--metric {metric} does not apply to this model's outputs and data{hint}")
    return float(value)
