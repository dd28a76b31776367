"""graft: identity-initialized layers leave every bundled model's outputs as they were."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from graphsurg.passes._graft_sign import negativity_reason
from graphsurg.passes.graft import eligible_positions

from graphsurg.cli import main
from graphsurg.errors import UsageError
from graphsurg.ir import Graph

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
from _graft_support import BUNDLED, MODELS, TOLERANCE, apply, digits_inputs, load, make, max_diff, run  # noqa: E402

# after=auto positions per model and kind: the values parametric layers read (graph inputs aside).
AUTO_COUNTS = {
    ("digits_mlp", "auto"): 3, ("digits_mlp", "linear"): 3, ("digits_mlp", "conv"): 0,
    ("digits_cnn", "auto"): 4, ("digits_cnn", "linear"): 1, ("digits_cnn", "conv"): 3,
    ("digits_vit", "auto"): 9, ("digits_vit", "linear"): 9, ("digits_vit", "conv"): 0,
}


def _positions() -> list[tuple[str, str]]:
    return [(name, value.name) for name in BUNDLED for value, _ in eligible_positions(load(name).graph)]


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return digits_inputs()


@pytest.mark.parametrize(("name", "kind"), sorted(AUTO_COUNTS))
def test_auto_grafts_every_eligible_position_without_changing_outputs(name, kind, x):
    model = load(name)
    before = run(model, x)[0]
    result = apply(model, f"graft{{after=auto,kind={kind}}}")
    assert len(result.changes["inserted"]) == AUTO_COUNTS[name, kind]
    assert result.modified == bool(AUTO_COUNTS[name, kind])
    assert not result.refused
    assert max_diff(before, run(model, x)[0]) <= TOLERANCE


@pytest.mark.parametrize(("name", "position"), _positions())
def test_two_layers_at_each_position_preserve_the_function(name, position, x):
    model = load(name)
    before, ops_before = run(model, x)[0], len(model.graph.ops)
    result = apply(model, f"graft{{after={position},count=2}}")
    (entry,) = result.changes["inserted"]
    assert entry["after"] == position and len(entry["layers"]) == 2
    inserted = [op for layer in entry["layers"] for op in layer["ops"]]
    assert len(model.graph.ops) == ops_before + len(inserted)
    assert all(model.graph.find_op(op) is not None for op in inserted)
    assert set(result.touched) == {p for layer in entry["layers"] for p in layer["parameters"]}
    assert max_diff(before, run(model, x)[0]) <= TOLERANCE


def test_grafted_layers_are_identities_of_the_right_kind():
    model = load("digits_cnn")
    result = apply(model, "graft{after=/net/net.1/Relu_output_0}")
    layer = result.changes["inserted"][0]["layers"][0]
    assert layer["op_types"] == ["Conv"]
    conv = model.graph.find_op(layer["ops"][0])
    assert conv.attr("kernel_shape") == [3, 3] and conv.attr("pads") == [1, 1, 1, 1] and conv.attr("group") == 1
    weight = model.graph.const_value(conv.inputs[1])
    assert weight.shape == (16, 16, 3, 3) and weight.sum() == 16 and np.all(weight[:, :, 1, 1] == np.eye(16))
    vit = load("digits_vit")
    hidden = apply(vit, "graft{after=/blocks/blocks.0/norm2/LayerNormalization_output_0}")
    assert hidden.changes["inserted"][0]["layers"][0]["op_types"] == ["MatMul", "Add"]  # rank-3 hidden states


def test_relu_grafts_where_values_are_provably_non_negative(x):
    model = load("digits_cnn")
    before = run(model, x)[0]
    relus = sum(op.op_type == "Relu" for op in model.graph.ops)
    result = apply(model, "graft{activation=relu,count=2}")
    assert len(result.changes["inserted"]) == 4 and not result.refused
    assert sum(op.op_type == "Relu" for op in model.graph.ops) == relus + 8
    assert max_diff(before, run(model, x)[0]) <= TOLERANCE


def test_relu_refused_on_a_value_that_can_be_negative():
    model = load("digits_mlp")
    with pytest.raises(UsageError) as caught:
        apply(model, "graft{after=/net/net.1/Gemm_output_0,activation=relu}")
    message = str(caught.value)
    assert "can be negative" in message and "/net/net.1/Gemm (Gemm)" in message and "activation=none" in message


def test_relu_under_auto_records_each_refusal_and_grafts_the_rest():
    mlp = apply(load("digits_mlp"), "graft{activation=relu}")
    assert len(mlp.changes["inserted"]) == 2
    assert [r["target"] for r in mlp.refused] == ["/net/net.0/Flatten_output_0"]
    assert "graph input" in mlp.refused[0]["reason"]
    vit = apply(load("digits_vit"), "graft{activation=relu}")
    assert not vit.modified and len(vit.refused) == 9
    assert all("can be negative" in r["reason"] for r in vit.refused)


def test_graft_after_a_graph_output_keeps_its_name(x):
    model = load("digits_vit")
    before = run(model, x)[0]
    result = apply(model, "graft{after=logits}")
    assert [v.name for v in model.graph.outputs] == ["logits"]
    (renamed,) = result.changes["value_map"].items()  # the head's own output now has another name
    assert renamed[0] == "logits" and model.graph.producer(model.graph.value(renamed[1])).name == "/head/Gemm"
    assert model.graph.producer(model.graph.outputs[0]).name == result.changes["inserted"][0]["layers"][0]["ops"][-1]
    assert max_diff(before, run(model, x)[0]) <= TOLERANCE


def test_several_named_positions_and_node_names(x):
    model = load("digits_mlp")
    before = run(model, x)[0]
    result = apply(model, "graft{after=/net/net.2/Relu,/net/net.4/Relu_output_0}")
    assert [e["after"] for e in result.changes["inserted"]] == ["/net/net.2/Relu_output_0", "/net/net.4/Relu_output_0"]
    assert max_diff(before, run(model, x)[0]) <= TOLERANCE


@pytest.mark.parametrize(("spec", "expected"), [
    ("graft{after=nope}", "no tensor or node named 'nope'"),
    ("graft{after=net.1.weight}", "constant"),
    ("graft{after=/net/net.0/Flatten_output_0,kind=conv}", "rank 3 to 5"),
])
def test_ineligible_named_targets_are_usage_errors(spec, expected):
    with pytest.raises(UsageError, match=expected):
        apply(load("digits_mlp"), spec)


def test_a_layer_over_max_mb_is_refused_named_or_under_auto(x):
    """digits_mlp's 128-wide hidden vector: a 64 KiB identity Gemm; with max_mb below it, refused."""
    with pytest.raises(UsageError, match=r"128 wide would weigh 0 MB \(max_mb=0.01; raise it"):
        apply(load("digits_mlp"), "graft{after=/net/net.2/Relu_output_0,max_mb=0.01}")
    model = load("digits_mlp")
    result = apply(model, "graft{max_mb=0.03}")  # the 64-wide layers (16 KiB) fit, the 128-wide one not
    assert [entry["width"] for entry in result.changes["inserted"]] == [64, 64]
    assert [r["target"] for r in result.refused if "max_mb" in r["reason"]] == ["/net/net.2/Relu_output_0"]


def test_bad_parameters_are_usage_errors():
    with pytest.raises(UsageError, match="count must be at least 1"):
        make("graft{count=0}")
    with pytest.raises(UsageError, match="activation"):
        make("graft{activation=gelu}")


def cli_run(*args: str) -> int:
    """`graphsurg ARGS` in-process, through the real entry point (error lines and exit codes)."""
    with pytest.raises(SystemExit) as done:
        main(list(args))
    return done.value.code


def test_cli_apply_writes_the_change_record(tmp_path, capsys):
    out, changes = tmp_path / "grafted.onnx", tmp_path / "changes.json"
    assert cli_run("apply", str(MODELS / "digits_cnn.onnx"), "-o", str(out), "-p", "graft{count=2}",
                   "--changes", str(changes)) == 0
    record = json.loads(changes.read_text())["passes"][0]
    assert record["pass"] == "graft" and len(record["changes"]["inserted"]) == 4 and len(record["touched"]) == 16
    capsys.readouterr()
    assert cli_run("apply", str(MODELS / "digits_mlp.onnx"), "-o", str(out), "-p",
                   "graft{after=/net/net.3/Gemm_output_0,activation=relu}") == 2
    err = capsys.readouterr().err
    assert "can be negative" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def _sign_graph() -> tuple[Graph, dict]:
    graph = Graph()
    x = graph.add_input("x", 1, ("n", 4))
    zero = graph.add_initializer("zero", np.zeros(1, np.float32))
    values = {
        "clip0": graph.add_op("Clip", [x, zero]).outputs[0],
        "max0": graph.add_op("Max", [x, zero]).outputs[0],
        "abs": graph.add_op("Abs", [x]).outputs[0],
        "tanh": graph.add_op("Tanh", [x]).outputs[0],
    }
    values["pooled_sum"] = graph.add_op("Add", [values["abs"], values["clip0"]]).outputs[0]
    values["mixed_sum"] = graph.add_op("Add", [values["abs"], values["tanh"]]).outputs[0]
    values["sq_reshaped"] = graph.add_op("Flatten", [graph.add_op("Pow", [values["max0"], x]).outputs[0]]).outputs[0]
    return graph, values


@pytest.mark.parametrize(("name", "non_negative"), [
    ("clip0", True), ("max0", True), ("abs", True), ("pooled_sum", True), ("sq_reshaped", True),
    ("tanh", False), ("mixed_sum", False),
])
def test_sign_analysis(name, non_negative):
    graph, values = _sign_graph()
    reason = negativity_reason(graph, values[name])
    assert (reason is None) == non_negative
    if not non_negative:
        assert "Tanh" in reason
