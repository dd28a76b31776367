"""The interpreter (IR -> torch module): equality with onnxruntime over the coverage list, naming of
parameters, frozen control-flow bodies, unsupported ops, write-back."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper, version_converter

from graphsurg import serde
from graphsurg.errors import BadInputError
from graphsurg.train.interpreter import GraphModule

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
import _train_helpers as H  # noqa: E402

CORPUS = Path(onnx.__file__).parent / "backend" / "test" / "data"
TOLERANCE = 1e-4


def _session(proto: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _reference(proto: onnx.ModelProto, feeds: list[np.ndarray]) -> tuple[list[np.ndarray] | None, str]:
    """onnxruntime's outputs, from the model as it is or (opset < 7, which this onnxruntime no longer
    runs) from the model converted to opset 13; None when onnxruntime cannot run either."""
    for how, candidate in (("onnxruntime", lambda: proto),
                           ("onnxruntime on opset 13", lambda: version_converter.convert_version(proto, 13))):
        try:
            session = _session(candidate())
            names = [i.name for i in session.get_inputs()]
            return session.run(None, dict(zip(names, feeds, strict=True))), how
        except Exception:  # noqa: BLE001 - onnxruntime's pybind errors; try the next way
            continue
    return None, "stored outputs"


def _interpret(model, feeds: list[np.ndarray]) -> list[np.ndarray]:
    module = GraphModule(model).eval()
    with torch.no_grad():
        return [o.numpy() for o in module(*[torch.from_numpy(np.array(f)) for f in feeds])]


def _max_diff(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    assert len(got) == len(want)
    return max(float(np.abs(g.astype(np.float64) - np.asarray(w, np.float64)).max()) if g.size else 0.0
               for g, w in zip(got, want, strict=True))


def _corpus_cases():
    folders = [(corpus, CORPUS / corpus) for corpus in ("pytorch-converted", "pytorch-operator")]
    folders.append(("dynamo", H.ROOT / "tests" / "fixtures" / "dynamo"))
    for corpus, root in folders:
        for folder in sorted(f for f in root.iterdir() if (f / "model.onnx").is_file()):
            data = folder / "test_data_set_0"
            feeds = [numpy_helper.to_array(onnx.load_tensor(str(p))) for p in sorted(data.glob("input_*.pb"))]
            stored = [numpy_helper.to_array(onnx.load_tensor(str(p))) for p in sorted(data.glob("output_*.pb"))]
            yield f"{corpus}/{folder.name}", folder / "model.onnx", feeds, stored


def test_forward_equals_onnxruntime_on_the_coverage_list(tmp_path, capsys):
    """Bundled models, the onnx wheel's pytorch-converted and pytorch-operator corpora, a BERT-style
    encoder exported by torch.onnx, and the dynamo exporter's fixtures: the interpreter's forward
    equals onnxruntime within 1e-4."""
    x = np.load(H.TEST)["input"][:64]
    cases = [(f"bundled/{m}", H.MODELS / f"{m}.onnx", [x], None) for m in ("digits_mlp", "digits_cnn", "digits_vit")]
    cases += list(_corpus_cases())
    bert, feeds = H.bert_encoder(tmp_path / "bert.onnx")
    cases.append(("torch.onnx/bert_encoder", bert, [feeds["ids"], feeds["mask"]], None))
    failures, how_counts = [], {}
    for label, path, feeds, stored in cases:
        proto = onnx.load(str(path))
        got = _interpret(serde.load(path), feeds)
        want, how = _reference(proto, feeds)
        how_counts[how] = how_counts.get(how, 0) + 1
        diffs = [_max_diff(got, want)] if want is not None else []
        diffs += [_max_diff(got, stored)] if stored else []
        if not diffs or max(diffs) > TOLERANCE:
            failures.append(f"{label}: {diffs}")
    with capsys.disabled():
        print(f"\ninterpreter coverage: {len(cases) - len(failures)}/{len(cases)} models within {TOLERANCE} "
              f"(reference: {how_counts}; corpus models also against their stored outputs)")
    assert not failures, failures
    # Only PReLU with a per-channel slope in opset 6 is beyond this onnxruntime, even converted.
    assert how_counts.get("stored outputs", 0) <= 3


def _single_op_model(op_type: str, domain: str = "") -> onnx.ModelProto:
    node = helper.make_node(op_type, ["x"], ["y"], domain=domain)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets)


def test_an_op_without_implementation_is_named():
    with pytest.raises(BadInputError, match=r"no torch implementation of com\.example::Frobnicate"):
        GraphModule(serde.load(_single_op_model("Frobnicate", "com.example")))
    with pytest.raises(BadInputError, match="no torch implementation of ImageDecoder"):
        GraphModule(serde.load(_single_op_model("ImageDecoder")))


def _control_flow_model() -> onnx.ModelProto:
    """y = If(sum(x) > 0, x * w_then, x - 1); z = Loop 3 times acc += x * w; s = Scan cumulative sum of rows.
    The If branch and the Loop body read outer values (x, w) and the then-branch has its own initializer."""
    f = TensorProto.FLOAT
    w = numpy_helper.from_array(np.array([2.0, 3.0], np.float32), "w")
    then_init = numpy_helper.from_array(np.array([0.5, 0.5], np.float32), "w_then")
    then_branch = helper.make_graph([helper.make_node("Mul", ["x", "w_then"], ["t_out"])], "then", [],
                                    [helper.make_tensor_value_info("t_out", f, [2])], [then_init])
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    else_branch = helper.make_graph([helper.make_node("Sub", ["x", "one"], ["e_out"])], "else", [],
                                    [helper.make_tensor_value_info("e_out", f, [2])], [one])
    body = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["xw"]), helper.make_node("Add", ["acc_in", "xw"], ["acc_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in",
                                                                                                 TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", f, [2])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", f, [2])])
    scan_body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "row"], ["s_out"]), helper.make_node("Identity", ["s_out"], ["s_scan"])],
        "scan_body", [helper.make_tensor_value_info("s_in", f, [2]), helper.make_tensor_value_info("row", f, [2])],
        [helper.make_tensor_value_info("s_out", f, [2]), helper.make_tensor_value_info("s_scan", f, [2])])
    consts = [numpy_helper.from_array(np.array(3, np.int64), "trips"), numpy_helper.from_array(np.array(True), "true"),
              numpy_helper.from_array(np.zeros(2, np.float32), "zeros"), w]
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["positive"]),
        helper.make_node("If", ["positive"], ["y"], then_branch=then_branch, else_branch=else_branch),
        helper.make_node("Loop", ["trips", "true", "zeros"], ["z"], body=body),
        helper.make_node("Scan", ["zeros", "rows"], ["s_final", "s_all"], body=scan_body, num_scan_inputs=1),
    ]
    consts.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero"))
    graph = helper.make_graph(nodes, "control", [helper.make_tensor_value_info("x", f, [2]),
                                                 helper.make_tensor_value_info("rows", f, [3, 2])],
                              [helper.make_tensor_value_info(n, f, shape) for n, shape in
                               (("y", [2]), ("z", [2]), ("s_final", [2]), ("s_all", [3, 2]))],
                              consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_control_flow_runs_as_frozen_regions(sign):
    proto = _control_flow_model()
    onnx.checker.check_model(proto, full_check=True)
    feeds = [np.array([1.5, -0.5], np.float32) * sign, np.arange(6, dtype=np.float32).reshape(3, 2)]
    module = GraphModule(serde.load(proto))
    got = module(*[torch.from_numpy(f) for f in feeds])
    want = _session(proto).run(None, {"x": feeds[0], "rows": feeds[1]})
    assert _max_diff([g.detach().numpy() for g in got], want) < TOLERANCE
    # The body's own initializer is a buffer; the outer `w` read inside the Loop body is frozen too
    # (read only by the body), and no gradient reaches anything through a region's outputs.
    assert set(module.parameter_names()) == set()
    assert "state.w_then" in dict(module.named_buffers()) and "state.w" in dict(module.named_buffers())
    assert not any(o.requires_grad for o in got)


def test_parameters_are_named_after_their_values():
    model = serde.load(H.MODELS / "digits_vit.onnx")
    module = GraphModule(model)
    names = module.parameter_names()
    assert names["blocks.0.attn.q.bias"] == "weights.blocks_0_attn_q_bias"
    assert names["onnx::MatMul_142"] == "weights.onnx__MatMul_142"
    assert all(module.onnx_names[torch_name] == onnx_name for onnx_name, torch_name in names.items())
    float_inits = {v.name for v in model.graph.initializers.values() if v.const.shape != ()}
    assert set(names) == float_inits  # rank-0 constants are buffers, everything else trains
    cnn = GraphModule(serde.load(H.MODELS / "digits_cnn.onnx"))
    buffers = {cnn.onnx_names[n] for n in dict(cnn.named_buffers()) if n in cnn.onnx_names}
    assert {"net.0.1.running_mean", "net.0.1.running_var"} <= buffers  # BN statistics are buffers
    assert "net.0.1.weight" in cnn.parameter_names()


def test_write_back_changes_only_what_trained():
    model = serde.load(H.MODELS / "digits_mlp.onnx")
    untouched = model.graph.initializers["net.1.weight"].const
    module = GraphModule(model)
    with torch.no_grad():
        module.parameter("net.5.bias").add_(1.0)
    assert module.write_back() == ["net.5.bias"]
    assert model.graph.initializers["net.1.weight"].const is untouched  # lazy tensors stay as loaded
    x = np.load(H.TEST)["input"][:16]
    with torch.no_grad():
        got = module(torch.from_numpy(x))[0].numpy()
    want = _session(serde.to_proto(model)).run(None, {"input": x})[0]
    assert np.abs(got - want).max() < TOLERANCE
    onnx.checker.check_model(serde.to_proto(model), full_check=True)


def test_a_failing_op_is_named_in_the_error():
    module = GraphModule(serde.load(H.MODELS / "digits_mlp.onnx"))
    with pytest.raises(BadInputError, match=r"Gemm node .* failed"):
        module(torch.zeros(2, 1, 8, 9))
