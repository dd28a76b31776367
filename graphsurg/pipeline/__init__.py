"""Passes, their parameters, results and context; the pipeline that runs them in order."""

from graphsurg.pipeline.base import NoParams, Pass, PassContext, PassResult
from graphsurg.pipeline.registry import all_passes, get_pass, make_pass
from graphsurg.pipeline.run import ChangeRecord, run_passes
from graphsurg.pipeline.spec import PassSpec, parse_spec

__all__ = [
    "ChangeRecord", "NoParams", "Pass", "PassContext", "PassResult", "PassSpec", "all_passes", "get_pass",
    "make_pass", "parse_spec", "run_passes",
]
