"""Models made by graphsurg's own passes: the diff names the edit each pass made."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from graphsurg import serde
from graphsurg.diff import diff_models
from graphsurg.pipeline import all_passes, make_pass, run_passes
from graphsurg.services import DataSpec, build_context

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
import _diff_edits as E  # noqa: E402

HEADS = {"digits_mlp": "/net/net.5/Gemm", "digits_cnn": "/net/net.7/Gemm", "digits_vit": "/head/Gemm"}


def after_pass(name: str, spec: str, data: bool = False, source=None):
    """The model before and after one pass (the pass runs on its own loaded copy)."""
    if spec.split("{")[0] not in all_passes():
        pytest.skip(f"pass {spec} is not in this tree yet")
    path = source or E.MODELS / f"{name}.onnx"
    before, after = serde.load(path), serde.load(path)
    ctx = build_context(DataSpec(str(E.MODELS / "digits_val.npz")) if data else None)
    run_passes(after, [make_pass(spec)], ctx)
    return diff_models(before, after, "before", "after")


def kinds(report) -> list[str]:
    return [edit["kind"] for edit in report.graph.edits]


def test_cleanup_removes_identities_and_dead_ops(tmp_path):
    base = E.load("digits_mlp")
    messy = E.add_identity_and_dead_op(base, "/net/net.2/Relu_output_0")
    source = E.save(messy, tmp_path / "messy.onnx")
    report = after_pass("digits_mlp", "cleanup", source=source)
    g = report.graph
    assert sorted(op.op_type for op in g.removed) == ["Identity", "Sin"] and not g.added
    summaries = [edit["summary"] for edit in g.edits]
    assert "remove Identity after /net/net.2/Relu, before /net/net.3/Gemm" in summaries
    assert "remove Sin after /net/net.2/Relu" in summaries
    assert all(e["what"] == "input" for c in g.changed for e in c.changes)  # only the rewired reader


def test_fold_constants_names_each_folded_constant():
    report = after_pass("digits_vit", "fold-constants")
    g = report.graph
    constants = [op for op in g.fa.index.order if op.op_type == "Constant"]
    assert len(g.removed) == len(constants) == 17 and not g.added and not g.changed
    assert kinds(report) == ["remove"] * 17
    assert all(e["summary"].startswith("fold Constant into initializer ") for e in g.edits)
    assert not g.weights_changed and not g.weights_added and not g.weights_removed


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn"])
def test_graft_inserts_identity_layers(name):
    report = after_pass(name, "graft{after=auto,count=1}")
    g = report.graph
    assert g.added and not g.removed and set(kinds(report)) == {"insert"}
    assert {op.op_type for op in g.added} <= {"Gemm", "Conv", "MatMul", "Add", "Relu"}
    assert all(e["summary"].startswith("insert ") and " after " in e["summary"] for e in g.edits)
    assert not g.weights_changed  # the new layers' weights belong to the new ops


def test_excise_shows_as_shrunk_weights():
    report = after_pass("digits_cnn", "excise{ratio=0.25}")
    g = report.graph
    assert not g.added and not g.removed and g.weights_changed
    assert set(kinds(report)) == {"modify"}
    assert all("weights reshaped" in e["summary"] for e in g.edits)
    for change in g.weights_changed:
        before, after = change.stats["shape"]
        assert len(before) == len(after) and all(x >= y for x, y in zip(before, after, strict=True))
        assert before != after


def test_quantize_inserts_qdq_and_quantizes_weights():
    report = after_pass("digits_mlp", "quantize", data=True)
    g = report.graph
    assert {op.op_type for op in g.added} == {"QuantizeLinear", "DequantizeLinear"} and not g.removed
    assert set(kinds(report)) == {"insert"} and len(g.edits) == 3
    assert all("weights quantized" in e["summary"] for e in g.edits)
    gemm_weights = [w for w in g.weights_changed if w.stats["shape"][0] and len(w.stats["shape"][0]) == 2]
    assert len(gemm_weights) == 3
    for change in gemm_weights:
        assert change.stats["quantized"] == [False, True] and change.stats["dtype"] == ["float32", "int8"]
        assert 0 < change.stats["rel_change"] < 0.05


@pytest.mark.parametrize("name", list(HEADS))
def test_head_swap_changes_the_head_and_the_output(name):
    report = after_pass(name, "head-swap{classes=5}")
    g = report.graph
    (output,) = g.outputs["changed"]
    assert output["changes"] == ["shape"] and output["after"]["shape"][-1] == 5
    head_edits = [e for e in g.edits if HEADS[name] in e["summary"] or HEADS[name] in e["added"] + e["removed"]]
    assert head_edits, [e["summary"] for e in g.edits]
    assert any(("weights reshaped" in e["summary"] and "->[5," in e["summary"]) or e["kind"] == "replace"
               for e in head_edits)
