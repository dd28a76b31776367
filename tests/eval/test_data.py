"""Datasets: .npz (mapped, in memory, streamed), ONNX test-data folders, synthetic inputs, checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from graphsurg import serde
from graphsurg.errors import BadInputError, UsageError
from graphsurg.eval import npz as npz_module
from graphsurg.eval.data import (
    InputSpec,
    Signature,
    SyntheticDataset,
    open_dataset,
    parse_dims,
    signature,
)

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
ONNX_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
MLP = MODELS / "digits_mlp.onnx"
TEST = MODELS / "digits_test.npz"


@pytest.fixture(scope="module")
def sig() -> Signature:
    return signature(serde.load(MLP))


def _concat(dataset, batch_size):
    batches = list(dataset.batches(batch_size))
    return np.concatenate([b.inputs["input"] for b in batches]), np.concatenate([b.labels for b in batches]), batches


def test_signature_of_bundled_model(sig):
    assert sig.inputs == (InputSpec("input", np.dtype("float32"), ("batch", 1, 8, 8)),)
    assert sig.outputs == ("logits",)


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("stream", [False, True])
def test_npz_batches_match_numpy(tmp_path, sig, monkeypatch, compressed, stream):
    if stream:  # force the streaming path for deflated members
        monkeypatch.setattr(npz_module, "STREAM_THRESHOLD", 0)
    with np.load(TEST) as ref:
        x, y = ref["input"], ref["labels"]
    path = tmp_path / "d.npz"
    (np.savez_compressed if compressed else np.savez)(path, input=x, labels=y)
    dataset = open_dataset(path, sig)
    member = npz_module.open_npz(path)["input"]
    expected_kind = npz_module.DeflatedRows if (compressed and stream) else np.ndarray
    assert isinstance(member, expected_kind)
    if not compressed:
        assert isinstance(member, np.memmap)  # stored members are mapped, not read
    got_x, got_y, batches = _concat(dataset, 64)
    assert dataset.samples == 360 and len(batches) == 6 and batches[-1].size == 40
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y, y)
    # a second pass (streaming restarts from the top) gives the same data
    np.testing.assert_array_equal(_concat(dataset, 100)[0], x)


def test_deflated_rows_random_access(tmp_path, monkeypatch):
    monkeypatch.setattr(npz_module, "STREAM_THRESHOLD", 0)
    array = np.arange(5 * 3 * 2, dtype=np.int32).reshape(5, 3, 2)
    np.savez_compressed(tmp_path / "a.npz", a=array)
    rows = npz_module.open_npz(tmp_path / "a.npz")["a"]
    np.testing.assert_array_equal(rows[3:5], array[3:5])
    np.testing.assert_array_equal(rows[0:2], array[0:2])  # backwards: reopens
    np.testing.assert_array_equal(rows[2:2], array[2:2])


def _write(tmp_path, **arrays):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


def test_wrong_key_names_input_and_expectation(tmp_path, sig):
    path = _write(tmp_path, x=np.zeros((4, 1, 8, 8), np.float32))
    with pytest.raises(BadInputError, match=r"no array for model input 'input' .*float32 \[batch, 1, 8, 8\].*holds: x"):
        open_dataset(path, sig)


def test_wrong_dtype(tmp_path, sig):
    path = _write(tmp_path, input=np.zeros((4, 1, 8, 8), np.float64))
    with pytest.raises(BadInputError, match=r"input 'input' is float64; the model expects float32"):
        open_dataset(path, sig)


@pytest.mark.parametrize("shape, fragment", [((4, 8, 8), "rank 3"), ((4, 1, 8, 9), "axis 3 is 9 but size 8")])
def test_wrong_shape(tmp_path, sig, shape, fragment):
    path = _write(tmp_path, input=np.zeros(shape, np.float32))
    with pytest.raises(BadInputError, match=rf"input 'input' has shape .*{fragment}.*expects float32"):
        open_dataset(path, sig)


def test_labels_key_and_sample_counts(tmp_path, sig):
    x = np.zeros((4, 1, 8, 8), np.float32)
    assert not open_dataset(_write(tmp_path, input=x), sig).has_labels  # default key may be absent
    with pytest.raises(BadInputError, match="no labels array 'y'"):
        open_dataset(_write(tmp_path, input=x), sig, labels="y")
    dataset = open_dataset(_write(tmp_path, input=x, y=np.arange(4)), sig, labels="y")
    assert dataset.has_labels
    with pytest.raises(BadInputError, match="different numbers of samples.*input 4, labels 3"):
        open_dataset(_write(tmp_path, input=x, labels=np.arange(3)), sig)


def test_symbolic_dims_bind_consistently(tmp_path):
    sig = Signature((InputSpec("a", np.dtype("float32"), ("n", "seq")), InputSpec("b", np.dtype("float32"),
                                                                                   ("n", "seq"))))
    ok = _write(tmp_path, a=np.zeros((2, 5), np.float32), b=np.zeros((2, 5), np.float32))
    assert open_dataset(ok, sig).samples == 2
    with pytest.raises(BadInputError, match="axis 1 is 5 but dimension 'seq' is 7"):
        open_dataset(ok, sig, dims={"seq": 7})
    bad = _write(tmp_path, a=np.zeros((2, 5), np.float32), b=np.zeros((2, 6), np.float32))
    with pytest.raises(BadInputError, match="input 'b'.*axis 1 is 6 but dimension 'seq' is 5"):
        open_dataset(bad, sig)


def test_fixed_batch_from_model(tmp_path):
    sig = Signature((InputSpec("a", np.dtype("float32"), (2, 3)),))
    dataset = open_dataset(_write(tmp_path, a=np.zeros((6, 3), np.float32)), sig)
    assert [b.size for b in dataset.batches(64)] == [2, 2, 2]
    with pytest.raises(BadInputError, match="5 samples do not split into the model's fixed batch of 2"):
        open_dataset(_write(tmp_path, a=np.zeros((5, 3), np.float32)), sig)


def test_onnx_test_data_folder():
    case = ONNX_DATA / "pytorch-converted" / "test_Conv2d"
    dataset = open_dataset(case, serde.load(case / "model.onnx"))
    batches = list(dataset.batches(64))
    assert dataset.has_expected and len(batches) == 1 and batches[0].expected
    (name,) = batches[0].inputs
    assert batches[0].inputs[name].shape[0] == dataset.samples


def test_test_data_folder_made_here(tmp_path, sig):
    folder = tmp_path / "case" / "test_data_set_0"
    folder.mkdir(parents=True)
    x = np.ones((3, 1, 8, 8), np.float32)
    (folder / "input_0.pb").write_bytes(numpy_helper.from_array(x, "input").SerializeToString())
    dataset = open_dataset(tmp_path / "case", sig)
    assert dataset.samples == 3 and not dataset.has_expected
    (folder / "input_0.pb").write_bytes(numpy_helper.from_array(x.astype(np.float64)).SerializeToString())
    with pytest.raises(BadInputError, match="input 'input' is float64; the model expects float32"):
        open_dataset(tmp_path / "case", sig)
    (folder / "input_0.pb").write_bytes(b"\xff\xff garbage")
    with pytest.raises(BadInputError, match="input_0.pb"):
        open_dataset(tmp_path / "case", sig)


def test_synthetic_is_seeded_and_batch_independent(sig):
    data = open_dataset(None, sig, samples=20, seed=3)
    whole = np.concatenate([b.inputs["input"] for b in data.batches(20)])
    pieces = np.concatenate([b.inputs["input"] for b in data.batches(7)])
    np.testing.assert_array_equal(whole, pieces)
    assert whole.shape == (20, 1, 8, 8) and whole.dtype == np.float32
    other = np.concatenate([b.inputs["input"] for b in open_dataset(None, sig, samples=20, seed=4).batches(20)])
    assert not np.array_equal(whole, other)


def test_synthetic_dims():
    sig = Signature((InputSpec("ids", np.dtype("int64"), ("batch", "seq")),))
    data = SyntheticDataset(sig, {"batch": 8, "seq": 5}, samples=16)
    batches = list(data.batches(64))
    assert [b.inputs["ids"].shape for b in batches] == [(8, 5), (8, 5)]  # --dim batch=8 fixes the batch
    assert batches[0].inputs["ids"].min() >= 0 and batches[0].inputs["ids"].max() < 10
    with pytest.raises(BadInputError, match="axis 1 has symbolic dimension 'seq'; set it with --dim seq=N"):
        SyntheticDataset(sig, {"batch": 8})


def test_parse_dims():
    assert parse_dims(["batch=8", " seq = 16"]) == {"batch": 8, "seq": 16}
    for bad in ("batch", "batch=x", "=3", "batch=0"):
        with pytest.raises(UsageError):
            parse_dims([bad])


def test_unsupported_data(tmp_path, sig):
    (tmp_path / "d.csv").write_text("1,2")
    with pytest.raises(BadInputError, match="expected a .npz file or an ONNX test-data folder"):
        open_dataset(tmp_path / "d.csv", sig)
    with pytest.raises(BadInputError, match="no such data"):
        open_dataset(tmp_path / "missing.npz", sig)
