"""The core CLI as a user runs it (subprocesses): bad input gets exit code 2 and exactly one line
on stderr, never a traceback; inspect, apply, passes, and the README's quick start."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
DIGITS_CNN = MODELS / "digits_cnn.onnx"

# Runs graphsurg in a child and reports that child's peak RSS (MB) on the last stdout line.
_WRAPPER = textwrap.dedent("""
    import resource, subprocess, sys
    done = subprocess.run([sys.executable, "-m", "graphsurg", *sys.argv[1:]], capture_output=True)
    sys.stdout.buffer.write(done.stdout)
    sys.stderr.buffer.write(done.stderr)
    print(f"\\n@@peak_mb={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.1f}")
    sys.exit(done.returncode)
""")


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    peak_mb: float


def graphsurg(*args: str | Path, cwd: Path | None = None) -> Result:
    done = subprocess.run([sys.executable, "-c", _WRAPPER, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120, env={**os.environ, "GRAPHSURG_DEBUG": ""})
    stdout, _, peak = done.stdout.rpartition("\n@@peak_mb=")
    return Result(done.returncode, stdout, done.stderr, float(peak))


def graphsurg_here(capsys, *args: str | Path) -> Result:
    """The same entry point in this process (faster; used where many cases run)."""
    from graphsurg.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return Result(exit_info.value.code, captured.out, captured.err, 0.0)


def assert_bad_input(result: Result) -> str:
    lines = result.stderr.splitlines()
    assert result.code == 2, (result.code, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("graphsurg: error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


def save_model(path: Path, nodes, inputs, outputs, initializers=(), opset: int = 17) -> Path:
    graph = helper.make_graph(nodes, "m", inputs, outputs, list(initializers))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]).SerializeToString())
    return path


def float_info(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def external(name: str, dims, location: str, length: int | None = None, offset: int = 0) -> TensorProto:
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims, data_location=TensorProto.EXTERNAL)
    entries = [("location", location), ("offset", str(offset))] + ([("length", str(length))] if length else [])
    for key, value in entries:
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def weight_model(path: Path, weight: TensorProto, dims) -> Path:
    return save_model(path, [helper.make_node("Add", ["x", weight.name], ["y"])], [float_info("x", dims)],
                      [float_info("y", dims)], [weight])


# ---- the bad inputs -------------------------------------------------------------------------------

def not_onnx(tmp: Path) -> Path:
    path = tmp / "notes.onnx"
    path.write_text("these are not the weights you are looking for\n")
    return path


def binary_garbage(tmp: Path) -> Path:
    path = tmp / "garbage.onnx"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)))
    return path


def empty_file(tmp: Path) -> Path:
    path = tmp / "empty.onnx"
    path.write_bytes(b"")
    return path


def truncated(tmp: Path) -> Path:
    path = tmp / "truncated.onnx"
    path.write_bytes(DIGITS_CNN.read_bytes()[: DIGITS_CNN.stat().st_size // 2])
    return path


def truncated_large(tmp: Path) -> Path:
    """Above the 1 MiB size where the loader scans instead of parsing whole."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((512, 512)).astype(np.float32), "w")
    path = weight_model(tmp / "big.onnx", w, [512, 512])
    path.write_bytes(path.read_bytes()[:-200_000])
    return path


def missing_external_file(tmp: Path) -> Path:
    return weight_model(tmp / "m.onnx", external("w", [4], "weights.bin"), [4])


def location_dotdot(tmp: Path) -> Path:
    (tmp / "outside.bin").write_bytes(bytes(16))
    return weight_model(tmp / "model" / "m.onnx", external("w", [4], "../outside.bin"), [4])


def location_absolute(tmp: Path) -> Path:
    (tmp / "abs.bin").write_bytes(bytes(16))
    return weight_model(tmp / "model" / "m.onnx", external("w", [4], str(tmp / "abs.bin")), [4])


def location_symlink_out(tmp: Path) -> Path:
    (tmp / "secret.bin").write_bytes(bytes(16))
    folder = tmp / "model"
    folder.mkdir()
    (folder / "weights.bin").symlink_to(tmp / "secret.bin")
    return weight_model(folder / "m.onnx", external("w", [4], "weights.bin"), [4])


def location_nul(tmp: Path) -> Path:
    return weight_model(tmp / "m.onnx", external("w", [4], "weights\0.bin"), [4])


def huge_dims_tiny_data(tmp: Path) -> Path:
    """40 GB declared, 4 bytes held: refused from the header, before any allocation."""
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[100000, 100000], raw_data=b"\0\0\0\0")
    return weight_model(tmp / "m.onnx", w, [100000, 100000])


def huge_dims_typed_data(tmp: Path) -> Path:
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[100000, 100000], float_data=[1.0, 2.0, 3.0])
    return weight_model(tmp / "m.onnx", w, [100000, 100000])


def external_longer_than_file(tmp: Path) -> Path:
    (tmp / "weights.bin").write_bytes(bytes(100))
    return weight_model(tmp / "m.onnx", external("w", [1000, 1000], "weights.bin"), [1000, 1000])


def external_length_disagrees(tmp: Path) -> Path:
    (tmp / "weights.bin").write_bytes(bytes(64))
    return weight_model(tmp / "m.onnx", external("w", [4], "weights.bin", length=64), [4])


def external_bad_offset(tmp: Path) -> Path:
    (tmp / "weights.bin").write_bytes(bytes(64))
    tensor = external("w", [4], "weights.bin")
    tensor.external_data[1].value = "sixteen"
    return weight_model(tmp / "m.onnx", tensor, [4])


def cycle(tmp: Path) -> Path:
    nodes = [helper.make_node("Neg", ["b"], ["a"], name="n1"), helper.make_node("Abs", ["a"], ["b"], name="n2"),
             helper.make_node("Add", ["x", "b"], ["y"])]
    return save_model(tmp / "m.onnx", nodes, [float_info("x", [2])], [float_info("y", [2])])


def dangling_input(tmp: Path) -> Path:
    nodes = [helper.make_node("Add", ["x", "nobody_makes_this"], ["y"])]
    return save_model(tmp / "m.onnx", nodes, [float_info("x", [2])], [float_info("y", [2])])


def dangling_output(tmp: Path) -> Path:
    return save_model(tmp / "m.onnx", [helper.make_node("Neg", ["x"], ["y"])], [float_info("x", [2])],
                      [float_info("y", [2]), float_info("ghost", [2])])


def negative_dims(tmp: Path) -> Path:
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[-1, 4], raw_data=bytes(16))
    return weight_model(tmp / "m.onnx", w, [4])


BAD_INPUTS = {
    "not ONNX (text)": (not_onnx, "not an ONNX model"),
    "not ONNX (binary)": (binary_garbage, "not an ONNX model"),
    "empty file": (empty_file, "not an ONNX model"),
    "missing file": (lambda tmp: tmp / "absent.onnx", "no such file"),
    "truncated": (truncated, "not an ONNX model"),
    "truncated (large file)": (truncated_large, "not an ONNX model"),
    "missing external data file": (missing_external_file, "is missing"),
    "external location ../": (location_dotdot, "escapes the model's folder"),
    "external location absolute": (location_absolute, "absolute path"),
    "external location symlink out": (location_symlink_out, "links outside the model's folder"),
    "external location NUL": (location_nul, "NUL"),
    "declared size > raw data": (huge_dims_tiny_data, "declares shape [100000, 100000]"),
    "declared size > typed data": (huge_dims_typed_data, "declares 10000000000 elements"),
    "external tensor longer than its file": (external_longer_than_file, "has only 100"),
    "external length disagrees with shape": (external_length_disagrees, "external length is 64"),
    "external offset not a number": (external_bad_offset, "non-numeric"),
    "cycle": (cycle, "cycle"),
    "dangling input": (dangling_input, "dangling input"),
    "dangling output": (dangling_output, "dangling output"),
    "negative dimension": (negative_dims, "negative dimension"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_inspect(case, tmp_path):
    make, message = BAD_INPUTS[case]
    line = assert_bad_input(graphsurg("inspect", make(tmp_path)))
    assert message in line
    assert len(line) < 600


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_apply_writes_nothing(case, tmp_path, capsys):
    make, message = BAD_INPUTS[case]
    out = tmp_path / "out" / "result.onnx"
    result = graphsurg_here(capsys, "apply", make(tmp_path), "-o", out, "-p", "cleanup")
    assert message in assert_bad_input(result)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


@pytest.mark.parametrize("case", ["declared size > raw data", "declared size > typed data",
                                  "external tensor longer than its file"])
def test_size_lies_are_refused_before_allocating(case, tmp_path):
    """The baseline of the interpreter with onnx loaded is ~100 MB; a 4 GB (or 40 GB) allocation
    attempt would show far above it (or fail with MemoryError, which is not exit code 2)."""
    result = graphsurg("inspect", BAD_INPUTS[case][0](tmp_path))
    assert_bad_input(result)
    assert result.peak_mb < 400, f"peak RSS {result.peak_mb} MB"


# ---- usage errors ---------------------------------------------------------------------------------

def test_unknown_pass_lists_the_valid_ones(tmp_path):
    line = assert_bad_input(graphsurg("apply", DIGITS_CNN, "-o", tmp_path / "o.onnx", "-p", "clean-up"))
    valid = json.loads(graphsurg("passes", "--json").stdout)
    assert "unknown pass 'clean-up'" in line
    assert all(name in line for name in valid) and {"cleanup", "fold-constants"} <= set(valid)
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("spec, expected", [
    ("fold-constants{max_megabytes=3}", "has no parameter 'max_megabytes'; valid: max_mb"),
    ("cleanup{aggressive=true}", "has no parameter 'aggressive'; valid: (none)"),
    ("fold-constants{max_mb=lots}", "max_mb='lots': expected a number"),
    ("fold-constants{max_mb}", "is not key=value"),
    ("fold-constants{max_mb=1,max_mb=2}", "given twice"),
    ("{}", "bad pass spec"),
])
def test_bad_pass_specs_are_usage_errors(spec, expected, tmp_path, capsys):
    line = assert_bad_input(graphsurg_here(capsys, "apply", DIGITS_CNN, "-o", tmp_path / "o.onnx", "-p", spec))
    assert expected in line


@pytest.mark.parametrize("args", [["inspect"], ["frobnicate"], ["apply", str(DIGITS_CNN)], ["inspect", "--nope", "x"]])
def test_command_line_mistakes_are_usage_errors(args):
    assert_bad_input(graphsurg(*args))


def test_no_command_prints_the_help_not_an_error_line(capsys):
    result = graphsurg_here(capsys)
    assert result.code == 2 and result.stdout == ""
    assert result.stderr.startswith("Usage: graphsurg") and "error" not in result.stderr
    assert all(command in result.stderr for command in ("apply", "diff", "eval", "recover", "run"))


# ---- inspect --------------------------------------------------------------------------------------

def test_inspect_text():
    result = graphsurg("inspect", DIGITS_CNN)
    assert result.code == 0 and result.stderr == ""
    text = result.stdout
    assert re.search(r"ir\s+8\s+opsets: ai\.onnx 17", text)
    assert re.search(r"input\s+float32\s+\['batch', 1, 8, 8\]", text)
    assert "largest layers" in text and "Conv" in text
    model = onnx.load(DIGITS_CNN)
    count = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    assert f"parameters {count:,}" in text


def test_inspect_json(tmp_path):
    result = graphsurg("inspect", DIGITS_CNN, "--json")
    assert result.code == 0
    info = json.loads(result.stdout)
    model = onnx.load(DIGITS_CNN)
    assert info["ir_version"] == model.ir_version and info["opsets"] == {"ai.onnx": 17}
    assert info["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 1, 8, 8]}]
    histogram = {}
    for node in model.graph.node:
        histogram[node.op_type] = histogram.get(node.op_type, 0) + 1
    assert info["op_histogram"] == histogram and info["ops"] == len(model.graph.node)
    assert info["parameters"]["count"] == sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    assert info["parameters"]["by_dtype"]["float32"]["bytes"] == 4 * info["parameters"]["by_dtype"]["float32"]["count"]
    assert info["largest_layers"][0]["parameters"] == max(r["parameters"] for r in info["largest_layers"])
    assert info["subgraphs"] == [] and info["external_data"] == []


def test_inspect_lists_external_files_and_subgraphs(tmp_path):
    folder = tmp_path / "m"
    out = folder / "ext.onnx"
    assert graphsurg("apply", DIGITS_CNN, "-o", out, "--external-data", "--size-threshold", "64").code == 0
    info = json.loads(graphsurg("inspect", out, "--json").stdout)
    assert info["external_data"] == ["ext.onnx.data"]
    then = helper.make_graph([helper.make_node("Neg", ["x"], ["t"])], "then", [], [float_info("t", [2])])
    other = helper.make_graph([helper.make_node("Abs", ["x"], ["e"])], "else", [], [float_info("e", [2])])
    path = save_model(tmp_path / "if.onnx", [helper.make_node("If", ["c"], ["y"], then_branch=then,
                                                                  else_branch=other, name="branch")],
                      [float_info("x", [2]), helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                      [float_info("y", [2])])
    info = json.loads(graphsurg("inspect", path, "--json").stdout)
    assert sorted((s["op"], s["name"]) for s in info["subgraphs"]) == [("branch", "else"), ("branch", "then")]
    assert info["op_histogram"] == {"If": 1, "Neg": 1, "Abs": 1}


# ---- apply and passes -----------------------------------------------------------------------------

def test_apply_without_passes_is_a_lossless_round_trip(tmp_path, capsys):
    for model in sorted(MODELS.glob("*.onnx")):
        out = tmp_path / model.name
        result = graphsurg_here(capsys, "apply", model, "-o", out)
        assert result.code == 0, result.stderr
        assert out.read_bytes() == model.read_bytes()


def test_apply_round_trip_of_external_data(tmp_path):
    first = tmp_path / "a" / "m.onnx"
    second = tmp_path / "b" / "m.onnx"
    assert graphsurg("apply", DIGITS_CNN, "-o", first, "--external-data", "--size-threshold", "0").code == 0
    assert graphsurg("apply", first, "-o", second).code == 0
    assert first.read_bytes() == second.read_bytes()
    assert (first.parent / "m.onnx.data").read_bytes() == (second.parent / "m.onnx.data").read_bytes()
    back = tmp_path / "back.onnx"
    assert graphsurg("apply", second, "-o", back, "--no-external-data").code == 0
    assert back.read_bytes() == DIGITS_CNN.read_bytes()


def test_apply_passes_in_order_with_a_change_record(tmp_path, run_ort):
    out, changes = tmp_path / "o.onnx", tmp_path / "changes.json"
    result = graphsurg("apply", DIGITS_CNN, "-o", out, "-p", "fold-constants{max_mb=64}", "-p", "cleanup",
                       "--changes", changes)
    assert result.code == 0, result.stderr
    record = json.loads(changes.read_text())
    assert [p["pass"] for p in record["passes"]] == ["fold-constants", "cleanup"]
    assert record["passes"][0]["params"] == {"max_mb": 64.0}
    onnx.checker.check_model(str(out), full_check=True)
    x = np.load(MODELS / "digits_test.npz")["input"][:16]
    np.testing.assert_allclose(run_ort(out, {"input": x})[0], run_ort(DIGITS_CNN, {"input": x})[0],
                               rtol=1e-5, atol=1e-5)


def test_passes_lists_passes_and_parameters():
    text = graphsurg("passes")
    assert text.code == 0
    assert re.search(r"^cleanup: ", text.stdout, re.M)
    assert re.search(r"^fold-constants: .+\n\s+max_mb\s+float\s+default 1024\.0", text.stdout, re.M)
    table = json.loads(graphsurg("passes", "--json").stdout)
    assert table["fold-constants"]["params"] == [{"name": "max_mb", "type": "float", "default": "1024.0"}]
    assert table["cleanup"]["params"] == [] and table["cleanup"]["doc"]


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("graphsurg")
    if not script.exists():
        pytest.skip("graphsurg is not installed as a console script in this interpreter's environment")
    done = subprocess.run([str(script), "inspect", str(DIGITS_CNN)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "parameters" in done.stdout


# ---- the README's quick start ----------------------------------------------------------------------

def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1)
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_quick_start_is_two_commands():
    commands = quick_start_commands()
    assert len(commands) == 2 and commands[1] == "make test"
    makefile = (ROOT / "Makefile").read_text()
    assert "python -m pytest" in makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]


@pytest.mark.slow
def test_readme_main_command_runs():
    """The first quick-start command as a user types it, with the environment already set up
    (`-o` keeps make from reinstalling .venv: a clean clone's setup is what CI exercises)."""
    make = shutil.which("make")
    if make is None or not (ROOT / ".venv" / "bin" / "graphsurg").exists():
        pytest.skip("needs make and the project's .venv")
    command = quick_start_commands()[0].split()
    assert command[0] == "make"
    done = subprocess.run([make, "-o", ".venv/bin/graphsurg", *command[1:]], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # `make demo` is `graphsurg run`: the bundled recipe's certificate table, within its budget
    assert "Traceback" not in done.stderr and "surgery magnitude" in done.stdout and "WITHIN BUDGET" in done.stdout
