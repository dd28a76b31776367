"""Recipe parsing: every error is located before any work starts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from graphsurg.recipe import RecipeError, load_recipe, searched_parameter

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    for name in ("digits_cnn.onnx", "digits_train.npz", "digits_test.npz"):
        shutil.copy(MODELS / name, tmp_path / name)
    return tmp_path


def write(workdir: Path, text: str) -> Path:
    path = workdir / "recipe.toml"
    path.write_text(text)
    return path


GOOD = """
model = "digits_cnn.onnx"
seed = 3
pipeline = ["cleanup", {spec = "fold-constants", repeat = 2}]

[data]
evaluation = "digits_test.npz"
train = "digits_train.npz"

[budget]
metric = "accuracy"
max_degradation = 0.02

[recovery]
epochs = 2
lr = 0.001
"""


def test_good_recipe_resolves_paths_relative_to_the_file(workdir: Path) -> None:
    recipe = load_recipe(write(workdir, GOOD))
    assert recipe.model == (workdir / "digits_cnn.onnx").resolve()
    assert recipe.data.evaluation == (workdir / "digits_test.npz").resolve()
    assert [s.spec.name for s in recipe.steps] == ["cleanup", "fold-constants"]
    assert recipe.steps[1].repeat == 2
    assert recipe.budget.max_degradation == 0.02 and recipe.recovery.epochs == 2 and recipe.seed == 3


def test_final_recovery_overrides_only_what_it_names(workdir: Path) -> None:
    recipe = load_recipe(write(workdir, GOOD + "\n[recovery.final]\nlr = 0.0001\ntrain = \"touched\"\n"))
    assert (recipe.recovery.lr, recipe.recovery.train) == (0.001, "all")
    assert (recipe.final_recovery.lr, recipe.final_recovery.train, recipe.final_recovery.epochs) == \
        (0.0001, "touched", 2)  # epochs comes from [recovery]
    assert load_recipe(write(workdir, GOOD)).final_recovery == load_recipe(write(workdir, GOOD)).recovery


@pytest.mark.parametrize(
    ("final", "expected"),
    [
        ("lr = 0.0", r"recipe.toml:19: recovery.final.lr: must be > 0"),
        ("enabled = false", r"recipe.toml:19: recovery.final.enabled: not here"),
        ("train = \"some\"", r"recipe.toml:19: recovery.final.train: expected all, head or touched"),
        ("colour = 1", r"recipe.toml:19: recovery.final.colour: unknown key"),
    ],
)
def test_final_recovery_errors_are_located(workdir: Path, final: str, expected: str) -> None:
    with pytest.raises(RecipeError, match=expected):
        load_recipe(write(workdir, GOOD + f"\n[recovery.final]\n{final}\n"))


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("epochs = 2", "epochs = \"two\""), r"recipe.toml:\d+: recovery.epochs: expected int"),
        (("[budget]", "[budget]\nbogus = 1"), r"recipe.toml:\d+: budget.bogus: unknown key"),
        (("digits_test.npz", "missing.npz"), r"recipe.toml:\d+: data.evaluation: file not found: missing.npz"),
        (("\"cleanup\"", "\"nosuchpass\""), r"recipe.toml:4: pipeline\[0\]: unknown pass 'nosuchpass'"),
        (("\"cleanup\"", "\"cleanup{x=1}\""), r"pass 'cleanup' has no parameter 'x'"),
        (("metric = \"accuracy\"", "metric = \"speed\""), r"budget.metric: unknown metric 'speed'"),
        (("seed = 3", "seed = 3\ncolour = 1"), r"colour: unknown key"),
    ],
)
def test_errors_are_located(workdir: Path, edit: tuple[str, str], expected: str) -> None:
    path = write(workdir, GOOD.replace(*edit, 1))
    with pytest.raises(RecipeError, match=expected):
        load_recipe(path)


def test_invalid_toml_names_the_line(workdir: Path) -> None:
    with pytest.raises(RecipeError, match=r"not valid TOML: .*line 2"):
        load_recipe(write(workdir, 'model = "digits_cnn.onnx"\n[data\n'))


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        # data each stage needs is named before any work: evaluation always, train when anything recovers
        (("evaluation = \"digits_test.npz\"\n", ""), r"recipe.toml:\d+: data.evaluation: missing"),
        (("train = \"digits_train.npz\"\n", ""), r"recipe.toml:\d+: data.train: missing: recovery needs"),
        (("evaluation = \"digits_test.npz\"", "evaluation = \"unlabelled.npz\""),
         r"data.evaluation: unlabelled.npz has no labels array 'labels' \(arrays: input\)"),
        (("train = \"digits_train.npz\"", "train = \"unlabelled.npz\""),
         r"data.train: unlabelled.npz has no labels array 'labels'.*use_labels = false"),
        # ranges that would otherwise fail, or loop, in the middle of a run
        (("max_degradation = 0.02", "max_degradation = 0.02\ntolerance = 0.0"), r"budget.tolerance: must be > 0"),
        (("lr = 0.001", "lr = 0.001\nsteps = 0"), r"recovery.steps: must be >= 1"),
        (("metric = \"accuracy\"", "metric = \"sqnr_db\""), r"budget.metric: sqnr_db cannot be a budget"),
        (("[recovery]", "[output]\nmodel = \"../elsewhere.onnx\"\n[recovery]"), r"output.model: expected a file name"),
        # pipeline entries: located at their own line, named by position
        (("{spec = \"fold-constants\", repeat = 2}", "{spec = \"fold-constants\", repeat = 0}"),
         r"recipe.toml:4: pipeline\[1\]: repeat must be >= 1"),
        (("{spec = \"fold-constants\", repeat = 2}", "{spec = \"fold-constants\", repeat = true}"),
         r"recipe.toml:4: pipeline\[1\]: repeat: expected int"),
        (("{spec = \"fold-constants\", repeat = 2}", "{repeat = 2}"), r"pipeline\[1\]: missing spec"),
        (("\"cleanup\"", "\"excise{importance=auto}\""), r"pipeline\[0\]: pass 'excise': importance='auto': expected"),
        (("\"cleanup\"", "\"prune{sparsity=auto,threshold=0.1}\""), r"pipeline\[0\]: .*sparsity or threshold"),
    ],
)
def test_what_would_fail_later_is_located_now(workdir: Path, edit: tuple[str, str], expected: str) -> None:
    np.savez(workdir / "unlabelled.npz", input=np.zeros((4, 1, 8, 8), np.float32))
    assert edit[0] in GOOD
    with pytest.raises(RecipeError, match=expected):
        load_recipe(write(workdir, GOOD.replace(*edit, 1)))


def test_auto_is_searched_only_for_amounts(workdir: Path) -> None:
    """`auto` is an ordinary value of some parameters (excise's target); only ratio/sparsity are searched."""
    text = GOOD.replace('"cleanup"', '"excise{ratio=auto,target=auto}", "prune{sparsity=auto}", "excise{target=auto}"')
    steps = load_recipe(write(workdir, text)).steps
    assert [searched_parameter(s.spec) for s in steps] == ["ratio", "sparsity", None, None]


def test_a_pipeline_entry_is_located_on_its_own_line(workdir: Path) -> None:
    text = GOOD.replace('pipeline = ["cleanup", {spec = "fold-constants", repeat = 2}]',
                        'pipeline = [\n    "cleanup",\n    # comment\n    "prune{sparsity=2}",\n]')
    with pytest.raises(RecipeError, match=r"recipe.toml:7: pipeline\[1\]: pass 'prune': sparsity must be in"):
        load_recipe(write(workdir, text))
