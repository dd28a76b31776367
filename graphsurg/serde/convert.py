"""Opset conversion with onnx's version converter (its adapters rewrite ops whose signature
changed between opsets, e.g. Upsample scales or Clip bounds moving from attributes to inputs)."""

from __future__ import annotations

import onnx
import onnx.version_converter

from graphsurg.errors import BadInputError
from graphsurg.ir import Model
from graphsurg.serde.load import from_proto
from graphsurg.serde.save import to_proto


def convert_opset(model: Model, version: int) -> Model:
    """A new model at `version` of the default domain, its IR version raised to the lowest that
    opset allows. The weights go through the converter in memory (it reads some of them)."""
    try:
        converted = onnx.version_converter.convert_version(to_proto(model), version)
    except (RuntimeError, IndexError, onnx.checker.ValidationError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise BadInputError(f"onnx's version converter cannot take this model from opset {model.opset} to "
                            f"{version}: {_short(reason)}") from None
    result = from_proto(converted, model.source_dir)  # at the old IR version: IR 3 listings are read as such
    minimum = onnx.helper.find_min_ir_version_for(list(converted.opset_import), ignore_unknown=True)
    result.ir_version = max(result.ir_version, minimum)
    return result


def _short(reason: str) -> str:
    """The converter's messages start with a C++ source location and an assertion."""
    return reason.split("failed: ", 1)[-1].removeprefix("Warning: ")
