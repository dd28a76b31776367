"""The evaluator: onnxruntime runner, datasets, metrics, per-layer comparison (the only onnxruntime user).

    from graphsurg.eval import Runner, evaluate, open_dataset

    data = open_dataset("models/digits_test.npz", model)       # checked against the model's inputs
    runner = Runner(model, provider="cpu", threads=2)          # IR model or path
    for batch, outputs in runner.iterate(data, batch_size=64):  # outputs: {name: array}
        ...
    result = evaluate(model, "models/digits_test.npz", ref=original)  # the `eval --json` dict
"""

from graphsurg.eval.data import (
    ArrayDataset,
    Batch,
    Dataset,
    InputSpec,
    Signature,
    SyntheticDataset,
    TestDataDataset,
    open_dataset,
    parse_dims,
    signature,
)
from graphsurg.eval.metrics import ErrorStats, Fidelity, TaskMetrics
from graphsurg.eval.runner import Runner, available_providers, choose_provider, intermediate_names
from graphsurg.eval.service import evaluate

__all__ = [
    "ArrayDataset", "Batch", "Dataset", "ErrorStats", "Fidelity", "InputSpec", "Runner", "Signature",
    "SyntheticDataset", "TaskMetrics", "TestDataDataset", "available_providers", "choose_provider", "evaluate",
    "intermediate_names", "open_dataset", "parse_dims", "signature",
]
