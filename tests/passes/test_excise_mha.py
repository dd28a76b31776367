"""excise on torch's nn.MultiheadAttention (TransformerEncoderLayer, TransformerDecoderLayer),
exported with the TorchScript exporter: a packed in-projection unflattened into (q, k, v)
segments, heads folded into the symbolic batch (seq, batch*heads, head_dim), a key padding mask
expanded over the heads, and the head count and width computed from Shape. And the BERT-style
encoder as the dynamo exporter writes it (tests/fixtures/dynamo): q, k and v picked from the
packed projection by Gather, heads unfolded again as (batch, heads, seq, head_dim), k's head
split rebuilt from its own Shape, one expanded mask and one set of target shapes shared by both
layers.

The oracle: removing head h is the same function as zeroing head h's columns of out_proj in the
original model (the head reaches the output only through them)."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
nn = torch.nn

from graphsurg import serde  # noqa: E402
from graphsurg.pipeline import make_pass, run_passes  # noqa: E402

DIM, HEADS = 32, 4
RNG = np.random.default_rng(3)


class Encoder(nn.Module):
    def __init__(self, batch_first: bool, norm_first: bool, layers: int = 1):
        super().__init__()
        layer = nn.TransformerEncoderLayer(DIM, HEADS, 64, dropout=0.0, batch_first=batch_first,
                                           norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, x, mask=None):
        return self.encoder(x, src_key_padding_mask=mask)


class Decoder(nn.Module):
    """Causal self-attention, and cross-attention whose q and k/v rows are cut from one packed
    in_proj_weight at run time (Slices with bounds computed from Shape)."""

    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerDecoderLayer(DIM, HEADS, 64, dropout=0.0, batch_first=True)

    def forward(self, x, memory, memory_mask):
        causal = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        return self.layer(x, memory, tgt_mask=causal, memory_key_padding_mask=memory_mask)


class KeyValueWidth(nn.Module):
    """kdim = vdim != embed_dim: separate q, k and v projections. need_weights (the default)
    computes attention in the folded (batch*heads, seq, keys) layout."""

    def __init__(self, need_weights: bool):
        super().__init__()
        self.attn = nn.MultiheadAttention(DIM, HEADS, kdim=24, vdim=24, batch_first=True)
        self.need_weights = need_weights

    def forward(self, x, memory, memory_mask):
        return self.attn(x, memory, memory, key_padding_mask=memory_mask, need_weights=self.need_weights)[0]


def trained_like(module: nn.Module) -> nn.Module:
    """Noise on every parameter: TransformerEncoder clones its layer, and identical weights
    would be exported as shared initializers (which the pass rightly refuses)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return module.eval()


def export(module: nn.Module, inputs: dict[str, np.ndarray], dynamic: dict) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter notices
        torch.onnx.export(module, tuple(torch.from_numpy(a) for a in inputs.values()), buffer, dynamo=False,
                          opset_version=17, input_names=list(inputs), output_names=["y"], dynamic_axes=dynamic)
    return onnx.load_from_string(buffer.getvalue())


def excise_heads(model: onnx.ModelProto, spec: str = "excise{target=heads,ratio=0.5}"):
    ir = serde.load(model)
    result = run_passes(ir, [make_pass(spec)]).results[0]  # includes onnx's full check
    return ir, result


def legacy_out_proj(in_proj: str) -> str:
    """The TorchScript exporter names ops after module paths (/layer/self_attn/MatMul)."""
    return ".".join(in_proj.strip("/").split("/")[:-1]) + ".out_proj.weight"


def heads_zeroed(model: onnx.ModelProto, groups: list[dict],
                 out_proj: Callable[[str], str] = legacy_out_proj) -> onnx.ModelProto:
    """The original with the out_proj columns of every removed head set to zero."""
    cuts = {}
    for group in groups:
        in_proj = group["layers"][0]  # q's columns come first, as heads in order
        heads = sorted({c // (DIM // HEADS) for c in group["removed"][in_proj] if c < DIM})
        cuts[out_proj(in_proj)] = (1, [c for h in heads for c in range(h * DIM // HEADS, (h + 1) * DIM // HEADS)])
    return zeroed(model, cuts)


def zeroed(model: onnx.ModelProto, cuts: dict[str, tuple[int, list[int]]]) -> onnx.ModelProto:
    """A copy of `model` whose initializers named in `cuts` have the (axis, indices) given set to zero."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for tensor in copy.graph.initializer:
        if tensor.name in cuts:
            axis, indices = cuts[tensor.name]
            array = numpy_helper.to_array(tensor).copy()
            array[(slice(None),) * axis + (indices,)] = 0
            tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    return copy


def max_difference(a: bytes, b: bytes, feeds: list[dict]) -> float:
    first, second = (ort.InferenceSession(m, providers=["CPUExecutionProvider"]) for m in (a, b))
    return max(float(np.abs(x - y).max()) for f in feeds for x, y in zip(first.run(None, f), second.run(None, f),
                                                                            strict=True))


def sequence(batch: int, length: int, batch_first: bool, width: int = DIM) -> np.ndarray:
    shape = (batch, length, width) if batch_first else (length, batch, width)
    return RNG.normal(size=shape).astype(np.float32)


def padding(batch: int, length: int) -> np.ndarray:
    mask = np.zeros((batch, length), dtype=bool)
    mask[-1, length // 2:] = True  # the last sequence is padded
    return mask


def check_heads_removed(model: onnx.ModelProto, feeds: list[dict], layers: int,
                        spec: str = "excise{target=heads,ratio=0.5}",
                        out_proj: Callable[[str], str] = legacy_out_proj):
    ir, result = excise_heads(model, spec)
    heads = [g for g in result.changes["groups"] if g["kind"] == "heads"]
    assert len(heads) == layers and all(g["status"] == "excised" and g["units"] == HEADS for g in heads), heads
    assert all(len(g["removed_units"]) == HEADS // 2 for g in heads)
    onnx.checker.check_model(serde.to_proto(ir), full_check=True)
    assert result.changes["parameters_after"] < result.changes["parameters_before"]
    oracle = heads_zeroed(model, heads, out_proj).SerializeToString()
    assert max_difference(serde.to_bytes(ir), oracle, feeds) <= 1e-5
    return ir, result.changes


# The legacy exporter bakes the example's key length into k's and v's view (torch computes it from
# k.shape[0] of the unbound packed projection), so these models run only at the exported length.
@pytest.mark.parametrize(("batch_first", "masked", "norm_first", "layers"), [
    (True, True, False, 2), (False, True, True, 1), (False, False, False, 1), (True, False, True, 1)])
def test_encoder_layer_loses_heads_like_zeroed_out_projection(batch_first, masked, norm_first, layers):
    length = 6
    module = trained_like(Encoder(batch_first, norm_first, layers))
    axes = {0: "batch", 1: "seq"} if batch_first else {0: "seq", 1: "batch"}
    example = {"x": sequence(2, length, batch_first)} | ({"mask": padding(2, length)} if masked else {})
    dynamic = {"x": axes, "y": axes} | ({"mask": {0: "batch", 1: "seq"}} if masked else {})
    feeds = [{"x": sequence(batch, length, batch_first)} | ({"mask": padding(batch, length)} if masked else {})
             for batch in (1, 3)]
    check_heads_removed(export(module, example, dynamic), feeds, layers)


@pytest.mark.parametrize("need_weights", [True, False])
def test_separate_key_value_projections_lose_heads_at_any_length(need_weights):
    module = trained_like(KeyValueWidth(need_weights))
    example = {"x": sequence(2, 5, True), "memory": sequence(2, 7, True, 24), "memory_mask": padding(2, 7)}
    dynamic = {"x": {0: "batch", 1: "seq"}, "memory": {0: "batch", 1: "keys"}, "memory_mask": {0: "batch", 1: "keys"},
               "y": {0: "batch", 1: "seq"}}
    feeds = [{"x": sequence(batch, length, True), "memory": sequence(batch, keys, True, 24),
              "memory_mask": padding(batch, keys)} for batch, length, keys in ((1, 5, 7), (3, 16, 4))]
    _, changes = check_heads_removed(export(module, example, dynamic), feeds, 1)
    assert changes["groups"][0]["layers"] == ["/attn/MatMul", "/attn/MatMul_1", "/attn/MatMul_2"]


def test_decoder_layer_loses_self_and_cross_attention_heads():
    module = trained_like(Decoder())
    example = {"x": sequence(2, 5, True), "memory": sequence(2, 7, True), "memory_mask": padding(2, 7)}
    dynamic = {"x": {0: "batch"}, "memory": {0: "batch"}, "memory_mask": {0: "batch"}, "y": {0: "batch"}}
    feeds = [{"x": sequence(batch, 5, True), "memory": sequence(batch, 7, True), "memory_mask": padding(batch, 7)}
             for batch in (1, 3)]
    ir, changes = check_heads_removed(export(module, example, dynamic), feeds, 2)
    layers = [g["layers"] for g in changes["groups"] if g["kind"] == "heads"]
    assert layers == [["/layer/self_attn/MatMul"], ["/layer/multihead_attn/MatMul", "/layer/multihead_attn/MatMul_1"]]
    # q and k/v each got their own sliced copy; the packed weight and the Slices are gone
    assert "layer.multihead_attn.in_proj_weight" not in ir.graph.initializers


DYNAMO_ENCODER = Path(__file__).resolve().parents[1] / "fixtures" / "dynamo" / "dynamo_encoder"
# The dynamo exporter names ops after torch ops: each layer's packed in-projection MatMul, and
# the out_proj weight its heads reach.
DYNAMO_OUT_PROJ = {"node_MatMul_18": "encoder.layers.0.self_attn.out_proj.weight",
                   "node_MatMul_127": "encoder.layers.1.self_attn.out_proj.weight"}
# Each layer's feed-forward: linear1 (whose outputs the record lists) and linear2's weight (rows in).
DYNAMO_LINEAR2 = {"node_MatMul_123": "val_128", "node_MatMul_228": "val_237"}


def dynamo_feeds() -> list[dict]:
    """The stored inputs (3 x 12, one sequence padded), and other batch sizes and lengths (the
    export has no length baked in: the original runs at all of them)."""
    stored = [onnx.load_tensor(str(path)) for path in sorted((DYNAMO_ENCODER / "test_data_set_0").glob("input_*.pb"))]
    feeds = [{t.name: numpy_helper.to_array(t) for t in stored}]
    for batch, length in ((1, 5), (4, 16), (2, 1)):
        ids = RNG.integers(0, 100, (batch, length))
        mask = np.ones_like(ids)
        mask[-1, length // 2 + 1:] = 0
        feeds.append({"ids": ids, "mask": mask})
    return feeds


@pytest.mark.parametrize(("spec", "layers"), [
    ("excise{target=heads,ratio=0.5}", ["node_MatMul_18", "node_MatMul_127"]),
    # layers keeping different head counts: the target shapes and the mask they share are copied
    ("excise{target=heads,ratio=0.5,exclude=node_MatMul_127}", ["node_MatMul_18"])])
def test_dynamo_encoder_loses_each_layers_heads_like_zeroed_out_projection(spec, layers):
    model = onnx.load(DYNAMO_ENCODER / "model.onnx")
    _, changes = check_heads_removed(model, dynamo_feeds(), len(layers), spec, DYNAMO_OUT_PROJ.get)
    assert [g["layers"] for g in changes["groups"] if g["kind"] == "heads"] == [[name] for name in layers]


def test_dynamo_encoder_loses_heads_and_feed_forward_channels_together():
    """target=auto: removing linear1's output c is zeroing linear2's input row c (gelu(bias) of
    a removed channel reaches nothing else)."""
    model = onnx.load(DYNAMO_ENCODER / "model.onnx")
    ir, result = excise_heads(model, "excise{ratio=0.5}")
    groups = [g for g in result.changes["groups"] if g["status"] == "excised"]
    heads = [g for g in groups if g["kind"] == "heads"]
    feed_forward = {g["layers"][0]: g["removed"][g["layers"][0]] for g in groups if g["kind"] == "channels"}
    assert len(heads) == 2 and sorted(feed_forward) == sorted(DYNAMO_LINEAR2)
    assert all(len(rows) == 32 for rows in feed_forward.values())
    cuts = {DYNAMO_LINEAR2[layer]: (0, rows) for layer, rows in feed_forward.items()}
    oracle = zeroed(heads_zeroed(model, heads, DYNAMO_OUT_PROJ.get), cuts).SerializeToString()
    assert max_difference(serde.to_bytes(ir), oracle, dynamo_feeds()) <= 1e-5


@pytest.mark.parametrize("spec", ["excise{target=heads,ratio=0}", "excise{ratio=0.5,exclude=node_MatMul_*}"])
def test_dynamo_encoder_left_whole_is_left_as_it_was(spec):
    """The mask copies that keep layers apart serve only the grouping: a run that removes nothing
    takes them back and reports nothing changed; the ops and weights are saved as they were (the
    shapes the pass inferred stay in value_info)."""
    model = onnx.load(DYNAMO_ENCODER / "model.onnx")
    ir, result = excise_heads(model, spec)
    saved = onnx.load_from_string(serde.to_bytes(ir))
    assert not result.modified and result.changes["untied_copies"] == 0
    assert list(saved.graph.node) == list(model.graph.node)
    assert list(saved.graph.initializer) == list(model.graph.initializer)
