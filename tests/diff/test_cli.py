"""`graphsurg diff` on the command line: exit codes, text, JSON schema, HTML file, textconv and git."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from graphsurg.cli import main
from graphsurg.diff import SCHEMA

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib
import _diff_edits as E  # noqa: E402

MLP = str(E.MODELS / "digits_mlp.onnx")


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.fixture
def edited(tmp_path) -> str:
    base = E.load("digits_mlp")
    return str(E.save(E.remove_node(E.scale_weight(base, "net.5.weight", 2.0), "/net/net.2/Relu"),
                      tmp_path / "edited.onnx"))


def test_exit_codes(tmp_path, capsys, edited):
    assert cli(["diff", MLP, MLP], capsys)[0] == 0
    assert cli(["diff", MLP, edited], capsys)[0] == 1
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    for args in (["diff", MLP, str(junk)], ["diff", MLP, str(tmp_path / "missing.onnx")], ["diff", MLP],
                 ["diff", "--textconv", MLP, MLP]):
        code, out, err = cli(args, capsys)
        assert code == 2, args
        assert err.startswith("graphsurg: error:") and len(err.strip().splitlines()) == 1
        assert "Traceback" not in err


def test_text_starts_with_a_summary_and_is_plain_off_a_terminal(capsys, edited):
    code, out, _ = cli(["diff", MLP, edited], capsys)
    lines = out.splitlines()
    assert lines[0] == "differs: 1 op removed, 1 op changed, 1 weight changed"
    assert "\x1b[" not in out
    assert "  1. remove Relu after /net/net.1/Gemm, before /net/net.3/Gemm" in lines
    assert any(line.startswith("  ~ net.5.weight  float32[10,64]  |dW|/|W| 1") for line in lines)
    _, coloured, _ = cli(["diff", MLP, edited, "--color"], capsys)
    assert "\x1b[" in coloured


def test_json_follows_the_documented_schema(capsys, edited):
    code, out, _ = cli(["diff", MLP, edited, "--json"], capsys)
    report = json.loads(out)
    assert code == 1 and report["schema"] == SCHEMA
    assert set(report) == {"schema", "a", "b", "identical", "summary", "counts", "model", "graph", "numeric"}
    assert set(report["graph"]) == {"edits", "inputs", "outputs", "ops", "weights", "matching", "subgraphs"}
    assert report["counts"]["ops_removed"] == 1 and report["counts"]["weights_changed"] == 1
    (weight,) = report["graph"]["weights"]["changed"]
    assert set(weight) >= {"before", "after", "users", "shape", "dtype", "quantized", "sparsity", "rel_change",
                           "max_abs_change"}
    assert weight["rel_change"] == pytest.approx(1.0)
    (op,) = report["graph"]["ops"]["removed"]
    assert op == {"name": "/net/net.2/Relu", "op_type": "Relu", "domain": "ai.onnx",
                  "inputs": ["/net/net.1/Gemm_output_0"], "outputs": ["/net/net.2/Relu_output_0"]}
    assert cli(["diff", MLP, edited, "--json"], capsys)[1] == out  # deterministic


def test_html_file_is_self_contained(tmp_path, capsys, edited):
    page = tmp_path / "diff.html"
    code, out, _ = cli(["diff", MLP, edited, "--html", str(page)], capsys)
    assert code == 1 and out.startswith("differs:")
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<script src" not in html and "<link" not in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html
    data = json.loads(html.split('<script type="application/json" id="diff-data">')[1].split("</script>")[0])
    assert {n["status"] for n in data["nodes"]} >= {"removed", "changed", "weights", "unchanged", "io"}


def test_textconv_is_stable(tmp_path, capsys):
    code, first, _ = cli(["diff", "--textconv", MLP], capsys)
    assert code == 0
    copy = tmp_path / "copy.onnx"
    shutil.copy(MLP, copy)
    assert cli(["diff", "--textconv", str(copy)], capsys)[1] == first
    lines = first.splitlines()
    assert lines[0] == "# graphsurg textconv 1"
    assert "input input: float32[batch,1,8,8]" in lines and "output logits: float32[batch,10]" in lines
    assert any(line.startswith("init net.1.weight: float32[128,64] hash=") for line in lines)
    assert any("= Gemm<alpha=1.0, beta=1.0, transB=1>(/net/net.0/Flatten_output_0, net.1.weight, net.1.bias)"
               in line for line in lines)


@pytest.fixture
def git_repo(tmp_path):
    """A fresh repository set up as the README says: .gitattributes marks *.onnx, git config names
    the textconv command. Returns a function running git in it."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(tmp_path), "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    git("config", "diff.onnx.textconv", f"{sys.executable} -m graphsurg diff --textconv")
    (repo / ".gitattributes").write_text("*.onnx diff=onnx\n")
    git.repo = repo
    return git


def save_external(proto: onnx.ModelProto, path: Path) -> None:
    Path(f"{path}.data").unlink(missing_ok=True)  # onnx.save appends to an existing data file
    onnx.save(proto, path, save_as_external_data=True, location=f"{path.name}.data", size_threshold=0)


def _changed_lines(patch: str) -> list[str]:
    return [line for line in patch.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def test_git_diff_uses_textconv(git_repo, edited):
    shutil.copy(MLP, git_repo.repo / "model.onnx")
    git_repo("add", ".")
    git_repo("commit", "-q", "-m", "model")
    shutil.copy(edited, git_repo.repo / "model.onnx")
    patch = git_repo("diff")
    changed = _changed_lines(patch)
    assert any(line.startswith("-init net.5.weight: float32[10,64]") for line in changed)
    assert any(line.startswith("+init net.5.weight: float32[10,64]") for line in changed)
    assert any(line.startswith("-/net/net.2/Relu_output_0 = Relu(") for line in changed)
    assert "Binary files" not in patch


def test_git_diff_of_a_model_with_external_data(git_repo, edited):
    """git hands textconv a lone temporary copy of the old model file, without its data file beside
    it: external weights are shown by location on both sides, so only real changes differ."""
    model = git_repo.repo / "model.onnx"
    save_external(E.load("digits_mlp"), model)
    git_repo("add", ".")
    git_repo("commit", "-q", "-m", "model")
    save_external(E.remove_node(E.load("digits_mlp"), "/net/net.2/Relu"), model)
    patch = git_repo("diff", "--", "model.onnx")
    changed = _changed_lines(patch)
    assert any(line.startswith("-/net/net.2/Relu_output_0 = Relu(") for line in changed)
    assert not any(line[1:].startswith("init ") for line in changed)  # same layout, same lines
    assert 'init net.5.weight: float32[10,64] external="model.onnx.data"' in patch
    assert "Binary files" not in patch and "error" not in patch
