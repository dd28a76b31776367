"""The orchestrator's guard rails, in process: a pass whose result fails validation (onnx's checker,
or an onnxruntime session that will not build) is named, the run stops and nothing is written.

The failing passes are small test passes registered for the run; they edit the real bundled
model through the IR, so the checker and onnxruntime see genuinely broken graphs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from graphsurg.cli import main
from graphsurg.ir import Model
from graphsurg.pipeline import Pass, PassContext, PassResult, registry

MODELS = Path(__file__).resolve().parents[2] / "models"


class UnknownOp(Pass):
    """Rewires the output through an op type no opset defines (the checker rejects it)."""

    name = "unknown-op"

    def run(self, model: Model, ctx: PassContext, result: PassResult) -> None:
        _wrap_output(model, "NoSuchOperator", "")
        result.modified = True


class CustomDomainOp(Pass):
    """Rewires the output through an op of a custom domain: the checker cannot judge it (no schema),
    but onnxruntime has no kernel for it, so no session builds."""

    name = "custom-domain-op"

    def run(self, model: Model, ctx: PassContext, result: PassResult) -> None:
        model.opset_imports["com.example.nowhere"] = 1
        _wrap_output(model, "Mystery", "com.example.nowhere")
        result.modified = True


def _wrap_output(model: Model, op_type: str, domain: str) -> None:
    graph = model.graph
    logits = graph.outputs[0]
    op = graph.add_op(op_type, [graph.producer(logits).inputs[0]], domain=domain)
    graph.set_input(graph.producer(logits), 0, op.outputs[0])
    op.outputs[0].dtype = logits.dtype


RECIPE = """model = "{models}/digits_mlp.onnx"
pipeline = ["cleanup", "{bad}"]

[data]
evaluation = "{models}/digits_test.npz"

[recovery]
enabled = false
"""


@pytest.fixture
def with_test_passes(monkeypatch):
    passes = {**registry.all_passes(), UnknownOp.name: UnknownOp, CustomDomainOp.name: CustomDomainOp}
    monkeypatch.setattr(registry, "all_passes", lambda: passes)


@pytest.mark.parametrize(("bad", "why"), [("unknown-op", "onnx's checker rejects"),
                                          ("custom-domain-op", "onnxruntime cannot load")])
def test_a_pass_that_fails_validation_is_named_and_nothing_is_written(with_test_passes, tmp_path: Path, capsys,
                                                                     bad: str, why: str) -> None:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.format(models=MODELS.as_posix(), bad=bad))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(recipe), "-o", str(out)])
    captured = capsys.readouterr()
    assert exit_info.value.code == 3  # a pass that breaks the model is graphsurg's fault, not the user's
    errors = [line for line in captured.err.splitlines() if line.startswith("graphsurg:")]
    assert errors == [errors[0]] and errors[0].startswith(f"graphsurg: error: pass {bad!r} ")
    assert why in errors[0]
    assert f"pass {bad}" in captured.err and "measure the edited model" not in captured.err
    assert captured.out == "" and not out.exists()
