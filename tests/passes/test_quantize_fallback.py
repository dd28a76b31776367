"""quantize fallback: the search over the sensitivity ranking, on a real model and through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from graphsurg.passes._quant_fallback import search

from graphsurg import serde
from graphsurg.cli import main
from graphsurg.eval import evaluate
from graphsurg.pipeline import make_pass, run_passes
from graphsurg.services import DataSpec, build_context

MODELS = Path(__file__).resolve().parents[2] / "models"
DATA = MODELS / "digits_val.npz"
KEYS = [f"op{i}" for i in range(13)]
COST = {k: 0.01 * (i % 5 + 1) + 0.001 * i for i, k in enumerate(KEYS)}  # each op's share of the degradation


def additive(calls: list):
    def measure(float_keys: frozenset[str]) -> float:
        calls.append(float_keys)
        return sum(COST[k] for k in KEYS if k not in float_keys)

    return measure


@pytest.mark.parametrize("budget", [0.05, 0.2, 0.3])
def test_search_returns_the_shortest_prefix_of_the_ranking_in_log_evaluations(budget):
    calls: list = []
    result = search(KEYS, additive(calls), budget)
    ranked = sorted(KEYS, key=lambda k: -COST[k])
    assert [entry["op"] for entry in result.ranking] == ranked
    fewest = next(n for n in range(len(KEYS) + 1) if sum(COST[k] for k in ranked[n:]) <= budget)
    assert result.float_keys == ranked[:fewest]
    assert result.budget_met and result.degradation <= budget
    assert result.search_evaluations <= math.ceil(math.log2(len(KEYS) + 1)) + 1
    assert len(calls) == len(set(calls))  # no setting is measured twice


def test_search_without_fallback_when_the_budget_already_holds():
    calls: list = []
    result = search(KEYS, additive(calls), 10.0)
    assert result.float_keys == [] and result.budget_met and len(calls) == 1


def test_search_reports_the_best_setting_when_none_meets_the_budget():
    result = search(KEYS, lambda keys: 0.5 + 0.01 * len(KEYS) - 0.01 * len(keys), 0.1)
    assert not result.budget_met
    assert result.degradation == pytest.approx(0.5) and sorted(result.float_keys) == sorted(KEYS)


def quantized(spec: str, **extra):
    model = serde.load(MODELS / "digits_cnn.onnx")
    ctx = build_context(DataSpec(str(DATA)), **extra)
    result = run_passes(model, [make_pass(spec)], ctx).results[0]
    return model, result


def kl_to_float(model) -> float:
    return evaluate(model, str(DATA), ref=str(MODELS / "digits_cnn.onnx"))["metrics"]["kl"]


def test_fallback_meets_a_budget_that_needs_it_with_the_fewest_float_ops_of_the_ranking():
    # Per-tensor weights with min/max ranges leave a clear KL to the float model; measure what each
    # prefix of the ranking costs, then ask for a budget that only a non-empty prefix meets.
    spec = "quantize{per_channel=false,calibration=minmax}"
    _, probe = quantized(spec, max_degradation=0.0, metric="kl")
    ranking = [entry["op"] for entry in probe.changes["fallback"]["ranking"]]
    prefix_kl = []
    for n in range(len(ranking) + 1):
        model, _ = quantized(spec.replace("}", f",exclude={','.join(ranking[:n])}}}") if n else spec)
        prefix_kl.append(kl_to_float(model))
    target = next(n for n in range(1, len(ranking))
                  if prefix_kl[n] < min(prefix_kl[:n]) and prefix_kl[n] >= max(prefix_kl[n:]))
    budget = prefix_kl[target] * 1.0001

    model, result = quantized(spec, max_degradation=budget, metric="kl")
    fallback = result.changes["fallback"]
    assert fallback["budget_met"] and result.changes["budget_met"]
    assert fallback["float_ops"] == ranking[:target]  # no shorter prefix of the ranking meets the budget
    assert all(kl > budget for kl in prefix_kl[:target])
    assert kl_to_float(model) <= budget
    assert fallback["evaluations_after_ranking"] <= math.ceil(math.log2(len(ranking) + 1)) + 1
    kept = {r["target"] for r in result.refused if "fallback" in r["reason"]}
    assert kept == set(ranking[:target])


def test_cli_writes_the_best_model_and_exits_1_when_no_setting_meets_the_budget(tmp_path, capsys):
    out, changes = tmp_path / "q.onnx", tmp_path / "changes.json"
    code = None
    try:
        main(["apply", str(MODELS / "digits_mlp.onnx"), "-o", str(out), "-p", "quantize", "--data", str(DATA),
              "--max-degradation", "-1", "--metric", "cosine", "--changes", str(changes)])
    except SystemExit as exc:
        code = exc.code
    assert code == 1
    assert out.exists() and serde.load(out).graph.ops
    assert "no setting met --max-degradation" in capsys.readouterr().err
    record = json.loads(changes.read_text())["passes"][0]["changes"]
    assert record["budget_met"] is False and record["fallback"]["evaluations"]
