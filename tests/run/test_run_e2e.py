"""`graphsurg run` end to end, as a user runs it: the console script in a subprocess, recipes written
to a temporary folder that name the bundled models and data by absolute path.

Cost control (the file should stay near 2.5 minutes on 2 cores): recovery runs a handful of
optimizer steps (`[recovery] steps`), the excise + recover runs are shared by the tests that read
them (module-scoped fixtures), and the search and budget tests disable recovery.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
# the console script of the environment running the tests (/work/main/.venv/bin/graphsurg here)
GRAPHSURG = Path(sys.executable).with_name("graphsurg")
NONDETERMINISTIC = {"timings", "latency_ms"}  # wall-clock figures; everything else must repeat exactly


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


def graphsurg(*args: str | Path, cwd: Path | None = None, timeout: int = 240) -> Run:
    assert GRAPHSURG.exists(), f"the graphsurg console script is not installed beside {sys.executable}"
    done = subprocess.run([str(GRAPHSURG), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)
    return Run(done.returncode, done.stdout, done.stderr)


def write_recipe(folder: Path, body: str, name: str = "recipe.toml") -> Path:
    """A recipe whose `@MODELS@` placeholders become the bundled models folder (absolute)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(body.replace("@MODELS@", MODELS.as_posix()))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_certificate(folder: Path) -> dict:
    return json.loads((folder / "certificate.json").read_text())


def ort_accuracy(model: Path, data: Path) -> float:
    """Top-1 accuracy straight from onnxruntime (not through graphsurg's evaluator)."""
    import onnxruntime as ort

    arrays = np.load(data)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": arrays["input"]})
    return float((logits.argmax(axis=1) == arrays["labels"]).mean())


# ---- excise + recover (with quantization, as the default recipe does), run twice -------------------

EXCISE_RECOVER = """
# excise a quarter of the channels and recover them, quantize, then a short quantization-aware recovery
model = "@MODELS@/digits_cnn.onnx"
seed = 0
pipeline = [
    { spec = "excise{ratio=0.25}", recover = true },
    "quantize",
]

[data]
calibration = "@MODELS@/digits_train.npz"
evaluation = "@MODELS@/digits_test.npz"
train = "@MODELS@/digits_train.npz"

[budget]
metric = "accuracy"
max_degradation = 0.05

[recovery]
steps = 20
lr = 0.005

[recovery.final]     # the quantization-aware recovery starts from a recovered model: gentler
steps = 10
lr = 0.001
"""


@pytest.fixture(scope="module")
def excise_runs(tmp_path_factory) -> dict:
    """The same recipe run twice: once printing JSON, once the table (the files must not care)."""
    folder = tmp_path_factory.mktemp("excise")
    recipe = write_recipe(folder, EXCISE_RECOVER)
    first = graphsurg("run", recipe, "-o", folder / "out1", "--json")
    second = graphsurg("run", recipe, "-o", folder / "out2")
    return {"recipe": recipe, "first": first, "second": second, "out1": folder / "out1", "out2": folder / "out2"}


def test_excise_and_recover_within_budget(excise_runs) -> None:
    run, out = excise_runs["first"], excise_runs["out1"]
    assert run.code == 0, run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["certificate.json", "model.onnx"]
    cert = load_certificate(out)
    assert json.loads(run.stdout) == cert  # --json prints the certificate, nothing else
    assert cert["status"] == "within_budget" and cert["schema"] == 1 and cert["seed"] == 0
    assert cert["recipe"] == "recipe.toml"
    assert [p["pass"] for p in cert["passes"]] == ["excise", "quantize"]

    # the files are the ones the certificate names
    assert cert["input"] == {"model": "digits_cnn.onnx", "sha256": sha256(MODELS / "digits_cnn.onnx")}
    assert cert["output"] == {"model": "model.onnx", "sha256": sha256(out / "model.onnx")}
    onnx.checker.check_model(onnx.load(out / "model.onnx"), full_check=True)

    # magnitude: the edit really moved the weights, per pass and per layer
    magnitude = cert["magnitude"]
    assert 0 < magnitude["relative"] < 1 and magnitude["absolute"] > 0 and magnitude["final"] > 0
    assert len(magnitude["per_pass"]) == 2 and all(m > 0 for m in magnitude["per_pass"])
    assert magnitude["per_layer"] and all(0 < v <= 1 for v in magnitude["per_layer"].values())

    # recovery: 20 steps of 64 samples after excision, then the final recovery's own 10 steps
    recovery = cert["recovery"]
    assert recovery["enabled"] and recovery["n_tune"] == (20 + 10) * 64
    assert [r["label"] for r in recovery["records"]] == ["after excise", "final"]
    assert [(r["options"]["steps"], r["options"]["lr"]) for r in recovery["records"]] == [(20, 0.005), (10, 0.001)]
    # the curve runs over both recoveries on one n_tune axis, and is fitted to a + b/sqrt(n)
    curve = recovery["curve"]
    assert [p["recovery"] for p in curve] == sorted((p["recovery"] for p in curve), key=["after excise", "final"].index)
    assert [p["n_tune"] for p in curve] == sorted(p["n_tune"] for p in curve)
    assert curve[0]["n_tune"] == 0 and curve[-1]["n_tune"] == recovery["n_tune"]
    assert recovery["fit"]["points"] == sum(1 for p in curve if p["n_tune"] > 0)
    excise = cert["passes"][0]
    assert excise["metrics_after_recovery"]["accuracy"] > excise["metrics_after"]["accuracy"] + 0.5

    # the budget: recovered accuracy within it, and that is what the written model scores
    budget, metrics = cert["budget"], cert["metrics"]
    assert budget["metric"] == "accuracy" and budget["max_degradation"] == 0.05 and budget["within"]
    assert budget["original"] == metrics["original"]["accuracy"] == pytest.approx(0.9972, abs=1e-4)
    assert budget["final"] == metrics["recovered"]["accuracy"]
    assert 0 <= budget["degradation"] <= 0.05
    assert budget["degradation"] == pytest.approx(budget["original"] - budget["final"])
    assert ort_accuracy(out / "model.onnx", MODELS / "digits_test.npz") == pytest.approx(budget["final"])
    assert cert["delta_loss"]["immediate"] == pytest.approx(metrics["immediate"]["loss"] - metrics["original"]["loss"])

    # sizes, parameters, latency, the bound check, versions
    model = cert["model"]
    assert model["parameters_after"] < model["parameters_before"] == 10010
    assert model["size_before"] == (MODELS / "digits_cnn.onnx").stat().st_size
    assert model["size_after"] == (out / "model.onnx").stat().st_size < model["size_before"]
    assert cert["latency_ms"]["before"]["median"] > 0 and cert["latency_ms"]["after"]["median"] > 0
    bound = cert["bound"]
    assert bound["C"] > 0 and bound["delta_theta"] == pytest.approx(magnitude["absolute"])
    assert bound["bound"] == pytest.approx(bound["C"] * bound["delta_theta"])
    assert bound["held"] == (abs(bound["measured_delta_loss"]) <= bound["bound"])
    assert cert["versions"]["graphsurg"] and cert["versions"]["onnxruntime"] and cert["versions"]["torch"]


def test_progress_lines_name_every_stage(excise_runs) -> None:
    stderr = excise_runs["first"].stderr
    for stage in ("load digits_cnn.onnx", "measure the original", "pass excise{ratio=0.25}", "recover (after excise",
                  "pass quantize", "measure the edited model", "recover (final)", "measure the recovered model",
                  "write ", "perturbation bound", "certificate.json"):
        assert stage in stderr, stage
    assert all(re.match(r"\[\s*\d+\.\ds\] ", line) for line in stderr.splitlines() if line.strip())


def test_table_is_printed_without_json(excise_runs) -> None:
    run = excise_runs["second"]
    assert run.code == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].split() == ["stage", "loss", "accuracy", "agreement", "kl"]
    assert [line.split()[0] for line in lines[1:4]] == ["original", "after", "+"]
    assert "WITHIN BUDGET" in lines[-1] and any(line.startswith(f"n_tune = {(20 + 10) * 64}") for line in lines)


def _without_timings(cert: dict) -> dict:
    return {k: v for k, v in cert.items() if k not in NONDETERMINISTIC}


def test_same_recipe_twice_is_byte_identical(excise_runs) -> None:
    one, two = excise_runs["out1"], excise_runs["out2"]
    assert excise_runs["second"].code == 0, excise_runs["second"].stderr
    assert (one / "model.onnx").read_bytes() == (two / "model.onnx").read_bytes()
    first, second = load_certificate(one), load_certificate(two)
    assert NONDETERMINISTIC <= set(first)
    assert json.dumps(_without_timings(first), sort_keys=True) == json.dumps(_without_timings(second), sort_keys=True)
    # nothing time-dependent hides elsewhere: latency lives only under the top-level key
    assert '"elapsed_s"' not in (one / "certificate.json").read_text()
    assert all("latency_ms" not in stage for stage in first["metrics"].values() if stage)


# ---- an impossible budget ----------------------------------------------------------------------------

OVER_BUDGET = """
model = "@MODELS@/digits_cnn.onnx"
pipeline = ["excise{ratio=0.5}"]

[data]
evaluation = "@MODELS@/digits_test.npz"

[budget]
metric = "accuracy"
max_degradation = 0.0   # half the channels gone and no recovery: cannot hold

[recovery]
enabled = false
"""


def test_impossible_budget_writes_the_best_model_marked(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, OVER_BUDGET)
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"left by an earlier run that met its budget")
    run = graphsurg("run", recipe, "-o", out)
    assert run.code == 1, run.stderr
    (error,) = [line for line in run.stderr.splitlines() if line.startswith("graphsurg:")]
    assert error.startswith("graphsurg: error: over budget: accuracy degraded by ")
    assert error.endswith(f"the best model is written as {out / 'model.over-budget.onnx'}")
    assert "OVER BUDGET" in run.stdout
    # the shippable name is gone: only the marked model and its certificate are there
    assert sorted(p.name for p in out.iterdir()) == ["certificate.json", "model.over-budget.onnx"]
    cert = load_certificate(out)
    assert cert["status"] == "over_budget" and not cert["budget"]["within"]
    assert cert["budget"]["degradation"] > 0.5 and cert["metrics"]["recovered"] is None
    assert cert["output"] == {"model": "model.over-budget.onnx", "sha256": sha256(out / "model.over-budget.onnx")}
    assert cert["recovery"] == {"enabled": False, "n_tune": 0, "curve": [], "fit": None, "records": []}
    written = onnx.load(out / "model.over-budget.onnx")
    assert {p.key: p.value for p in written.metadata_props}["graphsurg.status"] == "over-budget"
    assert ort_accuracy(out / "model.over-budget.onnx", MODELS / "digits_test.npz") == cert["budget"]["final"]


# ---- broken recipes: exit 2, one located line, nothing written ------------------------------------

GOOD = """model = "@MODELS@/digits_cnn.onnx"
pipeline = ["excise{ratio=0.25}"]

[data]
evaluation = "@MODELS@/digits_test.npz"

[budget]
max_degradation = 0.02

[recovery]
enabled = false
"""


@pytest.mark.parametrize(
    ("old", "new", "key", "message"),
    [
        ("enabled = false", "enabled = false\nepoch = 3", "recovery.epoch", "unknown key"),
        ("max_degradation = 0.02", 'max_degradation = "2%"', "budget.max_degradation", "expected float"),
        ("digits_test.npz", "digits_tset.npz", "data.evaluation", "file not found"),
        ("excise{ratio=0.25}", "excise{ratio=0.25,speed=2}", "pipeline[0]", "has no parameter 'speed'"),
    ],
)
def test_broken_recipe_is_located_and_nothing_is_written(tmp_path: Path, old: str, new: str, key: str,
                                                        message: str) -> None:
    recipe = write_recipe(tmp_path, GOOD.replace(old, new))
    changed = new.splitlines()[-1]
    line = next(n for n, text in enumerate(recipe.read_text().splitlines(), 1) if changed in text)
    out = tmp_path / "out"
    run = graphsurg("run", recipe, "-o", out)
    assert run.code == 2
    assert run.stdout == "" and len(run.stderr.splitlines()) == 1, run.stderr
    assert run.stderr.startswith(f"graphsurg: error: {recipe}:{line}: {key}: "), run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr
    assert not out.exists()


# ---- `graphsurg run` with no argument: the bundled default recipe ----------------------------------

def test_no_argument_runs_the_default_recipe_into_graphsurg_out(tmp_path: Path) -> None:
    run = graphsurg("run", cwd=tmp_path)
    assert run.code == 0, run.stderr
    out = tmp_path / "graphsurg-out"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graphsurg-out"]
    assert sorted(p.name for p in out.iterdir()) == ["certificate.json", "model.onnx"]
    cert = load_certificate(out)
    assert cert["recipe"] == "default_recipe.toml" and cert["status"] == "within_budget"
    assert [p["pass"] for p in cert["passes"]] == ["excise", "quantize"]
    assert cert["output"]["sha256"] == sha256(out / "model.onnx")
    table = run.stdout.splitlines()
    assert table[0].startswith("stage") and any(row.startswith("recovered") for row in table)
    assert any(row.startswith("surgery magnitude") for row in table) and "WITHIN BUDGET" in table[-1]
    # [recovery.final]'s gentler rate lets the quantization-aware recovery improve on where it started
    assert cert["recovery"]["records"][-1]["best"]["epoch"] > 0


# ---- minimal surgery search: prune{sparsity=auto} against brute force -------------------------------

SEARCH = """
model = "@MODELS@/digits_mlp.onnx"
pipeline = ["prune{sparsity=auto}"]

[data]
evaluation = "@MODELS@/digits_test.npz"

[budget]
metric = "kl"            # KL(original || pruned) in nats: smooth in the sparsity, so bisection applies
max_degradation = 0.05
tolerance = 0.02

[recovery]
enabled = false
"""


def _kl_after_prune(sparsity: float, original) -> float:
    """The orchestrator's measurement of a candidate: the pass on a fresh copy, then evaluate()."""
    from graphsurg import serde
    from graphsurg.eval import evaluate
    from graphsurg.pipeline import make_pass, run_passes

    model = serde.load(MODELS / "digits_mlp.onnx")
    run_passes(model, [make_pass(f"prune{{sparsity={sparsity:.6g}}}")])
    metrics = evaluate(model, str(MODELS / "digits_test.npz"), ref=original, labels="labels", batch_size=64)
    return metrics["metrics"]["kl"]


def test_auto_sparsity_is_within_0_05_of_the_brute_force_largest(tmp_path: Path) -> None:
    from graphsurg import serde

    run = graphsurg("run", write_recipe(tmp_path, SEARCH), "-o", tmp_path / "out", "--json")
    assert run.code == 0, run.stderr
    cert = json.loads(run.stdout)
    (search,) = cert["searches"]
    assert search["pass"] == "prune" and search["parameter"] == "sparsity" and search["tolerance"] == 0.02

    original = serde.load(MODELS / "digits_mlp.onnx")
    grid = np.round(np.arange(0.0, 0.99 + 1e-9, 0.025), 6)
    feasible = [_kl_after_prune(s, original) <= 0.05 for s in grid]
    largest = float(grid[max(i for i, ok in enumerate(feasible) if ok)])
    # the premise of bisection: feasibility falls once and stays down
    assert feasible == [True] * feasible.index(False) + [False] * (len(grid) - feasible.index(False))
    assert 0.3 < largest < 0.9  # the budget bites inside the range, so the search had work to do
    assert abs(search["value"] - largest) <= 0.05, (search["value"], largest)

    # every evaluation is reported, measured as the test measures it, and there are O(log 1/tol) of them
    evaluations = search["evaluations"]
    assert 3 <= len(evaluations) <= 1 + math.ceil(math.log2(0.99 / 0.02))
    assert len(re.findall(r"search sparsity=", run.stderr)) == len(evaluations)
    for entry in evaluations:
        assert entry["degradation"] == pytest.approx(_kl_after_prune(entry["sparsity"], original), abs=1e-9)
        assert entry["within"] == (entry["degradation"] <= 0.05)
    assert any(e["sparsity"] == pytest.approx(search["value"]) and e["within"] for e in evaluations)
    # and the model written is the searched amount, within budget
    assert cert["passes"][0]["params"]["sparsity"] == pytest.approx(search["value"], abs=1e-6)
    assert cert["passes"][0]["changes"]["sparsity"] == pytest.approx(search["value"], abs=1e-3)
    assert cert["status"] == "within_budget" and cert["budget"]["degradation"] <= 0.05


# ---- iterative schedule: prune -> (rewind) -> recover, three rounds --------------------------------

SCHEDULE = """
model = "@MODELS@/digits_mlp.onnx"
pipeline = [{ spec = "prune{sparsity=0.8}", repeat = 3, recover = @RECOVER@, rewind = true }]

[data]
evaluation = "@MODELS@/digits_test.npz"
train = "@MODELS@/digits_train.npz"

[budget]
metric = "accuracy"
max_degradation = 0.5   # the schedule is under test here, not the budget

[recovery]
enabled = false         # no final recovery: only the rounds' own
steps = 10
lr = 0.002
"""


def _pruned_weights(model: onnx.ModelProto) -> list[np.ndarray]:
    """The Gemm weights prune's default `ops` reach in digits_mlp (input 1 of each Gemm)."""
    from onnx import numpy_helper

    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [initializers[node.input[1]] for node in model.graph.node if node.op_type == "Gemm"]


def test_iterative_prune_recover_rewind_reaches_the_target_in_three_rounds(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, SCHEDULE.replace("@RECOVER@", "true"))
    run = graphsurg("run", recipe, "-o", tmp_path / "out", "--json")
    assert run.code == 0, run.stderr
    cert = json.loads(run.stdout)
    rounds = cert["passes"]
    assert [(p["pass"], p["round"], p["rounds"], p["rewound"]) for p in rounds] == \
        [("prune", i, 3, True) for i in (1, 2, 3)]
    # geometric schedule: round i targets 1 - 0.2^(i/3), so each round prunes the same share of what is left
    targets = [1 - 0.2 ** (i / 3) for i in (1, 2, 3)]
    assert [p["changes"]["sparsity"] for p in rounds] == pytest.approx(targets, abs=1e-3)
    assert all("metrics_after_recovery" in p for p in rounds)
    assert [r["label"] for r in cert["recovery"]["records"]] == [f"after prune round {i}" for i in (1, 2, 3)]
    assert cert["recovery"]["n_tune"] == 3 * 10 * 64
    assert len(re.findall(r"recover \(after prune round \d\)", run.stderr)) == 3
    # recovery kept the zeros: the written model is 80% sparse in the pruned weights
    weights = _pruned_weights(onnx.load(tmp_path / "out" / "model.onnx"))
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
    assert zeros == pytest.approx(0.8, abs=1e-3)


def test_rewind_puts_surviving_weights_back_to_their_original_values(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, SCHEDULE.replace("@RECOVER@", "false"))
    run = graphsurg("run", recipe, "-o", tmp_path / "out")
    assert run.code in (0, 1), run.stderr  # no recovery at all: the budget may or may not hold
    written = _pruned_weights(onnx.load(next((tmp_path / "out").glob("model*.onnx"))))
    for new, old in zip(written, _pruned_weights(onnx.load(MODELS / "digits_mlp.onnx")), strict=True):
        assert np.array_equal(new[new != 0], old[new != 0])
    zeros = sum(int((w == 0).sum()) for w in written) / sum(w.size for w in written)
    assert zeros == pytest.approx(0.8, abs=1e-3)
