"""Round trip (load -> IR -> save) of every model of the onnx wheel's backend test data and of
the bundled models.

For each model: the IR verifies, the saved file passes `onnx.checker.check_model(full_check=True)`,
it is byte-identical to protobuf's deterministic serialization of the original (nothing lost,
nothing added), and onnxruntime gives the same outputs for it as for the original: bit-exact
(`np.array_equal`) where the original is deterministic. `simple`, `pytorch-converted` and
`pytorch-operator` run on their shipped test_data_set inputs; `light` models (no inputs shipped)
on seeded synthetic inputs; the bundled digits models on the digits test split; `dynamo`
(tests/fixtures/dynamo: the digits CNN and ViT and a BERT-style encoder as torch's dynamo exporter
writes them) on their test_data_set inputs. `real` holds only download stubs and is not used.

Expected failures: only models onnxruntime itself cannot run (listed below with the reason; the
test asserts the reason is still the one onnxruntime gives). Those are still round-tripped and
checked, and compared with onnx's reference evaluator where it can run them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from graphsurg import serde
from graphsurg.pipeline import make_pass, run_passes

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
BUNDLED = ["digits_mlp", "digits_cnn", "digits_vit"]
ONNX_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
KINDS_WITH_DATA = ("simple", "pytorch-converted", "pytorch-operator")
DYNAMO = ROOT / "tests" / "fixtures" / "dynamo"


@dataclass(frozen=True)
class Unrunnable:
    """Why onnxruntime cannot run a model; `marker` must appear in onnxruntime's error."""

    marker: str
    why: str
    environment: bool = False  # depends on the machine (may run elsewhere)


def _opset6(op: str) -> Unrunnable:
    return Unrunnable(f"Could not find an implementation for {op}",
                      f"opset-6 model: onnxruntime has no CPU kernel for {op} (it implements opset >= 7)")


_LOCALE = Unrunnable("Failed to construct locale",
                     "StringNormalizer needs the en_US.UTF-8 locale, which this machine lacks", environment=True)
_TRAINING = Unrunnable("ai.onnx.preview.training",
                       "the Gradient op of ai.onnx.preview.training is not in onnxruntime's inference build")

ORT_CANNOT_RUN: dict[str, Unrunnable] = {
    **{name: _opset6("AveragePool(1)") for name in (
        "test_AvgPool1d", "test_AvgPool1d_stride", "test_AvgPool2d", "test_AvgPool2d_stride", "test_AvgPool3d",
        "test_AvgPool3d_stride", "test_AvgPool3d_stride1_pad0_gpu_input")},
    **{name: _opset6("BatchNormalization(6)") for name in (
        "test_BatchNorm1d_3d_input_eval", "test_BatchNorm2d_eval", "test_BatchNorm2d_momentum_eval",
        "test_BatchNorm3d_eval", "test_BatchNorm3d_momentum_eval")},
    **{name: _opset6("PRelu(6)") for name in (
        "test_PReLU_1d", "test_PReLU_1d_multiparam", "test_PReLU_2d", "test_PReLU_2d_multiparam", "test_PReLU_3d",
        "test_PReLU_3d_multiparam")},
    **{name: _opset6("Mul(6)") for name in ("test_GLU", "test_GLU_dim", "test_PoissonNLLLLoss_no_reduce")},
    **{name: _opset6("Gemm(6)") for name in ("test_Linear", "test_operator_addmm", "test_operator_mm")},
    **{name: _opset6("Add(6)") for name in (
        "test_Softsign", "test_operator_add_broadcast", "test_operator_add_size1_broadcast",
        "test_operator_add_size1_right_broadcast", "test_operator_add_size1_singleton_broadcast",
        "test_operator_addconstant", "test_operator_basic", "test_operator_non_float_params",
        "test_operator_params")},
    "test_operator_pow": _opset6("Pow(1)"),
    "test_gradient_of_add": _TRAINING,
    "test_gradient_of_add_and_mul": _TRAINING,
    **{name: _LOCALE for name in (
        "test_strnorm_model_monday_casesensintive_lower", "test_strnorm_model_monday_casesensintive_upper",
        "test_strnorm_model_monday_empty_output", "test_strnorm_model_monday_insensintive_upper_twodim")},
}


@dataclass(frozen=True)
class Case:
    kind: str
    name: str
    path: Path
    data_dir: Path | None  # test_data_set_0 with input_N.pb, when shipped

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


def _cases_in(root: Path, kind: str) -> list[Case]:
    """The onnx corpus layout: <name>/model.onnx with an optional <name>/test_data_set_0."""
    cases = []
    for folder in sorted(root.iterdir()):
        if (folder / "model.onnx").is_file():
            data = folder / "test_data_set_0"
            cases.append(Case(kind, folder.name, folder / "model.onnx", data if data.is_dir() else None))
    return cases


def corpus_cases() -> list[Case]:
    cases = [case for kind in KINDS_WITH_DATA for case in _cases_in(ONNX_DATA / kind, kind)]
    for path in sorted((ONNX_DATA / "light").glob("*.onnx")):
        cases.append(Case("light", path.stem, path, None))
    for name in BUNDLED:
        cases.append(Case("bundled", name, MODELS / f"{name}.onnx", None))
    return cases + _cases_in(DYNAMO, "dynamo")


CASES = corpus_cases()
LIGHT = [c for c in CASES if c.kind == "light"]


def test_corpus_is_complete():
    """No model of the corpus is silently left out."""
    kinds = Counter(c.kind for c in CASES)
    assert all(kinds[k] > 0 for k in (*KINDS_WITH_DATA, "light", "bundled", "dynamo")), kinds
    on_disk = {p for k in KINDS_WITH_DATA for p in (ONNX_DATA / k).glob("*/model.onnx")}
    on_disk |= set((ONNX_DATA / "light").glob("*.onnx"))
    assert on_disk == {c.path for c in CASES if c.kind not in ("bundled", "dynamo")}
    assert set(ORT_CANNOT_RUN) <= {c.name for c in CASES}, "the expected-failure list names unknown models"
    print(f"\nround-trip corpus: {len(CASES)} models ({dict(kinds)})")


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in initializers]


def _read_pb(path: Path, vi: onnx.ValueInfoProto):
    data = path.read_bytes()
    kind = vi.type.WhichOneof("value")
    if kind == "sequence_type":
        proto = onnx.SequenceProto()
        proto.ParseFromString(data)
        return numpy_helper.to_list(proto)
    proto = onnx.TensorProto()
    proto.ParseFromString(data)
    return numpy_helper.to_array(proto)


def synthetic_feeds(model: onnx.ModelProto, seed: int = 0) -> dict:
    """Seeded standard-normal inputs (symbolic dims set to 1)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in _graph_inputs(model):
        tensor = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in tensor.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def case_feeds(case: Case) -> dict:
    model = onnx.load(case.path, load_external_data=False)
    if case.data_dir is not None:
        feeds = {}
        for i, vi in enumerate(_graph_inputs(model)):
            pb = case.data_dir / f"input_{i}.pb"
            if pb.is_file():
                feeds[vi.name] = _read_pb(pb, vi)
        return feeds
    if case.kind == "bundled":
        (vi,) = _graph_inputs(model)
        images = np.load(MODELS / "digits_test.npz")
        key = next(k for k in images.files if k != "labels")
        batch = images[key][:32].astype(np.float32)
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        return {vi.name: batch.reshape([len(batch), *dims[1:]])}
    return synthetic_feeds(model)


def _reference_outputs(path: Path, feeds: dict):
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(str(path)).run(None, feeds)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_round_trip(case: Case, tmp_path, corpus_stats, run_ort, same_outputs):
    ort_outputs, outputs_equal = run_ort, same_outputs
    model = serde.load(case.path)
    model.graph.verify()
    out = tmp_path / "model.onnx"
    serde.save(model, out)
    onnx.checker.check_model(str(out), full_check=True)
    canonical = onnx.load(case.path).SerializeToString(deterministic=True)
    assert out.read_bytes() == canonical, "the round trip changed the model's bytes"
    _count(corpus_stats, "models round-tripped, checked and byte-identical")

    feeds = case_feeds(case)
    expected_failure = ORT_CANNOT_RUN.get(case.name)
    try:
        expected = ort_outputs(case.path, feeds)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
        if expected_failure is None:
            raise AssertionError(f"onnxruntime cannot run the original {case}: {exc}") from None
        assert expected_failure.marker in str(exc), f"onnxruntime now fails differently: {exc}"
        _xfail_with_reference(case, out, feeds, expected_failure, corpus_stats, outputs_equal)
    if expected_failure is not None and not expected_failure.environment:
        pytest.fail(f"{case} is on the expected-failure list but onnxruntime runs it: remove it from the list")

    actual = ort_outputs(out, feeds)
    if outputs_equal(expected, ort_outputs(case.path, feeds)):
        assert outputs_equal(expected, actual), f"{case}: outputs differ after the round trip"
        _count(corpus_stats, "with bit-exact onnxruntime outputs")
    else:
        for a, b in zip(expected, actual, strict=True):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
        _count(corpus_stats, "with onnxruntime outputs within tolerance (nondeterministic original)")


def _count(stats: dict, key: str) -> None:
    stats[key] = stats.get(key, 0) + 1


def _xfail_with_reference(case, out, feeds, failure: Unrunnable, stats, outputs_equal) -> None:
    try:
        expected = _reference_outputs(case.path, feeds)
    except Exception:  # noqa: BLE001 - the reference evaluator lacks some ops too
        _count(stats, "expected failures (onnxruntime cannot run them)")
        pytest.xfail(failure.why)
    assert outputs_equal(expected, _reference_outputs(out, feeds)), f"{case}: reference outputs differ"
    _count(stats, "expected failures (onnxruntime cannot run them)")
    _count(stats, "of those with equal outputs on onnx's reference evaluator")
    pytest.xfail(f"{failure.why} (outputs equal on onnx's reference evaluator)")


@pytest.mark.slow
@pytest.mark.parametrize("case", LIGHT, ids=str)
def test_light_fold_cleanup_keeps_outputs(case: Case, tmp_path, run_ort):
    """fold-constants turns the ConstantOfShape weights into initializers and drops the shape
    initializers only they read (IR version 3: listed as inputs, yet constants); onnxruntime's
    outputs do not change."""
    model = serde.load(case.path)
    generators = sum(op.op_type == "ConstantOfShape" for op in model.graph.ops)
    record = run_passes(model, [make_pass("fold-constants"), make_pass("cleanup")])
    assert record.results[0].changes["folded"].get("ConstantOfShape") == generators
    assert not any(op.op_type == "ConstantOfShape" for op in model.graph.ops)
    assert len(record.results[0].changes["initializers_removed"]) >= generators, "the shapes should be gone"
    assert not any(name.endswith("_SHAPE") for name in model.graph.initializers)
    model.graph.verify()
    out = tmp_path / "folded.onnx"
    serde.save(model, out)
    onnx.checker.check_model(str(out), full_check=True)
    feeds = case_feeds(case)
    expected, actual = run_ort(case.path, feeds), run_ort(out, feeds)
    for a, b in zip(expected, actual, strict=True):
        np.testing.assert_array_equal(b, a)
