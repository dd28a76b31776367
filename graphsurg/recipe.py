"""Surgery recipes: a TOML file naming the model, data, passes, budget, recovery and outputs.

TOML because the standard library reads it (tomllib, no extra dependency), it has comments and
real types (a number stays a number: no YAML `no` -> False surprises), and a recipe is a small
flat configuration, which is what TOML is for. Paths are relative to the recipe file. Every
error is reported with its location (file, line, key) before any work starts.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from graphsurg.errors import BadInputError
from graphsurg.pipeline.spec import PassSpec, parse_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

METRICS = ("loss", "accuracy", "agreement", "kl", "cosine", "sqnr_db", "mse")


@dataclass
class DataSection:
    calibration: Path | None = None
    evaluation: Path | None = None
    train: Path | None = None
    labels: str | None = "labels"
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


class RecipeError(BadInputError):
    """A recipe problem, located as `file:line: [section].key: message`."""


class _Locator:
    def __init__(self, path: Path, text: str):
        self.path, self.lines = path, text.splitlines()

    def error(self, keys: tuple[str, ...], message: str) -> RecipeError:
        where = ".".join(keys)
        line = self._line_of(keys)
        prefix = f"{self.path}:{line}" if line else str(self.path)
        return RecipeError(f"{prefix}: {where}: {message}" if where else f"{prefix}: {message}")

    def _line_of(self, keys: tuple[str, ...]) -> int | None:
        """Best effort: the line of the key inside its section (tomllib reports no positions)."""
        section_line, in_section = None, len(keys) <= 1
        for number, line in enumerate(self.lines, 1):
            stripped = line.strip()
            if len(keys) > 1 and re.match(rf"^\[\[?\s*{re.escape(keys[0])}\s*\]\]?", stripped):
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
    if budget.metric not in METRICS:
        raise loc.error(("budget", "metric"), f"unknown metric {budget.metric!r}; valid: {', '.join(METRICS)}")
    recovery = _section(raw.get("recovery", {}), RecoverySection, ("recovery",), loc, base)
    if recovery.train not in ("all", "head", "touched"):
        raise loc.error(("recovery", "train"), "expected all, head or touched")
    output = _section(raw.get("output", {}), OutputSection, ("output",), loc, base, must_exist=False)
    steps = _steps(raw.get("pipeline", []), loc)
    seed = _typed(raw.get("seed", 0), int, ("seed",), loc)
    return Recipe(path, model, steps, data, budget, recovery, output, seed)


def _steps(entries: Any, loc: _Locator) -> list[Step]:
    from graphsurg.pipeline.registry import get_pass

    if not isinstance(entries, list):
        raise loc.error(("pipeline",), "expected a list of pass specs")
    steps = []
    for index, entry in enumerate(entries):
        keys = ("pipeline", f"[{index}]")
        if isinstance(entry, str):
            entry = {"spec": entry}
        if not isinstance(entry, dict):
            raise loc.error(keys, "expected a pass spec string or a table {spec=..., repeat=...}")
        unknown = sorted(set(entry) - {"spec", "repeat", "recover", "rewind"})
        if unknown:
            raise loc.error(keys, f"unknown key {unknown[0]!r}; valid: spec, repeat, recover, rewind")
        try:
            spec = parse_spec(_typed(entry.get("spec"), str, (*keys, "spec"), loc))
            _check_params(get_pass(spec.name), spec)
        except BadInputError as exc:
            raise loc.error(("pipeline",), str(exc)) from None
        steps.append(Step(spec, _typed(entry.get("repeat", 1), int, (*keys, "repeat"), loc),
                          _typed(entry.get("recover", False), bool, (*keys, "recover"), loc),
                          _typed(entry.get("rewind", False), bool, (*keys, "rewind"), loc)))
    return steps


def _check_params(pass_cls, spec: PassSpec) -> None:
    """Parses the parameters now so a typo fails before any work; `auto` values are searched
    later (see surgery.py), so only their names are checked here."""
    from graphsurg.pipeline.params import parse_params

    raw = dict(spec.params)
    fixed = {k: v for k, v in raw.items() if v != "auto"}
    parse_params(spec.name, pass_cls.Params, fixed)
    valid = {f.name for f in fields(pass_cls.Params)}
    unknown = sorted(set(raw) - valid)
    if unknown:
        raise RecipeError(f"pass {spec.name!r} has no parameter {unknown[0]!r}; valid: {', '.join(sorted(valid))}")


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
