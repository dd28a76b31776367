"""convert-opset: move a model to another opset of the default domain."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, fields

from graphsurg import serde
from graphsurg.ir import Model
from graphsurg.pipeline import Pass, PassContext, PassResult


@dataclass(frozen=True)
class ConvertOpsetParams:
    version: int = 17  # the target opset of the default domain

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError("version must be a positive opset number")


class ConvertOpset(Pass):
    """Converts the model to `version` of the default-domain opset with onnx's version converter.

    Old exports (opset < 10) have no QuantizeLinear/DequantizeLinear, so `quantize` refuses them;
    `convert-opset{version=13}` first makes them quantizable. Handles upgrades and downgrades the
    converter has adapters for (ops whose signature changed are rewritten, e.g. attributes that
    became inputs); the IR version is raised to the lowest the target opset allows, and then
    initializers an IR version 3 file listed as inputs are no longer written there. Weights keep
    their names and values. Refuses (exit 2, the converter's reason) versions outside the
    converter's range and ops it has no adapter for; a model already at `version` is left as it is.
    """

    name = "convert-opset"
    Params = ConvertOpsetParams

    def run(self, model: Model, ctx: PassContext, result: PassResult) -> None:
        before, ir_before = model.opset, model.ir_version
        if before == self.params.version:
            result.summary = f"already at opset {before}"
            return
        ops_before = Counter(op.op_type for op in model.graph.ops)
        converted = serde.convert_opset(model, self.params.version)
        for field in fields(Model):
            if field.name != "source_dir":
                setattr(model, field.name, getattr(converted, field.name))
        ops_after = Counter(op.op_type for op in model.graph.ops)
        result.modified = True
        result.changes = {"opset": [before, model.opset], "ir_version": [ir_before, model.ir_version],
                          "ops_added": dict(ops_after - ops_before), "ops_removed": dict(ops_before - ops_after)}
        result.summary = f"opset {before} -> {model.opset}, IR version {ir_before} -> {model.ir_version}"
