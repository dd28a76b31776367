"""The pass base class, its result (the change record entry) and the context passes run in."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from graphsurg.errors import PassError, ServiceUnavailable
from graphsurg.ir import GraphError, Model
from graphsurg.pipeline.params import as_dict, parse_params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NoParams:
    """A pass without parameters."""


@dataclass
class PassResult:
    """What one pass did: the JSON change record entry later steps (recovery, certificate) read.

    `touched` names initializers the pass changed or created, `new_parameters` those it created
    from scratch (a new head), `refused` every target left alone with its reason, and `arrays`
    holds array-valued records (pruning masks) saved beside the JSON.
    """

    pass_name: str
    params: dict[str, Any]
    modified: bool = False
    summary: str = ""
    changes: dict[str, Any] = field(default_factory=dict)
    refused: list[dict[str, str]] = field(default_factory=list)
    touched: list[str] = field(default_factory=list)
    new_parameters: list[str] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def refuse(self, target: str, reason: str) -> None:
        self.refused.append({"target": target, "reason": reason})

    def touch(self, *names: str) -> None:
        for name in names:
            if name not in self.touched:
                self.touched.append(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "pass": self.pass_name, "params": self.params, "modified": self.modified, "summary": self.summary,
            "changes": self.changes, "refused": self.refused, "touched": self.touched,
            "new_parameters": self.new_parameters, "arrays": sorted(self.arrays),
        }


class PassContext:
    """Runtime services for passes (activation statistics, gradients, evaluation), wired by the
    orchestrator so that passes never import onnxruntime or torch themselves."""

    def __init__(self, services: dict[str, Callable[..., Any]] | None = None, seed: int = 0,
                 data: Any = None, strict: bool = False):
        self.services = dict(services or {})
        self.seed = seed
        self.data = data
        self.strict = strict

    def require(self, service: str, why: str) -> Callable[..., Any]:
        found = self.services.get(service)
        if found is None:
            raise ServiceUnavailable(f"{why} needs the {service!r} service ({_HINTS.get(service, 'not wired')})")
        return found

    def activation_stats(self, model: Model, values: list[str], why: str, **options: Any) -> Any:
        return self.require("activation_stats", why)(model, values, **options)

    def gradients(self, model: Model, params: list[str], why: str) -> dict[str, np.ndarray]:
        return self.require("gradients", why)(model, params)

    def evaluate(self, model: Model, why: str, **options: Any) -> dict[str, Any]:
        return self.require("evaluate", why)(model, **options)


_HINTS = {
    "activation_stats": "give calibration data with --data",
    "gradients": "install the train extra (torch) and give data with --data",
    "evaluate": "give evaluation data with --data",
}


class Pass:
    """A graph rewrite. Subclasses set `name`, `Params` and implement `run`.

    `run` edits `model` through the IR's methods and fills `result`; `apply` wraps it: it checks the
    IR invariants afterwards and turns a broken graph into a PassError naming the pass.
    """

    name: ClassVar[str]
    Params: ClassVar[type] = NoParams

    def __init__(self, params: Any = None):
        self.params = params if params is not None else self.Params()

    @classmethod
    def from_raw(cls, raw: dict[str, str]) -> Pass:
        return cls(parse_params(cls.name, cls.Params, raw))

    def run(self, model: Model, ctx: PassContext, result: PassResult) -> None:
        raise NotImplementedError

    def apply(self, model: Model, ctx: PassContext | None = None) -> PassResult:
        result = PassResult(self.name, as_dict(self.params))
        self.run(model, ctx or PassContext(), result)
        try:
            model.graph.verify()
        except GraphError as exc:
            raise PassError(f"pass {self.name!r} left an invalid graph: {exc}") from None
        log.info("%s: %s", self.name, result.summary or ("modified" if result.modified else "no change"))
        return result

    def spec(self) -> str:
        params = ",".join(
            f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
            for k, v in dataclasses.asdict(self.params).items()
        )
        return f"{self.name}{{{params}}}" if params else self.name
