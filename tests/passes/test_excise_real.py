"""excise on real torch exports (torch.onnx.export, TorchScript exporter): symbolic batch and
sequence, fused QKV split by `chunk` (Slices whose bounds come from Shape), `view(b, s, h, -1)`
and `reshape(b, s, d)` targets computed from Shape, LayerNorm parameters shared through Identity,
a LayerNorm decomposed into ReduceMean/Sub/Pow/Sqrt/Div with weights behind Transpose, and a CNN
(residual, depthwise separable, flatten into a Linear) whose weights sit in Constant nodes."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

from graphsurg.passes._excise_weights import constant_array  # noqa: E402

from graphsurg import serde  # noqa: E402
from graphsurg.pipeline import make_pass, run_passes  # noqa: E402

RNG = np.random.default_rng(1)


def export(module: nn.Module, example: torch.Tensor, path, dynamic: dict, fold: bool = True) -> onnx.ModelProto:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter notices
        torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["y"], dynamic_axes=dynamic, do_constant_folding=fold)
    return onnx.load(str(path))


def run(model, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def excise(model: onnx.ModelProto, spec: str):
    ir = serde.load(model)
    result = run_passes(ir, [make_pass(spec)]).results[0]  # includes onnx's full check
    return ir, result


# ---- a transformer encoder with dynamic batch and sequence ----------------------------------------
class Block(nn.Module):
    def __init__(self, dim=32, heads=4, hidden=64):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        q, k, v = (t.view(b, s, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        attention = (q @ k.transpose(-2, -1) * self.scale).softmax(-1)
        x = x + self.proj((attention @ v).transpose(1, 2).reshape(b, s, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class Encoder(nn.Module):
    def __init__(self, dead_heads=()):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.head = nn.Linear(12, 32), nn.Linear(32, 5)
        self.blocks = nn.Sequential(Block(), Block())
        with torch.no_grad():
            for block in self.blocks:
                for h in dead_heads:  # the output projection ignores these heads entirely
                    block.proj.weight[:, h * 8:(h + 1) * 8] = 0

    def forward(self, x):
        return self.head(self.blocks(self.embed(x)).mean(1))


DYNAMIC = {"x": {0: "batch", 1: "seq"}, "y": {0: "batch"}}


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "encoder.onnx"
    return export(Encoder(dead_heads=(0, 2)), torch.randn(2, 7, 12), path, DYNAMIC)


def test_encoder_heads_are_excised_through_chunk_and_dynamic_views(encoder):
    ir, result = excise(encoder, "excise{ratio=0.5,target=heads}")
    heads = [g for g in result.changes["groups"] if g["kind"] == "heads"]
    assert [g["status"] for g in heads] == ["excised", "excised"]
    assert all(g["removed_units"] == [0, 2] for g in heads)
    for batch, seq in ((2, 7), (3, 4), (1, 11)):  # batch and sequence stay dynamic
        x = RNG.normal(size=(batch, seq, 12)).astype(np.float32)
        np.testing.assert_allclose(run(serde.to_bytes(ir), x), run(encoder, x), rtol=1e-5, atol=1e-5)
    qkv = [v for v in ir.graph.initializers.values() if v.const.shape == (32, 48)]
    assert len(qkv) == 2  # fused QKV: 3 x 2 heads x 8 columns each


def test_encoder_auto_shrinks_every_group_and_stays_dynamic(encoder):
    ir, result = excise(encoder, "excise{ratio=0.5}")
    statuses = {g["group"]: g["status"] for g in result.changes["groups"]}
    assert list(statuses.values()).count("excised") == 5  # embedding width, 2 x heads, 2 x FFN
    assert result.changes["parameters_after"] / result.changes["parameters_before"] < 0.3
    for batch, seq in ((2, 7), (4, 3)):
        x = RNG.normal(size=(batch, seq, 12)).astype(np.float32)
        assert run(serde.to_bytes(ir), x).shape == (batch, 5)


# ---- sentence encoders: HF BERT style, and torch's nn.TransformerEncoder -------------------------
class BertSelfAttention(nn.Module):
    """Written the way HF transformers writes BERT: view(size()[:-1] + (heads, head size))."""

    def __init__(self, hidden=32, heads=4):
        super().__init__()
        self.num_attention_heads, self.attention_head_size = heads, hidden // heads
        self.all_head_size = heads * self.attention_head_size
        self.query, self.key, self.value = (nn.Linear(hidden, self.all_head_size) for _ in range(3))

    def transpose_for_scores(self, x):
        return x.view(x.size()[:-1] + (self.num_attention_heads, self.attention_head_size)).permute(0, 2, 1, 3)

    def forward(self, hidden_states, mask):
        q, k, v = (self.transpose_for_scores(f(hidden_states)) for f in (self.query, self.key, self.value))
        scores = torch.matmul(q, k.transpose(-1, -2)) / self.attention_head_size ** 0.5 + mask
        context = torch.matmul(scores.softmax(-1), v).permute(0, 2, 1, 3).contiguous()
        return context.view(context.size()[:-2] + (self.all_head_size,))


class BertLayer(nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        self.attention, self.dense = BertSelfAttention(hidden), nn.Linear(hidden, hidden)
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.intermediate, self.output = nn.Linear(hidden, 4 * hidden), nn.Linear(4 * hidden, hidden)

    def forward(self, x, mask):
        x = self.ln1(x + self.dense(self.attention(x, mask)))
        return self.ln2(x + self.output(F.gelu(self.intermediate(x))))


class SentenceEncoder(nn.Module):
    """Word and position embeddings, 2 BERT layers, masked mean pooling: a sentence embedding."""

    def __init__(self, dead_heads=()):
        super().__init__()
        torch.manual_seed(0)
        self.word, self.position = nn.Embedding(100, 32), nn.Embedding(64, 32)
        self.norm, self.layers = nn.LayerNorm(32), nn.ModuleList([BertLayer(), BertLayer()])
        with torch.no_grad():
            for layer in self.layers:
                for h in dead_heads:
                    layer.dense.weight[:, h * 8:(h + 1) * 8] = 0

    def forward(self, input_ids, attention_mask):
        positions = torch.arange(input_ids.size(1)).unsqueeze(0)
        x = self.norm(self.word(input_ids) + self.position(positions))
        mask = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        for layer in self.layers:
            x = layer(x, mask)
        return (x * attention_mask[..., None]).sum(1) / attention_mask.sum(1, keepdim=True)


def test_bert_style_sentence_encoder_loses_heads_with_symbolic_batch_and_sequence(tmp_path):
    ids, mask = torch.randint(0, 100, (2, 7)), torch.ones(2, 7, dtype=torch.long)
    path = tmp_path / "sentence.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(SentenceEncoder(dead_heads=(1, 2)).eval(), (ids, mask), str(path), dynamo=False,
                          opset_version=17, input_names=["input_ids", "attention_mask"], output_names=["y"],
                          dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}})
    model = onnx.load(str(path))
    ir, result = excise(model, "excise{ratio=0.5,target=heads}")
    heads = [g for g in result.changes["groups"] if g["kind"] == "heads"]
    assert len(heads) == 2 and all(g["removed_units"] == [1, 2] for g in heads)
    import onnxruntime as ort

    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    after = ort.InferenceSession(serde.to_bytes(ir), providers=["CPUExecutionProvider"])
    for batch, seq in ((2, 7), (3, 12)):
        feeds = {"input_ids": RNG.integers(0, 100, (batch, seq)), "attention_mask": np.ones((batch, seq), np.int64)}
        feeds["attention_mask"][0, seq // 2:] = 0  # padding, masked out
        np.testing.assert_allclose(after.run(None, feeds)[0], before.run(None, feeds)[0], rtol=1e-5, atol=1e-5)
    _, result = excise(model, "excise{ratio=0.5}")
    statuses = [g["status"] for g in result.changes["groups"]]
    assert statuses == ["refused", "excised", "excised", "excised", "excised"]  # the width reaches the output
    assert "graph output 'y'" in result.refused[0]["reason"]


def test_torch_transformer_encoder_loses_packed_heads_and_neurons(tmp_path):
    """nn.MultiheadAttention exports a packed in-projection and a (seq, batch*heads, d) layout
    with the head size computed from Shape (tests/passes/test_excise_mha.py checks the function):
    heads and FFN neurons go, the residual stream stays (with reasons)."""
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    net = nn.Sequential(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Linear(32, 8))
    with torch.no_grad():  # the encoder clones one layer; identical weights would be exported shared
        for parameter in net.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)
    model = export(net, torch.randn(2, 7, 32), tmp_path / "encoder.onnx", {"x": {0: "batch"}, "y": {0: "batch"}})
    ir, result = excise(model, "excise{ratio=0.5}")
    excised = [(g["group"], g["kind"]) for g in result.changes["groups"] if g["status"] == "excised"]
    assert excised == [("/0/layers.0/self_attn/MatMul", "heads"), ("/0/layers.0/linear1/MatMul", "channels"),
                       ("/0/layers.1/self_attn/MatMul", "heads"), ("/0/layers.1/linear1/MatMul", "channels")]
    reasons = {r["target"]: r["reason"] for r in result.refused}
    assert "has no prunable channels" in reasons["group /0/layers.0/self_attn/Gemm"]  # the graph input is residual
    x = RNG.normal(size=(3, 7, 32)).astype(np.float32)
    assert run(serde.to_bytes(ir), x).shape == (3, 7, 8)


# ---- a decomposed LayerNorm, weights behind Transpose ------------------------------------------
class ManualLayerNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.rand(dim) + 0.5), nn.Parameter(torch.randn(dim) * 0.1)

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-5) * self.weight + self.bias


class Mixer(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc0, self.fc1 = nn.Linear(6, 16), nn.Linear(16, 32)
        self.fc2, self.out = nn.Linear(32, 16), nn.Linear(16, 3)
        self.norm, self.norm2 = ManualLayerNorm(16), ManualLayerNorm(32)

    def forward(self, x):
        h = self.fc0(x)
        h = h + self.fc2(F.relu(self.norm2(self.fc1(self.norm(h)))))
        return self.out(h.mean(1))


def test_decomposed_layernorm_and_transposed_weights(tmp_path):
    model = export(Mixer(), torch.randn(2, 5, 6), tmp_path / "mixer.onnx", DYNAMIC, fold=False)
    assert {"ReduceMean", "Pow", "Sqrt", "Transpose"} <= {n.op_type for n in model.graph.node}
    ir, result = excise(model, "excise{ratio=0.5}")
    assert [g["status"] for g in result.changes["groups"]] == ["excised", "excised", "refused"]
    shapes = {name: v.const.shape for name, v in ir.graph.initializers.items()}
    assert shapes["fc0.weight"] == (8, 6) and shapes["fc1.weight"] == (16, 8)  # sliced through the Transpose
    assert shapes["norm.weight"] == (8,) and shapes["norm2.bias"] == (16,)
    assert shapes["out.weight"] == (3, 8)
    x = RNG.normal(size=(3, 4, 6)).astype(np.float32)
    assert run(serde.to_bytes(ir), x).shape == (3, 3)


# ---- a CNN with its weights in Constant nodes --------------------------------------------------
class Net(nn.Module):
    """stem -> residual block -> depthwise separable block -> 2x2 pool -> flatten -> Linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.res1, self.res2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.dw, self.pw = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16 * 4, 5)
        with torch.no_grad():
            stream, inner, wide = [1, 2, 5, 6], [0, 3, 4, 7], [0, 1, 2, 3, 8, 9, 10, 11]
            self.res1.weight[:, stream] = 0  # the residual stream's dead channels feed nothing:
            self.pw.weight[:, stream] = 0  # neither the block nor, through the depthwise conv, pw
            self.res2.weight[:, inner] = 0
            for c in wide:
                self.fc.weight[:, c * 4:(c + 1) * 4] = 0  # flattened positions of pw channel c

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.res2(F.relu(self.res1(x))))
        x = F.relu(self.pw(F.relu(self.dw(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 2), 1))


def constants_instead_of_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Moves every initializer into a Constant node, as some converters write them."""
    nodes = [onnx.helper.make_node("Constant", [], [t.name], value=t) for t in model.graph.initializer]
    nodes += list(model.graph.node)
    del model.graph.initializer[:]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def test_cnn_with_constant_node_weights_keeps_its_function(tmp_path):
    model = constants_instead_of_initializers(
        export(Net(), torch.randn(2, 3, 8, 8), tmp_path / "net.onnx", {"x": {0: "batch"}, "y": {0: "batch"}}))
    onnx.checker.check_model(model, full_check=True)
    ir, result = excise(model, "excise{ratio=0.5}")
    assert [g["status"] for g in result.changes["groups"]] == ["excised", "excised", "excised", "refused"]
    assert not ir.graph.initializers  # everything was edited inside the Constant nodes
    x = RNG.normal(size=(3, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run(serde.to_bytes(ir), x), run(model, x), rtol=1e-5, atol=1e-5)
    convs = [op for op in ir.graph.ops if op.op_type == "Conv"]
    weights = [constant_array(ir.graph, op.inputs[1]).shape for op in convs]
    assert weights == [(4, 3, 3, 3), (4, 4, 3, 3), (4, 4, 3, 3), (4, 1, 3, 3), (8, 4, 1, 1)]
    assert [op.attr("group") for op in convs][3] == 4
    fc = next(op for op in ir.graph.ops if op.op_type == "Gemm")
    assert constant_array(ir.graph, fc.inputs[1]).shape == (5, 8 * 4)
