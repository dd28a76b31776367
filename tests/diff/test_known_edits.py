"""Acceptance: known edits made with the onnx library on the bundled models; the diff must report
exactly those edits, also when every node and value of the edited model was renamed on top."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from graphsurg.diff import diff_files

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
import _diff_edits as E  # noqa: E402

# Per model: a single-input op to excise, an activation to put a QDQ pair on, an attribute to change.
TARGETS = {
    "digits_mlp": {"remove": "/net/net.2/Relu", "qdq": "/net/net.1/Gemm_output_0",
                   "attribute": ("/net/net.0/Flatten", "axis", 2), "output": "/net/net.2/Relu_output_0"},
    "digits_cnn": {"remove": "/net/net.2/Relu", "qdq": "/net/net.1/Relu_output_0",
                   "attribute": ("/net/net.3/net.3.0/Conv", "strides", [1, 1]),
                   "output": "/net/net.2/Add_output_0"},
    "digits_vit": {"remove": "/blocks/blocks.0/attn/Softmax",
                   "qdq": "/blocks/blocks.0/norm1/LayerNormalization_output_0",
                   "attribute": ("/blocks/blocks.0/attn/Softmax", "axis", -2),
                   "output": "/blocks/blocks.0/attn/Softmax_output_0"},
}
MODELS = list(TARGETS)


def run_diff(tmp_path: Path, name: str, edited: onnx.ModelProto, renamed: bool, origin: dict | None = None):
    """Diffs the bundled model against `edited` (renamed throughout when asked) and checks that
    every op pair the matcher made is the true one. `origin` maps bundled node names to the edited
    model's (default: the edit kept names); renaming makes node k of `edited` renamed_node_k."""
    b = E.rename_nodes(edited, values=True) if renamed else edited
    path = E.save(b, tmp_path / "b.onnx")
    report = diff_files(str(E.MODELS / f"{name}.onnx"), str(path))
    final = {n.name: (f"renamed_node_{k}" if renamed else n.name) for k, n in enumerate(edited.graph.node)}
    for a, b_op in report.graph.matched.items():
        expected = final[(origin or {}).get(a.name, a.name)]
        assert b_op.name == expected, f"{a.name} matched {b_op.name}, expected {expected}"
    return report


def assert_only(report, **expected) -> None:
    """Every section not named in `expected` is empty."""
    g = report.graph
    sections = {
        "added": g.added, "removed": g.removed, "changed": g.changed, "weights_changed": g.weights_changed,
        "weights_added": g.weights_added, "weights_removed": g.weights_removed,
        "inputs": [e for v in g.inputs.values() for e in v], "outputs": [e for v in g.outputs.values() for e in v],
        "model": report.model_changes, "subgraphs": [s for s in g.subgraphs if not s.diff.identical],
    }
    for key, found in sections.items():
        if key not in expected:
            assert not found, f"unexpected {key}: {found}"


def consumers(proto: onnx.ModelProto, value: str) -> list[tuple[str, int]]:
    return [(n.name, list(n.input).index(value)) for n in proto.graph.node if value in n.input]


def producer(proto: onnx.ModelProto, value: str) -> str:
    return next(n.name for n in proto.graph.node if value in n.output)


@pytest.mark.parametrize("renamed", [False, True], ids=["names", "renamed"])
@pytest.mark.parametrize("name", MODELS)
class TestKnownEdits:
    def test_remove_node_and_rewire(self, tmp_path, name, renamed):
        base = E.load(name)
        victim = TARGETS[name]["remove"]
        node = next(n for n in base.graph.node if n.name == victim)
        report = run_diff(tmp_path, name, E.remove_node(base, victim), renamed)
        g = report.graph
        assert [op.name for op in g.removed] == [victim]
        readers = consumers(base, node.output[0])
        assert sorted((c.a.name, [e["port"] for e in c.changes]) for c in g.changed) == \
            sorted((reader, [port]) for reader, port in readers)
        assert all(e["what"] == "input" for c in g.changed for e in c.changes)
        assert_only(report, removed=1, changed=1)
        (edit,) = g.edits
        assert edit["kind"] == "remove" and edit["removed"] == [victim]
        assert edit["after"] == [g.matched[_op(g, producer(base, node.input[0]))].label]
        assert report.counts()["ops_matched"] == len(base.graph.node) - 1

    def test_change_a_weight(self, tmp_path, name, renamed):
        base = E.load(name)
        weight = [t for t in base.graph.initializer if len(t.dims) >= 2][1]
        report = run_diff(tmp_path, name, E.scale_weight(base, weight.name, 1.5, count=7), renamed)
        g = report.graph
        (change,) = g.weights_changed
        assert change.a.value.name == weight.name
        before = numpy_helper.to_array(weight).astype(np.float64)
        after = before.copy().reshape(-1)
        after[:7] *= 1.5
        expected = np.linalg.norm(after - before.reshape(-1)) / np.linalg.norm(before)
        assert change.stats["rel_change"] == pytest.approx(expected, rel=1e-5)
        assert change.stats["shape"][0] == change.stats["shape"][1] == list(weight.dims)
        assert change.stats["quantized"] == [False, False]
        assert_only(report, weights_changed=1)
        assert [e["kind"] for e in g.edits] == ["modify"]

    def test_rename_every_node_is_identical(self, tmp_path, name, renamed):
        base = E.load(name)
        origin = {n.name: f"renamed_node_{k}" for k, n in enumerate(base.graph.node)}  # what rename_nodes does
        report = run_diff(tmp_path, name, E.shuffle_nodes(E.rename_nodes(base)), renamed, origin)
        assert report.identical and report.structurally_identical
        assert_only(report)
        assert report.counts()["ops_matched"] == len(base.graph.node)
        assert report.counts()["ops_renamed"] == len(base.graph.node)
        assert report.summary().startswith("identical")

    def test_insert_qdq_pair(self, tmp_path, name, renamed):
        base = E.load(name)
        value = TARGETS[name]["qdq"]
        report = run_diff(tmp_path, name, E.insert_qdq(base, value), renamed)
        g = report.graph
        assert sorted(op.op_type for op in g.added) == ["DequantizeLinear", "QuantizeLinear"]
        assert sorted((c.a.name, [e["port"] for e in c.changes]) for c in g.changed) == \
            sorted((reader, [port]) for reader, port in consumers(base, value))
        assert_only(report, added=2, changed=1)
        (edit,) = g.edits
        assert edit["kind"] == "insert"
        assert edit["after"] == [g.matched[_op(g, producer(base, value))].label]
        assert sorted(edit["before"]) == sorted(g.matched[_op(g, r)].label for r, _ in consumers(base, value))

    def test_change_an_attribute(self, tmp_path, name, renamed):
        base = E.load(name)
        target, key, value = TARGETS[name]["attribute"]
        old = onnx.helper.get_attribute_value(next(a for n in base.graph.node if n.name == target
                                                   for a in n.attribute if a.name == key))
        report = run_diff(tmp_path, name, E.set_attribute(base, target, key, value), renamed)
        (change,) = report.graph.changed
        assert change.a.name == target
        assert change.changes == [{"what": "attribute", "name": key, "before": old, "after": value}]
        assert_only(report, changed=1)
        (edit,) = report.graph.edits
        assert edit["kind"] == "modify" and f"attribute {key}" in edit["summary"]

    def test_add_an_output(self, tmp_path, name, renamed):
        base = E.load(name)
        value = TARGETS[name]["output"]
        report = run_diff(tmp_path, name, E.add_output(base, value), renamed)
        added = report.graph.outputs["added"]
        expected_name = value if not renamed else next(o for o in E.rename_nodes(E.add_output(base, value),
                                                                                   values=True).graph.output[1:]).name
        assert [e["name"] for e in added] == [expected_name]
        assert_only(report, outputs=1)
        assert [e["kind"] for e in report.graph.edits] == ["interface-add"]


def _op(graph_diff, name: str):
    return next(op for op in graph_diff.fa.index.order if op.name == name)


def test_model_against_itself_is_identical(bundled_model):
    report = diff_files(str(bundled_model), str(bundled_model))
    assert report.identical and report.counts()["ops_renamed"] == 0
    assert report.summary() == f"identical ({report.counts()['ops_matched']} ops matched)"
