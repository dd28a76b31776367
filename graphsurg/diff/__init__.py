"""`graphsurg diff`: structural, weight and numeric differences between two models.

`diff_models(a, b)` matches the ops of the two IR models (names first, then structure; see
match.py), compares what matched and returns a `ModelDiff`, which renders as text (text.py),
JSON (`ModelDiff.to_json`, schema in report.py) and a self-contained HTML page (html.py).
"""

from __future__ import annotations

from graphsurg.diff.compare import GraphDiff, diff_graphs
from graphsurg.diff.report import SCHEMA, ModelDiff, model_changes
from graphsurg.ir import Model


def diff_models(a: Model, b: Model, path_a: str | None = None, path_b: str | None = None) -> ModelDiff:
    """Structural and weight diff of two loaded models (the numeric part is added by numeric.py)."""
    graph = diff_graphs(a.graph, b.graph)
    return ModelDiff(a, b, graph, model_changes(a, b), path_a, path_b)


def diff_files(path_a: str, path_b: str) -> ModelDiff:
    from graphsurg import serde

    return diff_models(serde.load(path_a), serde.load(path_b), str(path_a), str(path_b))


__all__ = ["SCHEMA", "GraphDiff", "ModelDiff", "diff_files", "diff_models"]
