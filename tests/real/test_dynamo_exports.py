"""The surgeries on models as torch's dynamo exporter writes them (tests/fixtures/dynamo, built by
its build.py): opset 20, BatchNorm already folded into Conv, a Gelu op, tensors named after
torch ops (`node_Conv_68`), value_info for every tensor, node metadata, and in the encoder a packed
attention in-projection split by Gather. Round trips and the function-preserving passes are
covered with the other corpora (test_roundtrip_corpus, test_passes_corpus); here the lossy passes
are measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphsurg import serde
from graphsurg.eval import evaluate
from graphsurg.pipeline import make_pass, run_passes
from graphsurg.services import DataSpec, build_context

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "dynamo"
TRAIN, TEST = ROOT / "models" / "digits_train.npz", ROOT / "models" / "digits_test.npz"
DIGITS = ["dynamo_digits_cnn", "dynamo_digits_vit"]


def fixture(name: str) -> Path:
    return FIXTURES / name / "model.onnx"


def node_metadata(model_bytes: bytes) -> dict[str, list[tuple[str, str]]]:
    proto = onnx.load_from_string(model_bytes)
    return {n.name: [(p.key, p.value) for p in n.metadata_props] for n in proto.graph.node if n.name}


@pytest.mark.parametrize("name", DIGITS)
def test_quantized_dynamo_export_keeps_its_predictions(name, capsys):
    model = serde.load(fixture(name))
    ctx = build_context(DataSpec(str(TRAIN)))
    result = run_passes(model, [make_pass("quantize")], ctx).results[0]
    metrics = evaluate(model, str(TEST), ref=str(fixture(name)))["metrics"]
    with capsys.disabled():
        print(f"\n{name} quantized: {result.summary}; agreement {metrics['agreement']:.4f}, "
              f"SQNR {metrics['sqnr_db']:.1f} dB")
    assert result.modified and metrics["agreement"] >= 0.98
    # the exporter's node metadata (module path, fx node) stays on every op the pass kept
    before, after = node_metadata(fixture(name).read_bytes()), node_metadata(serde.to_bytes(model))
    assert all(after[n] == meta for n, meta in before.items() if n in after)
    assert any(after.values())


def test_excised_dynamo_cnn_runs_and_recovers():
    """This export flattens the pooled features with an `as_strided` lowered to a Gather whose
    indices are computed from the symbolic batch size: the last conv's channels stay (with that
    reason); the residual stream and the block's inner conv shrink."""
    from graphsurg.train.data import load_arrays
    from graphsurg.train.recover import RecoverOptions, recover

    model = serde.load(fixture("dynamo_digits_cnn"))
    record = run_passes(model, [make_pass("excise{ratio=0.5}")])
    groups = record.results[0].changes["groups"]
    assert [g["status"] for g in groups].count("excised") == 2
    assert any("node_as_strided" in g["reason"] for g in groups if g["status"] == "refused")
    assert model.parameter_count() < 0.5 * serde.load(fixture("dynamo_digits_cnn")).parameter_count()
    excised = evaluate(model, str(TEST))["metrics"]["accuracy"]
    recover(model, load_arrays(str(TRAIN), model, "labels"), serde.load(fixture("dynamo_digits_cnn")),
            RecoverOptions(epochs=5, lr=1e-2, batch_size=16, progress=False))
    recovered = evaluate(model, str(TEST))["metrics"]["accuracy"]
    # measured: 0.158 straight after excision, 0.947 after five epochs (no BatchNorm left to retune)
    assert record.results[0].modified and recovered > max(excised, 0.9), (excised, recovered)


def test_excised_dynamo_encoder_shrinks_its_attention_and_feed_forward_layers_and_runs_at_any_size():
    """Each layer loses half its heads and half its feed-forward channels, as independent groups
    (the expanded mask and the target shapes both layers share are copied per reader); the
    embeddings' channels reach the output `hidden` and stay."""
    model = serde.load(fixture("dynamo_encoder"))
    result = run_passes(model, [make_pass("excise{ratio=0.5}")]).results[0]
    groups = result.changes["groups"]
    excised = {kind: [g for g in groups if g["status"] == "excised" and g["kind"] == kind]
               for kind in ("heads", "channels")}
    assert [len(g["layers"]) for g in excised["heads"]] == [1, 1] and len(excised["channels"]) == 2
    assert all(len(g["removed_units"]) == g["units"] // 2 for g in excised["heads"] + excised["channels"])
    assert all("reach the graph output" in g["reason"] for g in groups if g["status"] == "refused")
    assert result.changes["parameters_after"] < 0.65 * result.changes["parameters_before"]
    session = ort.InferenceSession(serde.to_bytes(model), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch, seq in ((1, 5), (4, 16)):
        ids = rng.integers(0, 100, (batch, seq))
        mask = np.ones_like(ids)
        mask[-1, seq // 2:] = 0
        hidden, pooled = session.run(None, {"ids": ids, "mask": mask})
        assert hidden.shape == (batch, seq, 32) and pooled.shape == (batch, 32)
        assert np.isfinite(hidden).all()
