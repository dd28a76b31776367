"""Surgery recipes: a TOML file naming the model, data, passes, budget, recovery and outputs.

TOML because the standard library reads it (tomllib, no extra dependency), it has comments and
real types (a number stays a number: no YAML `no` -> False surprises), and a recipe is a small
flat configuration, which is what TOML is for. Paths are relative to the recipe file. Every
error is reported with its location (file, line, key) before any work starts.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from graphsurg.errors import BadInputError
from graphsurg.pipeline.spec import PassSpec, parse_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

# Budget metrics: each needs a finite reference value to degrade from. Not sqnr_db: the original
# against itself has infinite SQNR, so no amount of degradation from it is measurable.
METRICS = ("loss", "accuracy", "agreement", "kl", "cosine", "mse")
TASK_METRICS = ("loss", "accuracy")  # the ones that need labels in the evaluation data

# Parameters `auto` can stand for (the minimal surgery search): name -> upper end of the search.
SEARCHABLE = {"ratio": 0.95, "sparsity": 0.99}


@dataclass
class DataSection:
    calibration: Path | None = None
    evaluation: Path | None = None
    train: Path | None = None
    labels: str = "labels"  # key of the labels array in the .npz files
    batch_size: int = 64


@dataclass
class BudgetSection:
    metric: str = "accuracy"
    max_degradation: float = 0.01
    tolerance: float = 0.02  # bisection tolerance of `auto` parameters


@dataclass
class RecoverySection:
    enabled: bool = True
    epochs: int = 3
    steps: int | None = None
    lr: float = 1e-3
    batch_size: int = 64
    train: str = "all"
    temperature: float = 4.0
    alpha: float = 0.5  # task loss share when labels are used; the rest is distillation from the original
    use_labels: bool = True
    val_split: float = 0.1  # held out of the training data for early stopping


@dataclass
class OutputSection:
    dir: Path = Path("graphsurg-out")
    model: str = "model.onnx"
    certificate: str = "certificate.json"


@dataclass
class Step:
    """One pipeline entry: a pass spec, optionally repeated, with recovery after each round when
    `recover` is set (so a later pass, e.g. quantization calibration, sees a recovered model)."""

    spec: PassSpec
    repeat: int = 1
    recover: bool = False
    rewind: bool = False


@dataclass
class Recipe:
    path: Path
    model: Path
    steps: list[Step]
    data: DataSection = field(default_factory=DataSection)
    budget: BudgetSection = field(default_factory=BudgetSection)
    recovery: RecoverySection = field(default_factory=RecoverySection)
    output: OutputSection = field(default_factory=OutputSection)
    seed: int = 0
    final_recovery: RecoverySection | None = None  # [recovery] with [recovery.final]'s keys on top

    def __post_init__(self) -> None:
        if self.final_recovery is None:
            self.final_recovery = self.recovery


class RecipeError(BadInputError):
    """A recipe problem, located as `file:line: [section].key: message`."""


class _Locator:
    def __init__(self, path: Path, text: str):
        self.path, self.lines = path, text.splitlines()

    def error(self, keys: tuple[str, ...], message: str, near: str | None = None, index: int | None = None
              ) -> RecipeError:
        """`near`: text of the offending value (a pipeline entry), whose line is more precise than the
        key's; `index`: the entry's position in a list key, shown as `pipeline[2]`."""
        where = ".".join(keys) + (f"[{index}]" if index is not None else "")
        line = (self._line_with(near) if near else None) or self._line_of(keys)
        prefix = f"{self.path}:{line}" if line else str(self.path)
        return RecipeError(f"{prefix}: {where}: {message}" if where else f"{prefix}: {message}")

    def _line_with(self, text: str) -> int | None:
        for number, line in enumerate(self.lines, 1):
            if text in line.split("#", 1)[0]:
                return number
        return None

    def _line_of(self, keys: tuple[str, ...]) -> int | None:
        """Best effort: the line of the key inside its section (tomllib reports no positions)."""
        section_line, in_section = None, len(keys) <= 1
        for number, line in enumerate(self.lines, 1):
            stripped = line.strip()
            if len(keys) > 1 and re.match(rf"^\[\[?\s*{re.escape('.'.join(keys[:-1]))}\s*\]\]?", stripped):
                section_line, in_section = number, True
                continue
            if stripped.startswith("[") and len(keys) > 1 and section_line:
                in_section = False
            if in_section and keys and re.match(rf"^{re.escape(keys[-1])}\s*=", stripped):
                return number
        return section_line


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file")
    text = path.read_text(encoding="utf-8")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML: {exc}") from None
    return _build(raw, _Locator(path, text), path.resolve().parent, path)


_TOP_KEYS = {"model", "pipeline", "data", "budget", "recovery", "output", "seed"}


def _build(raw: dict[str, Any], loc: _Locator, base: Path, path: Path) -> Recipe:
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise loc.error((unknown[0],), f"unknown key; valid: {', '.join(sorted(_TOP_KEYS))}")
    if "model" not in raw:
        raise loc.error(("model",), "missing: the model to operate on")
    model = _existing_path(_typed(raw["model"], str, ("model",), loc), base, ("model",), loc)
    data = _section(raw.get("data", {}), DataSection, ("data",), loc, base)
    budget = _section(raw.get("budget", {}), BudgetSection, ("budget",), loc, base)
    if budget.metric == "sqnr_db":
        raise loc.error(("budget", "metric"), "sqnr_db cannot be a budget: the original's SQNR against itself is "
                        "infinite, so there is no finite reference to degrade from; use mse, cosine or kl")
    if budget.metric not in METRICS:
        raise loc.error(("budget", "metric"), f"unknown metric {budget.metric!r}; valid: {', '.join(METRICS)}")
    recovery, final_recovery = _recovery_sections(raw.get("recovery", {}), loc, base)
    output = _section(raw.get("output", {}), OutputSection, ("output",), loc, base, must_exist=False)
    steps = _steps(raw.get("pipeline", []), loc)
    seed = _typed(raw.get("seed", 0), int, ("seed",), loc)
    recipe = Recipe(path, model, steps, data, budget, recovery, output, seed, final_recovery)
    _check_values(recipe, loc)
    _check_data(recipe, loc)
    return recipe


def _recovery_sections(raw: Any, loc: _Locator, base: Path) -> tuple[RecoverySection, RecoverySection]:
    """[recovery] and the final recovery's settings: [recovery.final] overrides some of its keys for
    the recovery after the last step (often a gentler one: it starts from a recovered model)."""
    final_raw = raw.get("final", {}) if isinstance(raw, dict) else {}
    recovery = _section({k: v for k, v in raw.items() if k != "final"} if isinstance(raw, dict) else raw,
                        RecoverySection, ("recovery",), loc, base)
    typed = _section(final_raw, RecoverySection, ("recovery", "final"), loc, base)
    if "enabled" in final_raw:
        raise loc.error(("recovery", "final", "enabled"), "not here: [recovery] enabled turns the final recovery "
                        "on or off")
    final = replace(recovery, **{key: getattr(typed, key) for key in final_raw})
    for keys, section in ((("recovery",), recovery), (("recovery", "final"), final)):
        if section.train not in ("all", "head", "touched"):
            raise loc.error((*keys, "train"), "expected all, head or touched")
    return recovery, final


def _check_values(recipe: Recipe, loc: _Locator) -> None:
    """Ranges TOML's types cannot express; each would otherwise fail (or loop) in the middle of a run."""
    checks = [
        (("budget", "tolerance"), recipe.budget.tolerance > 0, "must be > 0 (the bisection step of `auto`)"),
        (("data", "labels"), bool(recipe.data.labels), "expected the key of the labels array "
         "(to train without labels: [recovery] use_labels = false)"),
        (("data", "batch_size"), recipe.data.batch_size >= 1, "must be >= 1"),
    ]
    for keys, section in ((("recovery",), recipe.recovery), (("recovery", "final"), recipe.final_recovery)):
        checks += [
            ((*keys, "batch_size"), section.batch_size >= 1, "must be >= 1"),
            ((*keys, "epochs"), section.epochs >= 1, "must be >= 1"),
            ((*keys, "steps"), section.steps is None or section.steps >= 1, "must be >= 1"),
            ((*keys, "lr"), section.lr > 0, "must be > 0"),
            ((*keys, "val_split"), 0 <= section.val_split < 1, "must be in [0, 1)"),
            ((*keys, "alpha"), 0 <= section.alpha <= 1, "must be in [0, 1]"),
            ((*keys, "temperature"), section.temperature > 0, "must be > 0"),
        ]
    for keys, ok, message in checks:
        if not ok:
            raise loc.error(keys, message)
    for name in ("model", "certificate"):
        value = getattr(recipe.output, name)
        if not value or Path(value).name != value:
            raise loc.error(("output", name), f"expected a file name (written in the output folder), got {value!r}")


def _check_data(recipe: Recipe, loc: _Locator) -> None:
    """The data each stage needs must be named now, not discovered missing after minutes of work."""
    data = recipe.data
    if data.evaluation is None:
        raise loc.error(("data", "evaluation"), "missing: the data every stage is measured on "
                        "(.npz or test-data folder)")
    recovers = recipe.recovery.enabled or any(step.recover for step in recipe.steps)
    if recovers and data.train is None:
        raise loc.error(("data", "train"), "missing: recovery needs training data "
                        "(or set [recovery] enabled = false and no step recover = true)")
    if recipe.budget.metric in TASK_METRICS:
        fidelity = ", ".join(m for m in METRICS if m not in TASK_METRICS)
        _check_labels(data.evaluation, data.labels, ("data", "evaluation"), loc,
                      f"or measure the budget in a fidelity metric ({fidelity})")
    if recovers and (recipe.recovery.use_labels or recipe.final_recovery.use_labels):
        _check_labels(data.train, data.labels, ("data", "train"), loc,
                      "or distill from the original alone: [recovery] use_labels = false")


def _check_labels(path: Path, key: str, keys: tuple[str, ...], loc: _Locator, alternative: str) -> None:
    """An .npz names its arrays without reading them, so a missing labels key costs nothing to find."""
    if path.suffix != ".npz" or not path.is_file():
        return  # ONNX test-data folders carry no labels; the measurement then reports none
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            members = {Path(name).stem for name in archive.namelist()}
    except (OSError, zipfile.BadZipFile) as exc:
        raise loc.error(keys, f"cannot read {path.name}: {exc}") from None
    if key not in members:
        raise loc.error(keys, f"{path.name} has no labels array {key!r} (arrays: {', '.join(sorted(members))}); "
                        f"set [data] labels, {alternative}")


def _steps(entries: Any, loc: _Locator) -> list[Step]:
    if not isinstance(entries, list):
        raise loc.error(("pipeline",), "expected a list of pass specs")
    return [_step(entry, index, loc) for index, entry in enumerate(entries)]


_STEP_KEYS = {"spec": str, "repeat": int, "recover": bool, "rewind": bool}


def _step(entry: Any, index: int, loc: _Locator) -> Step:
    """One pipeline entry: a spec string, or a table {spec = ..., repeat = ..., recover = ..., rewind = ...}."""
    from graphsurg.pipeline.registry import get_pass

    if isinstance(entry, str):
        entry = {"spec": entry}
    if not isinstance(entry, dict):
        raise loc.error(("pipeline",), "expected a pass spec string or a table {spec = ..., repeat = ...}", index=index)
    near = entry.get("spec") if isinstance(entry.get("spec"), str) else None
    unknown = sorted(set(entry) - set(_STEP_KEYS))
    if unknown:
        raise loc.error(("pipeline",), f"unknown key {unknown[0]!r}; valid: {', '.join(_STEP_KEYS)}",
                        near=near, index=index)
    if near is None:
        raise loc.error(("pipeline",), "missing spec (a pass spec string)", index=index)
    values = {"repeat": 1, "recover": False, "rewind": False}
    for key, kind in _STEP_KEYS.items():
        if key in entry and not (isinstance(entry[key], kind) and (kind is bool or not isinstance(entry[key], bool))):
            raise loc.error(("pipeline",), f"{key}: expected {kind.__name__}, got {entry[key]!r}", near=near,
                            index=index)
        values[key] = entry.get(key, values.get(key))
    try:
        spec = parse_spec(near)
        _check_params(get_pass(spec.name), spec)
    except BadInputError as exc:
        raise loc.error(("pipeline",), str(exc), near=near, index=index) from None
    if values["repeat"] < 1:
        raise loc.error(("pipeline",), f"repeat must be >= 1, got {values['repeat']}", near=near, index=index)
    return Step(spec, values["repeat"], values["recover"], values["rewind"])


def searched_parameter(spec: PassSpec) -> str | None:
    """The parameter a spec leaves to the minimal surgery search (`ratio=auto`), if any.

    Only the amounts in SEARCHABLE are searched: elsewhere `auto` is an ordinary value of the
    pass (`excise{target=auto}`, `drop-layer{block=auto}`) and is parsed as such.
    """
    searched = [key for key, value in spec.params if value == "auto" and key in SEARCHABLE]
    return searched[0] if searched else None


def _check_params(pass_cls, spec: PassSpec) -> None:
    """Parses the parameters now so a typo fails before any work. A searched `auto` is parsed as a
    value from inside its range, which also catches conflicts such as `sparsity=auto,threshold=0.1`."""
    from graphsurg.pipeline.params import parse_params

    raw = dict(spec.params)
    valid = {f.name for f in fields(pass_cls.Params)}
    unknown = sorted(set(raw) - valid)
    if unknown:
        raise RecipeError(f"pass {spec.name!r} has no parameter {unknown[0]!r}; valid: {', '.join(sorted(valid))}")
    searched = [key for key, value in raw.items() if value == "auto" and key in SEARCHABLE]
    if len(searched) > 1:
        raise RecipeError(f"pass {spec.name!r}: only one parameter can be auto, got {', '.join(searched)}")
    for key in searched:
        raw[key] = str(SEARCHABLE[key] / 2)
    parse_params(spec.name, pass_cls.Params, raw)


def _section(raw: Any, cls: type, keys: tuple[str, ...], loc: _Locator, base: Path, must_exist: bool = True):
    if not isinstance(raw, dict):
        raise loc.error(keys, "expected a table")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise loc.error((*keys, unknown[0]), f"unknown key; valid: {', '.join(known)}")
    values = {}
    for name, value in raw.items():
        kind = _field_kind(known[name].type)
        where = (*keys, name)
        if kind is Path:
            text = _typed(value, str, where, loc)
            values[name] = _existing_path(text, base, where, loc) if must_exist else base / text
        else:
            values[name] = _typed(value, kind, where, loc)
    return cls(**values)


def _field_kind(annotation: Any) -> type:
    text = str(annotation)
    for name, kind in (("Path", Path), ("bool", bool), ("int", int), ("float", float), ("str", str)):
        if name in text:
            return kind
    raise TypeError(annotation)


def _typed(value: Any, kind: type, keys: tuple[str, ...], loc: _Locator) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool):
        raise loc.error(keys, f"expected an integer, got {value!r}")
    if not isinstance(value, kind):
        raise loc.error(keys, f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def _existing_path(text: str, base: Path, keys: tuple[str, ...], loc: _Locator) -> Path:
    resolved = (base / text).resolve()
    if not resolved.exists():
        raise loc.error(keys, f"file not found: {text} (looked in {base})")
    return resolved
