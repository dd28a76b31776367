"""Typed, frozen pass parameters parsed from spec strings.

A pass declares a frozen dataclass; each field's annotation drives the parsing:
`int`, `float`, `bool`, `str`, `Literal[...]` (a closed set of words), `tuple[str, ...]`
(comma-separated) and unions of those (`float | Literal["auto"]`, `str | None`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, get_args, get_origin

from graphsurg.errors import UsageError


def parse_params(pass_name: str, cls: type, raw: dict[str, str]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise UsageError(
            f"pass {pass_name!r} has no parameter {unknown[0]!r}; valid: {', '.join(fields) or '(none)'}"
        )
    hints = typing.get_type_hints(cls)
    values = {}
    for key, text in raw.items():
        try:
            values[key] = coerce(text, hints[key])
        except ValueError as exc:
            raise UsageError(f"pass {pass_name!r}: {key}={text!r}: {exc}") from None
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"pass {pass_name!r}: {exc}") from None


def coerce(text: str, annotation: Any) -> Any:
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in get_args(annotation):
            if option is type(None):
                if text.lower() in ("none", ""):
                    return None
                continue
            try:
                return coerce(text, option)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(" or ".join(errors))
    if origin is Literal:
        choices = get_args(annotation)
        if text in choices:
            return text
        raise ValueError(f"expected one of {', '.join(map(str, choices))}")
    if origin is tuple:
        item = get_args(annotation)[0]
        return tuple(coerce(part.strip(), item) for part in text.split(",") if part.strip())
    if annotation is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if annotation is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("expected an integer") from None
    if annotation is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError("expected a number") from None
    if annotation is str:
        return text
    raise ValueError(f"unsupported parameter type {annotation!r}")


def describe(cls: type) -> list[tuple[str, str, str]]:
    """(name, type, default) for each parameter, for `graphsurg passes`."""
    hints = typing.get_type_hints(cls)
    rows = []
    for field in dataclasses.fields(cls):
        default = field.default if field.default is not dataclasses.MISSING else "required"
        rows.append((field.name, _type_name(hints[field.name]), repr(default) if default != "required" else default))
    return rows


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(annotation))
    if origin is Literal:
        return "|".join(map(str, get_args(annotation)))
    if origin is tuple:
        return f"list of {_type_name(get_args(annotation)[0])}"
    if annotation is type(None):
        return "none"
    return getattr(annotation, "__name__", str(annotation))


def as_dict(params: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(params).items()}
