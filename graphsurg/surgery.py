"""The orchestrator behind `graphsurg run`: passes -> measure -> recover -> measure -> certificate.

Top of the house (beside cli.py): it wires the evaluator (onnxruntime) and the training backend
(torch) into the pass context and into the stages of a recipe.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphsurg import certificate as cert
from graphsurg import magnitude, serde
from graphsurg.errors import BadInputError, PassError
from graphsurg.fsutil import write_text
from graphsurg.ir import Model, dtypes
from graphsurg.pipeline import ChangeRecord, PassSpec, make_pass, run_passes
from graphsurg.recipe import SEARCHABLE, Recipe, RecoverySection, Step, searched_parameter
from graphsurg.services import DataSpec, build_context

log = logging.getLogger(__name__)

__all__ = ["SEARCHABLE", "Surgery", "bisect_largest", "run_recipe"]


class Stages:
    """Progress lines on stderr, each stamped with the seconds since the start ("[  6.4s] recover ..."),
    unless quiet."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.started = time.perf_counter()

    def say(self, text: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.started:6.1f}s] {text}", file=sys.stderr, flush=True)


@dataclass
class Surgery:
    """State of one recipe run; `run()` fills `certificate`."""

    recipe: Recipe
    outdir: Path
    stages: Stages
    record: ChangeRecord = field(default_factory=ChangeRecord)
    searches: list[dict[str, Any]] = field(default_factory=list)
    recovery_records: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    original_metrics: dict[str, Any] = field(default_factory=dict)
    pass_reports: list[dict[str, Any]] = field(default_factory=list)
    total_sq_norm: float = 0.0

    def run(self) -> dict[str, Any]:
        """Runs the recipe end to end and returns the certificate (also written to disk)."""
        recipe, say = self.recipe, self.stages.say
        say(f"load {recipe.model.name}")
        original = serde.load(recipe.model)
        model = serde.load(recipe.model)
        say("measure the original")
        self.original_metrics = self.timed("measure_original", self.evaluate, original, original, latency=True)
        before = magnitude.effective_params(model)
        self.total_sq_norm = magnitude.total_sq_norm(before)
        for index, step in enumerate(recipe.steps):
            self.timed(f"step {index} {step.spec.name}", self.run_step, model, original, step, index)
        say("measure the edited model")
        immediate = self.timed("measure_immediate", self.evaluate, model, original)
        edited = magnitude.effective_params(model)
        recovered = None
        if recipe.recovery.enabled:
            self.timed("recover", self.recover, model, original, "final", settings=recipe.final_recovery)
            say("measure the recovered model")
            recovered = self.timed("measure_recovered", self.evaluate, model, original, latency=True)
        final = recovered or immediate
        if recovered is None:
            final = self.timed("measure_final_latency", self.evaluate, model, original, latency=True)
        return self.finish(original, model, before, edited, immediate, recovered, final)

    def timed(self, name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            # a stage that runs more than once (recovery after each round) keeps its total
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 3)

    # ---- measurement ---------------------------------------------------------------------
    def evaluate(self, model: Model, original: Model, latency: bool = False) -> dict[str, Any]:
        from graphsurg.eval import evaluate

        data = self.recipe.data
        result = evaluate(model, str(data.evaluation), ref=original, labels=data.labels,
                          batch_size=data.batch_size, latency_runs=20 if latency else 0)
        metrics = dict(result["metrics"])
        metrics["latency_ms"] = result.get("latency_ms")
        metrics["size_bytes"] = result.get("size_bytes")
        metrics["samples"] = result.get("samples")
        return metrics

    def check_session(self, model: Model, pass_name: str) -> None:
        """An onnxruntime session must build from the edited model."""
        from graphsurg.eval import Runner

        try:
            Runner(model)
        except BadInputError as exc:
            raise PassError(f"pass {pass_name!r} produced a model onnxruntime cannot load: {exc}") from None

    # ---- passes --------------------------------------------------------------------------
    def context(self):
        data = self.recipe.data
        source = data.calibration or data.train or data.evaluation
        spec = DataSpec(str(source), data.labels or "labels", data.batch_size) if source else None
        return build_context(spec, seed=self.recipe.seed, max_degradation=self.recipe.budget.max_degradation,
                             metric=self.recipe.budget.metric)

    def apply(self, model: Model, original: Model, spec: PassSpec) -> None:
        """One pass, validated (checker, IR, an onnxruntime session), with its own magnitude and the
        metrics right after it, so the certificate shows what each surgery cost."""
        snapshot = magnitude.effective_params(model)
        result = run_passes(model, [make_pass(spec)], self.context())
        self.check_session(model, spec.name)
        self.record.results.extend(result.results)
        change = magnitude.compare(snapshot, magnitude.effective_params(model))
        after = self.evaluate(model, original)
        for key in ("latency_ms", "size_bytes"):
            after.pop(key, None)
        self.pass_reports.append({"magnitude": magnitude.summarize(change, self.total_sq_norm)["relative"],
                                  "metrics_after": after})
        for res in result.results:
            self.stages.say(f"  {res.pass_name}: {res.summary or ('changed' if res.modified else 'no change')}")
            # what was left alone and why, as `apply` prints it; the certificate keeps the full list
            for refusal in res.refused[:5]:
                self.stages.say(f"    left {refusal['target']}: {refusal['reason']}")
            if len(res.refused) > 5:
                self.stages.say(f"    ... {len(res.refused) - 5} more in the certificate (passes[].refused)")

    def run_step(self, model: Model, original: Model, step: Step, index: int = 0) -> Model:
        spec = step.spec
        key = searched_parameter(spec)
        if key is not None:
            spec = self.search(model, original, step, key)
        for round_index in range(step.repeat):
            round_spec = _scheduled(spec, round_index, step.repeat)
            self.stages.say(f"pass {round_spec}" + (f" (round {round_index + 1}/{step.repeat})"
                                                    if step.repeat > 1 else ""))
            self.apply(model, original, round_spec)
            self.pass_reports[-1].update({"step": index, "round": round_index + 1, "rounds": step.repeat,
                                          "rewound": step.rewind})
            if step.rewind:
                _rewind(model, original)
            if step.recover:
                label = f"after {spec.name}" + (f" round {round_index + 1}" if step.repeat > 1 else "")
                self.recover(model, original, label=label)
                recovered = self.evaluate(model, original)
                self.pass_reports[-1]["metrics_after_recovery"] = {
                    k: v for k, v in recovered.items() if k not in ("latency_ms", "size_bytes")}
        return model

    # ---- minimal surgery search ----------------------------------------------------------
    def search(self, model: Model, original: Model, step: Step, key: str) -> PassSpec:
        """Largest value of `key` whose degradation stays within budget, by bisection.

        Each candidate is the step's pass alone on the model as it is now, recovered first when the
        step or the recipe recovers, and measured like the final model; later steps are not run."""
        budget, tolerance = self.recipe.budget, self.recipe.budget.tolerance
        evaluations: list[dict[str, Any]] = []
        recovers = step.recover or self.recipe.recovery.enabled

        def feasible(value: float) -> bool:
            trial = clone(model)
            spec = _with_param(step.spec, key, value)
            trial_record = run_passes(trial, [make_pass(spec)], self.context())
            if recovers:
                self.recover(trial, original, label=f"search {key}={value:.4f}", keep_record=False,
                             extra=trial_record.results)
            metrics = self.evaluate(trial, original)
            worse = cert.degradation(budget.metric, self._reference(budget.metric), metrics.get(budget.metric))
            ok = worse is not None and worse <= budget.max_degradation
            evaluations.append({key: round(value, 6), "degradation": worse, "within": ok})
            self.stages.say(f"  search {key}={value:.4f}: degradation {worse} -> {'ok' if ok else 'over'}")
            return ok

        best = bisect_largest(feasible, 0.0, SEARCHABLE[key], tolerance)
        self.searches.append({"pass": step.spec.name, "parameter": key, "value": best, "tolerance": tolerance,
                              "evaluations": evaluations})
        return _with_param(step.spec, key, best)

    def _reference(self, metric: str) -> float | None:
        return cert._reference_value(metric, self.original_metrics)

    # ---- recovery ------------------------------------------------------------------------
    def recover(self, model: Model, original: Model, label: str, keep_record: bool = True,
                extra: list | None = None, settings: RecoverySection | None = None) -> dict | None:
        """Recovery through the training backend; `extra`: pass results not (yet) in the record (a
        search candidate's), whose masks and touched weights recovery must see too; `settings`:
        [recovery] unless given (the final recovery's)."""
        from graphsurg.train.data import load_arrays
        from graphsurg.train.masks import ChangeInfo
        from graphsurg.train.recover import RecoverOptions, recover

        rec, data = settings or self.recipe.recovery, self.recipe.data
        self.stages.say(f"recover ({label})")
        use_labels = bool(rec.use_labels and data.labels)
        arrays = load_arrays(str(data.train), model, data.labels or "labels")
        options = RecoverOptions(
            epochs=rec.epochs if rec.steps is None else None, steps=rec.steps, lr=rec.lr, batch_size=rec.batch_size,
            train=rec.train, temperature=rec.temperature, alpha=rec.alpha if use_labels else 0.0,
            val_split=rec.val_split, seed=self.recipe.seed, use_labels=use_labels, progress=not self.stages.quiet,
        )
        record = recover(model, arrays, teacher=original, options=options,
                         changes=self.change_info(ChangeInfo, extra or []))
        if keep_record:
            self.recovery_records.append({"label": label, **record})
        return record

    def change_info(self, cls, extra: list):
        """The change record so far, in the form recovery reads (touched, new parameters, masks)."""
        info = cls(source="graphsurg run")
        for result in [*self.record.results, *extra]:
            info.touched += [n for n in result.touched if n not in info.touched]
            info.new_parameters += [n for n in result.new_parameters if n not in info.new_parameters]
            for key, array in result.arrays.items():
                if key.startswith("mask/"):
                    name = key[len("mask/"):]
                    kept = array != 0
                    info.masks[name] = kept & info.masks[name] if name in info.masks else kept
        return info

    def finish(self, original: Model, model: Model, before, edited, immediate, recovered, final) -> dict:
        recipe = self.recipe
        total = self.total_sq_norm
        verdict = cert.budget_verdict(recipe.budget.metric, recipe.budget.max_degradation,
                                      self.original_metrics, final)
        # everything that can still fail runs before the first write, so a failure leaves no model
        # without its certificate
        bound = self.bound_check(original, before, edited, immediate)
        out_path = self.write_model(model, verdict["within"])
        latency = {"before": self.original_metrics.pop("latency_ms", None), "after": final.pop("latency_ms", None)}
        for metrics in (immediate, recovered or {}):
            metrics.pop("latency_ms", None)
        document = {
            "schema": cert.SCHEMA_VERSION,
            "status": "within_budget" if verdict["within"] else "over_budget",
            "recipe": str(recipe.path.name),
            "seed": recipe.seed,
            "input": {"model": recipe.model.name, "sha256": cert.sha256(recipe.model)},
            "output": {"model": out_path.name, "sha256": cert.sha256(out_path)},
            "passes": [dict(r.to_json(), **report)
                       for r, report in zip(self.record.results, self.pass_reports, strict=True)],
            "searches": self.searches,
            "magnitude": {**magnitude.summarize(magnitude.compare(before, edited), total),
                          "final": magnitude.summarize(magnitude.compare(before, magnitude.effective_params(model)),
                                                       total)["relative"],
                          "per_pass": [report["magnitude"] for report in self.pass_reports]},
            "metrics": {"original": self.original_metrics, "immediate": immediate, "recovered": recovered},
            "delta_loss": {"immediate": _delta(immediate, self.original_metrics, "loss"),
                           "recovered": _delta(recovered, self.original_metrics, "loss") if recovered else None},
            "recovery": self.recovery_summary(),
            "bound": bound,
            "budget": verdict,
            "model": {"parameters_before": original.parameter_count(), "parameters_after": model.parameter_count(),
                      "size_before": self.original_metrics.pop("size_bytes", None),
                      "size_after": final.pop("size_bytes", None)},
            "latency_ms": latency,
            "versions": cert.versions(),
            "timings": self.timings,
        }
        for metrics in (immediate, recovered or {}):
            metrics.pop("size_bytes", None)
        self.stages.say(f"write {self.outdir / recipe.output.certificate}")
        write_text(self.outdir / recipe.output.certificate, json.dumps(document, indent=2, sort_keys=True) + "\n")
        return document

    def write_model(self, model: Model, within: bool) -> Path:
        shipped = self.recipe.output.model
        marked = over_budget_name(shipped)
        name, stale = (shipped, marked) if within else (marked, shipped)
        if not within:
            # the best model is still written, but never under the name a build would ship
            model.metadata_props["graphsurg.status"] = "over-budget"
        path = self.outdir / name
        self.stages.say(f"write {path}")
        serde.save(model, path)
        # a model left by an earlier run under the other name would contradict this certificate
        (self.outdir / stale).unlink(missing_ok=True)
        return path

    def recovery_summary(self) -> dict[str, Any]:
        """n_tune and the recovery curve (validation metrics vs samples seen) with its a + b/sqrt(n) fit.

        The curve runs over every recovery of the run in order (a step's, then the final one), on one
        axis: n_tune counts the samples seen since the first recovery began, as the total n_tune does.
        """
        records = [_without_timings(r) for r in self.recovery_records]
        if not records:
            return {"enabled": self.recipe.recovery.enabled, "n_tune": 0, "curve": [], "fit": None, "records": []}
        curve, offset = [], 0
        for record in records:
            curve += [{"recovery": record["label"], "epoch": h["epoch"], "n_tune": offset + h["n_tune"],
                       **(h.get("val") or {})} for h in record["history"]]
            offset += record.get("n_tune", 0)
        metric = self.recipe.budget.metric
        points = [(p["n_tune"], p.get(metric)) for p in curve if p.get(metric) is not None]
        return {"enabled": True, "n_tune": offset, "curve": curve, "fit": cert.fit_recovery_curve(points),
                "records": records}

    def bound_check(self, original: Model, before, edited, immediate) -> dict[str, Any]:
        """C from the task-loss gradient at the original weights; needs labels and torch."""
        self.stages.say("perturbation bound: task-loss gradient at the original weights")
        delta = _delta(immediate, self.original_metrics, "loss")
        change = math.sqrt(sum(d.sq_change for d in magnitude.compare(before, edited)))
        constant = None
        if self.recipe.data.labels and delta is not None:
            try:
                from graphsurg.train.service import gradients
            except ImportError:
                gradients = None
            if gradients is not None:
                data = self.recipe.data
                spec = DataSpec(str(data.evaluation), data.labels, data.batch_size)
                grads = gradients(original, _trained_weights(original), data=spec)
                samples = max(int(self.original_metrics.get("samples") or 1), 1)
                constant = math.sqrt(sum(float((g.astype("float64") ** 2).sum()) for g in grads.values())) / samples
        return cert.BoundCheck(constant, change, delta).to_json()


def _trained_weights(model: Model) -> list[str]:
    """Float initializers that training would update: not BatchNorm running statistics (ports 3, 4)."""
    graph = model.graph
    statistics = {op.inputs[port].name for op in graph.ops if op.op_type == "BatchNormalization"
                  for port in (3, 4) if len(op.inputs) > port and op.inputs[port] is not None}
    return sorted(name for name, value in graph.initializers.items()
                  if value.dtype in dtypes.FLOAT_CODES and value.const.size > 1 and name not in statistics
                  and any(True for _ in graph.consumers(value)))


def _without_timings(record: dict[str, Any]) -> dict[str, Any]:
    """Recovery records carry wall-clock times; the certificate keeps those under `timings` only."""
    cleaned = {k: v for k, v in record.items() if k != "elapsed_s"}
    if "history" in cleaned:
        cleaned["history"] = [{k: v for k, v in h.items() if k != "elapsed_s"} for h in cleaned["history"]]
    return cleaned


def _delta(metrics: dict | None, original: dict, key: str) -> float | None:
    if not metrics or metrics.get(key) is None or original.get(key) is None:
        return None
    return float(metrics[key] - original[key])


def run_recipe(recipe: Recipe, outdir: Path | None = None, quiet: bool = False) -> dict[str, Any]:
    """Runs a loaded recipe; the output folder is made only when the model is written, so a run that
    fails on the way leaves nothing behind."""
    return Surgery(recipe, outdir or recipe.output.dir, Stages(quiet)).run()


def over_budget_name(name: str) -> str:
    """`model.onnx` -> `model.over-budget.onnx`: where a model that missed its budget goes."""
    return f"{Path(name).stem}.over-budget{Path(name).suffix or '.onnx'}"


def bisect_largest(feasible: Callable[[float], bool], low: float, high: float, tolerance: float) -> float:
    """The largest x in [low, high] with feasible(x), assuming feasibility falls monotonically;
    O(log((high - low) / tolerance)) calls. `low` is taken as feasible (no surgery)."""
    if feasible(high):
        return high
    while high - low > tolerance:
        middle = (low + high) / 2
        if feasible(middle):
            low = middle
        else:
            high = middle
    return low


def clone(model: Model) -> Model:
    return serde.load(serde.to_bytes(model), base_dir=model.source_dir)


def _with_param(spec: PassSpec, key: str, value: float) -> PassSpec:
    return PassSpec(spec.name, tuple((k, f"{value:.6g}" if k == key else v) for k, v in spec.params))


def _scheduled(spec: PassSpec, round_index: int, rounds: int) -> PassSpec:
    """Iterative pruning schedule: the amount is spread geometrically over the rounds.

    `prune{sparsity=s}` is an absolute target, so round i aims at 1 - (1-s)^((i+1)/k); `excise{ratio=r}`
    removes a share of what is left, so each round removes 1 - (1-r)^(1/k).
    """
    if rounds == 1:
        return spec
    params = dict(spec.params)
    if spec.name == "prune" and "sparsity" in params:
        target = 1 - (1 - float(params["sparsity"])) ** ((round_index + 1) / rounds)
        return _with_param(spec, "sparsity", target)
    if spec.name == "excise" and "ratio" in params:
        return _with_param(spec, "ratio", 1 - (1 - float(params["ratio"])) ** (1 / rounds))
    return spec


def _rewind(model: Model, original: Model) -> None:
    """Lottery-ticket rewind: surviving weights go back to their original values, pruned ones stay 0."""
    import numpy as np

    for name, value in model.graph.initializers.items():
        source = original.graph.initializers.get(name)
        if source is None or source.const.shape != value.const.shape or value.const.size <= 1:
            continue
        current = value.const.numpy()
        if current.dtype.kind != "f":
            continue
        model.graph.set_const(value, np.where(current == 0, 0, source.const.numpy()).astype(current.dtype))

