"""A model: the main graph plus what ONNX keeps around it."""

from __future__ import annotations

from dataclasses import dataclass, field

from graphsurg.ir.graph import Graph, all_graphs


@dataclass
class Model:
    graph: Graph
    ir_version: int = 10
    opset_imports: dict[str, int] = field(default_factory=lambda: {"": 21})
    producer_name: str = ""
    producer_version: str = ""
    domain: str = ""
    model_version: int = 0
    doc_string: str = ""
    metadata_props: dict[str, str] = field(default_factory=dict)
    functions: list[bytes] = field(default_factory=list)  # serialized FunctionProtos, kept as they came
    rest_blob: bytes | None = None  # ModelProto fields the IR does not model (training_info, configuration)
    source_dir: str | None = None  # folder external data was resolved against
    # proto fields written even when empty (they were present in the loaded file); by default the
    # default-domain opset entry names its domain, as onnx.helper writes it
    explicit_fields: frozenset[str] = frozenset({"opset_import.domain"})

    @property
    def opset(self) -> int:
        return self.opset_imports.get("", self.opset_imports.get("ai.onnx", 0))

    def parameter_count(self) -> int:
        return sum(v.const.size for g in all_graphs(self.graph) for v in g.initializers.values())
