"""Matching beyond the acceptance edits: exporter-numbered names, renamed replacements, quantized
weights, If bodies, and renamed copies of the onnx backend corpus."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphsurg.diff import diff_files

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
import _diff_edits as E  # noqa: E402

CORPUS = Path(onnx.__file__).parent / "backend" / "test" / "data"


def diff_protos(tmp_path: Path, a: onnx.ModelProto, b: onnx.ModelProto):
    return diff_files(str(E.save(a, tmp_path / "a.onnx")), str(E.save(b, tmp_path / "b.onnx")))


def test_numbered_names_that_shift_do_not_mislead_the_matcher(tmp_path):
    """Exporters that name nodes node_0, node_1, ... renumber everything after an insertion; the
    structure overrules those names, so the diff is still the two inserted ops."""
    base = E.load("digits_vit")
    value = "/blocks/blocks.0/norm1/LayerNormalization_output_0"
    edited = E.insert_qdq(base, value)
    report = diff_protos(tmp_path, E.renumber_nodes(base), E.renumber_nodes(edited))
    g = report.graph
    assert g.matcher.strategy == "structure"
    assert sorted(op.op_type for op in g.added) == ["DequantizeLinear", "QuantizeLinear"]
    assert not g.removed and not g.weights_changed
    assert len(g.changed) == 3 and all(e["what"] == "input" for c in g.changed for e in c.changes)
    index_b = {n.name: k for k, n in enumerate(edited.graph.node)}  # true position of each op in b
    for a, b in g.matched.items():
        original = base.graph.node[int(a.name.removeprefix("node_"))].name
        assert b.name == f"node_{index_b[original]}"


def test_a_renamed_new_head_is_a_replacement(tmp_path):
    """Where names carry meaning, a differently named op with other weight shapes is new."""
    base = E.load("digits_mlp")
    report = diff_protos(tmp_path, base, E.replace_gemm_head(base, "/net/net.5/Gemm", classes=5))
    g = report.graph
    assert g.matcher.strategy == "names"
    assert [op.name for op in g.removed] == ["/net/net.5/Gemm"]
    assert [op.name for op in g.added] == ["new_head/Gemm"]
    assert [e["kind"] for e in g.edits] == ["replace", "interface-modify"]
    assert g.edits[0]["summary"].startswith("replace Gemm with Gemm after /net/net.4/Relu")
    (output,) = g.outputs["changed"]
    assert output["changes"] == ["shape"] and output["after"]["shape"] == ["batch", 5]
    assert not g.changed and not g.weights_changed


def test_a_weight_stored_as_int8_behind_dequantize(tmp_path):
    base = E.load("digits_mlp")
    report = diff_protos(tmp_path, base, E.quantize_weight(base, "net.1.weight", axis=0))
    g = report.graph
    assert [op.op_type for op in g.added] == ["DequantizeLinear"]
    assert not g.changed and not g.removed and not g.weights_added and not g.weights_removed
    (change,) = g.weights_changed
    stats = change.stats
    assert stats["quantized"] == [False, True] and stats["dtype"] == ["float32", "int8"]
    assert stats["shape"] == [[128, 64], [128, 64]]
    w = numpy_helper.to_array(next(t for t in base.graph.initializer if t.name == "net.1.weight")).astype(np.float64)
    scale = np.abs(w).max(axis=1, keepdims=True) / 127
    dequantized = np.clip(np.rint(w / scale), -127, 127) * scale
    assert stats["rel_change"] == pytest.approx(np.linalg.norm(dequantized - w) / np.linalg.norm(w), rel=1e-4)
    assert 0 < stats["rel_change"] < 0.02
    (edit,) = g.edits
    assert edit["kind"] == "insert" and "weights quantized net.1.weight_q float32->int8" in edit["summary"]


def if_model(then_value: float = 1.0, then_op: str = "Add") -> onnx.ModelProto:
    """y = Relu(If(cond) then x (op) c_then else x * c_else); the branches read x from outside."""
    floats = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("x", "t_out", "e_out", "y", "z")]
    x, t_out, e_out, y, z = floats
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    then_c = numpy_helper.from_array(np.full(2, then_value, np.float32), "c_then")
    else_c = numpy_helper.from_array(np.full(2, 3.0, np.float32), "c_else")
    then = helper.make_graph([helper.make_node(then_op, ["x", "c_then"], ["t_out"], name="then_op")], "then",
                             [], [t_out], [then_c])
    other = helper.make_graph([helper.make_node("Mul", ["x", "c_else"], ["e_out"], name="else_op")], "else",
                              [], [e_out], [else_c])
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other, name="branch"),
             helper.make_node("Relu", ["y"], ["z"], name="relu")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x, cond], [z]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.graph.value_info.append(y)
    return model


def test_if_bodies_are_diffed_as_subgraphs(tmp_path):
    same = diff_protos(tmp_path, if_model(), E.rename_nodes(if_model()))
    assert same.identical
    weight = diff_protos(tmp_path, if_model(), if_model(then_value=2.0))
    (sub,) = [s for s in weight.graph.subgraphs if not s.diff.identical]
    assert sub.attr == "then_branch" and sub.a.name == "branch"
    (change,) = sub.diff.weights_changed
    assert change.a.value.name == "c_then" and change.stats["rel_change"] == pytest.approx(1.0)
    assert not weight.graph.changed and weight.counts()["subgraphs_changed"] == 1
    assert weight.to_json()["graph"]["subgraphs"][0]["attribute"] == "then_branch"
    op_type = diff_protos(tmp_path, if_model(), if_model(then_op="Sub"))
    (sub,) = [s for s in op_type.graph.subgraphs if not s.diff.identical]
    (changed,) = sub.diff.changed
    assert changed.changes == [{"what": "op_type", "before": "Add", "after": "Sub"}]


def test_renamed_shuffled_copies_of_the_corpus_are_identical(tmp_path):
    """Every model of the onnx wheel's backend corpus against a copy with all names changed and the
    nodes in another order."""
    failures, compared = [], 0
    for path in sorted(CORPUS.rglob("*.onnx")):
        proto = onnx.load(path)
        copy = tmp_path / "copy.onnx"
        onnx.save(E.shuffle_nodes(E.rename_nodes(proto, values=True)), copy)
        report = diff_files(str(path), str(copy))
        compared += 1
        if not report.identical or report.counts()["ops_matched"] != len(proto.graph.node):
            failures.append(f"{path.relative_to(CORPUS)}: {report.summary()}")
    assert compared > 100 and not failures, failures


def test_each_edit_of_a_generated_model_is_its_own_edit(tmp_path):
    """Edits spread over a residual network (whose skip Adds read from two places) stay separate,
    even with every name changed."""
    import importlib.util

    from graphsurg import serde
    from graphsurg.diff import diff_models

    spec = importlib.util.spec_from_file_location("graphsurg_bench_diff", E.MODELS.parent / "bench" / "diff.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    serde.save(bench.generate(800), tmp_path / "a.onnx")
    edited = serde.load(tmp_path / "a.onnx")
    made = bench.edit(edited)
    bench.rename_everything(edited)
    serde.save(edited, tmp_path / "b.onnx")
    report = diff_models(serde.load(tmp_path / "a.onnx"), serde.load(tmp_path / "b.onnx"))
    kinds = [edit["kind"] for edit in report.graph.edits]
    assert kinds.count("insert") == made["qdq"] and kinds.count("remove") == made["excised"]
    assert all(e["summary"].startswith("insert QuantizeLinear, DequantizeLinear after ") for e in report.graph.edits
               if e["kind"] == "insert")
    modified = [e for e in report.graph.edits if e["kind"] == "modify"]
    assert modified and all("weights changed" in e["summary"] or "attribute note_only" in e["summary"]
                            for e in modified)
    assert set(kinds) == {"insert", "remove", "modify"}


def test_opset_and_metadata_are_reported(tmp_path):
    base = E.load("digits_mlp")
    edited = onnx.ModelProto()
    edited.CopyFrom(base)
    edited.opset_import[0].version = 18
    edited.producer_version = "9.9"
    edited.metadata_props.add(key="license", value="Apache-2.0")
    report = diff_protos(tmp_path, base, edited)
    assert report.graph.identical and not report.identical
    assert report.model_changes == [
        {"field": "opset ai.onnx", "before": 17, "after": 18},
        {"field": "producer_version", "before": "2.13.0", "after": "9.9"},
        {"field": "metadata license", "before": None, "after": "Apache-2.0"},
    ]
    assert report.summary() == "differs: 3 model fields changed"
