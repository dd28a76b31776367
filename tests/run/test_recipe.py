"""Recipe parsing: every error is located before any work starts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from graphsurg.recipe import RecipeError, load_recipe

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


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("epochs = 2", "epochs = \"two\""), r"recipe.toml:\d+: recovery.epochs: expected int"),
        (("[budget]", "[budget]\nbogus = 1"), r"recipe.toml:\d+: budget.bogus: unknown key"),
        (("digits_test.npz", "missing.npz"), r"recipe.toml:\d+: data.evaluation: file not found: missing.npz"),
        (("\"cleanup\"", "\"nosuchpass\""), r"pipeline: unknown pass 'nosuchpass'"),
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
