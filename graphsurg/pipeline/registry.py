"""Pass discovery: every Pass subclass in a module of `graphsurg.passes` is registered by name."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from graphsurg.errors import UsageError
from graphsurg.pipeline.base import Pass
from graphsurg.pipeline.spec import PassSpec, parse_spec


@cache
def all_passes() -> dict[str, type[Pass]]:
    import graphsurg.passes as package

    found: dict[str, type[Pass]] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Pass) and obj.__module__ == module.__name__ \
                    and getattr(obj, "name", None):
                found[obj.name] = obj
    return dict(sorted(found.items()))


def get_pass(name: str) -> type[Pass]:
    passes = all_passes()
    if name not in passes:
        raise UsageError(f"unknown pass {name!r}; valid passes: {', '.join(passes)}")
    return passes[name]


def make_pass(spec: str | PassSpec) -> Pass:
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    return get_pass(parsed.name).from_raw(dict(parsed.params))
