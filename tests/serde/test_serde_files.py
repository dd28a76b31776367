"""Saving to files: determinism, atomic writes, external data, large weights never held in memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphsurg import serde
from graphsurg.errors import BadInputError
from graphsurg.ir import DetachedTensor, ExternalTensor, MappedTensor
from graphsurg.pipeline import make_pass, run_passes
from graphsurg.serde.stream import Stream

ROOT = Path(__file__).resolve().parents[2]
DIGITS_CNN = ROOT / "models" / "digits_cnn.onnx"


def matmul_chain(names: list[str], n: int, initializers: list[TensorProto]) -> onnx.ModelProto:
    nodes = [helper.make_node("MatMul", [f"x{i}", name], [f"x{i + 1}"]) for i, name in enumerate(names)]
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x0", TensorProto.FLOAT, ["batch", n])],
        [helper.make_tensor_value_info(f"x{len(names)}", TensorProto.FLOAT, ["batch", n])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def external_header(name: str, dims: list[int], location: str, offset: int, length: int) -> TensorProto:
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims, data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def sparse_external_model(folder: Path, layers: int, n: int = 4096) -> Path:
    """A model whose weights (layers x n x n float32) sit in a sparse file: big on paper, free on disk."""
    folder.mkdir(parents=True, exist_ok=True)
    size = n * n * 4
    with open(folder / "big.onnx.data", "wb") as handle:
        handle.truncate(layers * size)
    names = [f"w{i}" for i in range(layers)]
    model = matmul_chain(names, n, [external_header(w, [n, n], "big.onnx.data", i * size, size)
                                    for i, w in enumerate(names)])
    path = folder / "big.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def random_external_model(folder: Path, layers: int = 3, n: int = 64, seed: int = 0) -> tuple[Path, dict]:
    rng = np.random.default_rng(seed)
    arrays = {f"w{i}": rng.standard_normal((n, n)).astype(np.float32) for i in range(layers)}
    model = matmul_chain(list(arrays), n, [numpy_helper.from_array(a, k) for k, a in arrays.items()])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(model, path, save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    return path, arrays


def inline_model(folder: Path, layers: int = 4, n: int = 512, seed: int = 1) -> tuple[Path, dict]:
    """An inline model above the loader's 1 MiB scan threshold (its weights are left in the file)."""
    rng = np.random.default_rng(seed)
    arrays = {f"w{i}": (rng.standard_normal((n, n)) / n).astype(np.float32) for i in range(layers)}
    model = matmul_chain(list(arrays), n, [numpy_helper.from_array(a, k) for k, a in arrays.items()])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "inline.onnx"
    onnx.save(model, path)
    return path, arrays


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ---- determinism --------------------------------------------------------------------------------

def test_save_is_deterministic(tmp_path):
    src, _ = random_external_model(tmp_path / "src")
    for i, model in enumerate([serde.load(src), serde.load(src)]):
        for j in range(2):
            serde.save(model, tmp_path / f"out{i}{j}" / "m.onnx")
    outs = [listing(tmp_path / f"out{i}{j}") for i in range(2) for j in range(2)]
    assert all(out == outs[0] for out in outs)
    assert set(outs[0]) == {"m.onnx", "m.onnx.data"}


def test_save_after_passes_is_deterministic(tmp_path):
    results = []
    for _ in range(2):
        model = serde.load(DIGITS_CNN)
        run_passes(model, [make_pass("fold-constants"), make_pass("cleanup")])
        results.append(serde.to_bytes(model))
        serde.save(model, tmp_path / "a.onnx")
        serde.save(model, tmp_path / "b.onnx")
        assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes() == results[-1]
    assert results[0] == results[1]


def test_round_trip_of_a_file_is_byte_identical(tmp_path):
    for source in (DIGITS_CNN, inline_model(tmp_path / "big")[0]):
        serde.save(serde.load(source), tmp_path / "copy.onnx")
        assert (tmp_path / "copy.onnx").read_bytes() == source.read_bytes()


# ---- external data ------------------------------------------------------------------------------

def test_external_data_is_written_beside_the_output_and_read_back(tmp_path, run_ort, same_outputs):
    src, arrays = random_external_model(tmp_path / "src")
    out = tmp_path / "elsewhere" / "deep" / "copy.onnx"
    serde.save(serde.load(src), out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["copy.onnx", "copy.onnx.data"]
    proto = onnx.load(out, load_external_data=False)
    assert {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"} == \
        {"copy.onnx.data"}
    read_back = onnx.load(out)  # onnx's own reader, external data included
    for tensor in read_back.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(tensor), arrays[tensor.name])
    again = serde.load(out)
    for name, value in again.graph.initializers.items():
        assert isinstance(value.const, ExternalTensor)
        assert Path(value.const.location.path).parent == out.parent.resolve()
        np.testing.assert_array_equal(value.const.numpy(), arrays[name])
    feeds = {"x0": np.random.default_rng(5).standard_normal((2, 64)).astype(np.float32)}
    assert same_outputs(run_ort(out, feeds), run_ort(src, feeds))


def test_inline_to_external_and_back(tmp_path):
    model = serde.load(DIGITS_CNN)
    serde.save(model, tmp_path / "ext" / "m.onnx", external_data=True, size_threshold=256)
    assert (tmp_path / "ext" / "m.onnx.data").stat().st_size > 0
    external = serde.load(tmp_path / "ext" / "m.onnx")
    assert any(isinstance(v.const, ExternalTensor) for v in external.graph.initializers.values())
    for name, value in model.graph.initializers.items():
        np.testing.assert_array_equal(external.graph.initializers[name].const.numpy(), value.const.numpy())
    serde.save(external, tmp_path / "inline.onnx", external_data=False)
    assert (tmp_path / "inline.onnx").read_bytes() == DIGITS_CNN.read_bytes()


def test_default_keeps_each_weight_where_it_was(tmp_path):
    """Without an explicit choice, weights that came external stay external (whatever their
    size), inline ones stay inline, and new large ones go external."""
    src, _ = random_external_model(tmp_path / "src", n=8)  # 256-byte weights, below the default threshold
    model = serde.load(src)
    model.graph.add_initializer("new_big", np.zeros(4096, np.float32))
    model.graph.add_initializer("new_small", np.zeros(4, np.float32))
    serde.save(model, tmp_path / "out" / "m.onnx")
    proto = onnx.load(tmp_path / "out" / "m.onnx", load_external_data=False)
    external = {t.name for t in proto.graph.initializer if t.data_location == TensorProto.EXTERNAL}
    assert external == {"w0", "w1", "w2", "new_big"}


def test_typed_field_tensors_stay_inline_when_saving_external(tmp_path, run_ort, same_outputs):
    """A tensor stored in float_data (not raw_data) has no raw bytes to move: it stays inline
    with its values (a writer that took its empty raw_data would corrupt the data file)."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [16, 16], np.arange(256, dtype=np.float32) / 256)
    raw = numpy_helper.from_array(np.full((16, 16), 0.5, np.float32), "v")
    model = matmul_chain(["w", "v"], 16, [weight, raw])
    serde.save(serde.load(model.SerializeToString()), tmp_path / "m.onnx", external_data=True, size_threshold=0)
    proto = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    placement = {t.name: t.data_location for t in proto.graph.initializer}
    assert placement == {"w": TensorProto.DEFAULT, "v": TensorProto.EXTERNAL}
    onnx.checker.check_model(str(tmp_path / "m.onnx"), full_check=True)
    feeds = {"x0": np.ones((1, 16), np.float32)}
    assert same_outputs(run_ort(tmp_path / "m.onnx", feeds), run_ort(model.SerializeToString(), feeds))


def test_detached_load_needs_no_data_file(tmp_path):
    """A model file copied alone (what git hands textconv) loads with `detach_external`: shapes and
    locations are there, reading a weight says why it cannot, and a default load still refuses."""
    src, arrays = random_external_model(tmp_path / "src")
    alone = tmp_path / "alone" / "model.onnx"
    alone.parent.mkdir()
    alone.write_bytes(src.read_bytes())
    with pytest.raises(BadInputError, match="is missing"):
        serde.load(alone)
    model = serde.load(alone, detach_external=True)
    for name, array in arrays.items():
        tensor = model.graph.initializers[name].const
        assert isinstance(tensor, DetachedTensor) and tensor.shape == array.shape
        assert tensor.location == "model.onnx.data" and tensor.length == array.nbytes
        with pytest.raises(FileNotFoundError, match="not loaded"):
            tensor.numpy()
    assert not any(isinstance(v.const, DetachedTensor) for v in serde.load(src).graph.initializers.values())


def test_detached_load_still_refuses_locations_outside_the_folder(tmp_path):
    model = matmul_chain(["w"], 4, [external_header("w", [4, 4], "../outside.data", 0, 64)])
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    with pytest.raises(BadInputError, match="escapes the model's folder"):
        serde.load(path, detach_external=True)


@pytest.mark.parametrize("location", ["../escape.data", "/tmp/absolute.data"])
def test_save_refuses_a_data_location_outside_the_folder(tmp_path, location):
    src, _ = random_external_model(tmp_path / "src")
    with pytest.raises(BadInputError):
        serde.save(serde.load(src), tmp_path / "out" / "m.onnx", location=location)
    assert not (tmp_path / "escape.data").exists()


def test_saving_over_the_source_keeps_loaded_weights_valid(tmp_path):
    """Tensors hold their source file open: replacing it by a save leaves them reading the
    bytes they were loaded from, so the model can be saved again (and again) in place."""
    src, arrays = random_external_model(tmp_path / "src")
    model = serde.load(src)
    model.graph.add_initializer("pad", np.ones(300, np.float32))  # shifts the layout of the new file
    for _ in range(3):
        serde.save(model, src, external_data=True, size_threshold=0)
        for name, array in arrays.items():
            np.testing.assert_array_equal(model.graph.initializers[name].const.numpy(), array)
        reloaded = serde.load(src)
        for name, array in arrays.items():
            np.testing.assert_array_equal(reloaded.graph.initializers[name].const.numpy(), array)
    path, inline_arrays = inline_model(tmp_path / "inline")
    model = serde.load(path)
    model.graph.rename_value(model.graph.initializers["w0"], "renamed")
    for _ in range(2):
        serde.save(model, path)
        reloaded = serde.load(path)
        np.testing.assert_array_equal(reloaded.graph.initializers["renamed"].const.numpy(), inline_arrays["w0"])
        np.testing.assert_array_equal(model.graph.initializers["w1"].const.numpy(), inline_arrays["w1"])


# ---- large inline weights stay in the file --------------------------------------------------------

def test_large_inline_weights_are_mapped_not_parsed(tmp_path):
    path, arrays = inline_model(tmp_path)
    model = serde.load(path)
    for name, array in arrays.items():
        tensor = model.graph.initializers[name].const
        assert isinstance(tensor, MappedTensor) and not isinstance(tensor, ExternalTensor)
        np.testing.assert_array_equal(tensor.numpy(), array)
        assert not tensor.numpy().flags.writeable
    assert serde.to_bytes(model) == path.read_bytes()
    assert serde.to_proto(model).SerializeToString(deterministic=True) == path.read_bytes()


def test_a_file_the_scanner_does_not_expect_is_parsed_the_ordinary_way(tmp_path):
    """A tensor with raw_data twice (protobuf keeps the last) is left to protobuf."""
    path, arrays = inline_model(tmp_path)
    proto = onnx.load(path)
    first = proto.graph.initializer[0]
    replacement = np.full(first.dims, 3.0, np.float32).tobytes()
    extra = TensorProto(raw_data=replacement).SerializeToString()
    blob = first.SerializeToString() + extra
    del proto.graph.initializer[0]
    graph = proto.graph.SerializeToString()
    entry = b"\x2a" + _varint(len(blob)) + blob
    proto.ClearField("graph")
    data = proto.SerializeToString() + b"\x3a" + _varint(len(entry) + len(graph)) + entry + graph
    weird = tmp_path / "weird.onnx"
    weird.write_bytes(data)
    expected = onnx.load(weird)
    model = serde.load(weird)
    np.testing.assert_array_equal(model.graph.initializers["w0"].const.numpy(), np.full(first.dims, 3.0))
    np.testing.assert_array_equal(model.graph.initializers["w1"].const.numpy(), arrays["w1"])
    assert onnx.load_from_string(serde.to_bytes(model)) == expected


def _varint(value: int) -> bytes:
    from graphsurg.serde.scan import encode_varint

    return encode_varint(value)


def test_large_truncated_file_is_bad_input(tmp_path):
    path, _ = inline_model(tmp_path)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 3, 40):
        path.write_bytes(data[:cut])
        with pytest.raises(BadInputError):
            serde.load(path)


def test_over_2gb_inline_is_refused_before_writing(tmp_path):
    src = sparse_external_model(tmp_path / "src", layers=33, n=4096)  # 2.06 GiB, sparse
    model = serde.load(src)
    with pytest.raises(BadInputError, match="2 GB"):
        serde.save(model, tmp_path / "out" / "inline.onnx", external_data=False)
    assert list((tmp_path / "out").iterdir()) == []


# ---- atomic writes --------------------------------------------------------------------------------

@pytest.fixture
def previous_save(tmp_path):
    """An output folder holding an earlier save, and a different model to save over it."""
    src, _ = random_external_model(tmp_path / "src", seed=1)
    out = tmp_path / "out" / "m.onnx"
    serde.save(serde.load(random_external_model(tmp_path / "old", seed=2)[0]), out)
    return serde.load(src), out, listing(out.parent)


def _fail_midway(exc: BaseException):
    def copy_to(self, out_fd):
        os.write(out_fd, b"partial")
        raise exc
    return copy_to


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failure_while_writing_external_data_leaves_previous_files(previous_save, monkeypatch, exc):
    model, out, before = previous_save
    monkeypatch.setattr(MappedTensor, "copy_to", _fail_midway(exc))
    with pytest.raises(type(exc)):
        serde.save(model, out)
    assert listing(out.parent) == before  # same files, same bytes, no temporary files


@pytest.mark.parametrize("external", [True, False])
def test_failure_while_writing_the_model_leaves_previous_files(previous_save, monkeypatch, external):
    model, out, before = previous_save

    def write_to(self, fd):
        os.write(fd, b"\x08\x07partial")
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(Stream, "write_to", write_to)
    with pytest.raises(OSError):
        serde.save(model, out, external_data=external)
    assert listing(out.parent) == before


def test_failure_building_the_model_leaves_previous_files(previous_save, monkeypatch):
    model, out, before = previous_save
    model.graph.add_initializer("new", np.ones(4096, np.float32))
    monkeypatch.setattr("graphsurg.serde.stream.raw_payload", lambda tensor: (_ for _ in ()).throw(MemoryError()))
    with pytest.raises(MemoryError):
        serde.save(model, out)
    assert listing(out.parent) == before


def test_killed_save_leaves_the_previous_file_under_the_output_name(tmp_path):
    """SIGKILL in the middle of writing: the temporary files stay behind (nobody can remove them)
    but the files under the output names are the previous ones, intact."""
    src, _ = random_external_model(tmp_path / "src", seed=1)
    out = tmp_path / "out" / "m.onnx"
    serde.save(serde.load(random_external_model(tmp_path / "old", seed=2)[0]), out)
    before = listing(out.parent)
    script = textwrap.dedent(f"""
        import os, sys, time
        from graphsurg import serde
        from graphsurg.ir import MappedTensor
        def slow_copy(self, fd):
            os.write(fd, b"partial")
            print("writing", flush=True)
            time.sleep(60)
        MappedTensor.copy_to = slow_copy
        serde.save(serde.load({str(src)!r}), {str(out)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    after = listing(out.parent)
    assert {k: v for k, v in after.items() if not k.endswith(".tmp")} == before
    assert all(k.startswith(".m.onnx") for k in after if k.endswith(".tmp"))


def test_durable_save_flushes_both_files(tmp_path, monkeypatch):
    src, _ = random_external_model(tmp_path / "src")
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    serde.save(serde.load(src), tmp_path / "out" / "m.onnx", durable=True)
    assert len(synced) == 3  # the data file, the model file, their folder


# ---- weights are never materialized ------------------------------------------------------------------

def _forbid_reading_weights(monkeypatch):
    def refuse(self):
        raise AssertionError(f"weights of {self!r} were read")
    monkeypatch.setattr(MappedTensor, "numpy", refuse)


def test_load_save_check_never_read_large_weights(tmp_path, monkeypatch):
    """320 MiB of weights (a sparse file): load, save (external and in place), onnx's checker,
    shape inference and inspect all work from headers; nothing calls numpy() on them."""
    from graphsurg.report import inspect_model

    src = sparse_external_model(tmp_path / "src", layers=5)
    _forbid_reading_weights(monkeypatch)
    model = serde.load(src)
    serde.check(model)
    serde.infer_shapes(model)
    inspect_model(model, str(src))
    run_passes(model, [make_pass("cleanup")])
    out = tmp_path / "out" / "big.onnx"
    serde.save(model, out)
    assert (tmp_path / "out" / "big.onnx.data").stat().st_size == 5 * 4096 * 4096 * 4
    serde.save(serde.load(out), out)


ROUND_TRIP_RSS = """
import resource, sys
from graphsurg import serde
def peak():  # VmHWM: this process's own peak (ru_maxrss includes the parent's, kept across exec)
    try:
        with open("/proc/self/status") as status:
            return next(int(l.split()[1]) for l in status if l.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
base = peak()
model = serde.load(sys.argv[1])
serde.save(model, sys.argv[2], external_data={external})
print(peak() - base)
"""


@pytest.mark.slow
@pytest.mark.parametrize("external", [True, False])
def test_round_trip_memory_does_not_grow_with_the_weights(tmp_path, external):
    """Peak RSS of load + save of 320 MiB of weights stays within a few MB of the interpreter's."""
    src = sparse_external_model(tmp_path / "src", layers=5)
    if not external:  # an inline source: the weights are inside the model file
        inline = tmp_path / "inline" / "big.onnx"
        serde.save(serde.load(src), inline, external_data=False)
        src = inline
    out = tmp_path / "out" / "big.onnx"
    script = ROUND_TRIP_RSS.format(external=external)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script, str(src), str(out)], capture_output=True, text=True,
                          check=True)
    growth = float(done.stdout.strip())
    assert growth < 64, f"peak RSS grew by {growth:.0f} MB for 320 MiB of weights"
    assert time.perf_counter() - started < 60


MANY_FILES = """
import resource, sys
import numpy as np
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
from graphsurg import serde
from graphsurg.ir import SourceFile
model = serde.load(sys.argv[1])
assert 0 < len(SourceFile._open) <= 32, len(SourceFile._open)
serde.save(model, sys.argv[2])
again = serde.load(sys.argv[2])
for i in range(150):
    assert np.array_equal(again.graph.initializers[f"w{i}"].const.numpy(), np.full(8, i, np.float32))
print("ok")
"""


def test_a_model_split_over_more_files_than_may_be_open(tmp_path):
    """onnx can write one external file per tensor; beyond half the descriptor limit the files are
    opened per read instead of held open, and load and save still work."""
    inits = [numpy_helper.from_array(np.full(8, i, np.float32), f"w{i}") for i in range(150)]
    graph = helper.make_graph([helper.make_node("Sum", [t.name for t in inits], ["y"])], "many", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8])], inits)
    path = tmp_path / "src" / "m.onnx"
    path.parent.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path,
              save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0)
    done = subprocess.run([sys.executable, "-c", MANY_FILES, str(path), str(tmp_path / "out" / "m.onnx")],
                          capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr
