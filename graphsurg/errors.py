"""Errors that the CLI turns into one line on stderr and a documented exit code.

Exit codes: 0 ok, 1 budget exceeded (or nothing changed under --strict), 2 bad input or usage,
3 internal error.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BUDGET = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3


class GraphsurgError(Exception):
    """Base class: an error the user can act on; carries its exit code."""

    exit_code = EXIT_INTERNAL


class BadInputError(GraphsurgError):
    """The model, data, recipe or a command-line argument is unusable."""

    exit_code = EXIT_BAD_INPUT


class UsageError(BadInputError):
    """A pass spec, parameter or option is malformed."""


class PassError(GraphsurgError):
    """A pass produced an invalid graph; nothing is written."""

    exit_code = EXIT_INTERNAL


class BudgetExceeded(GraphsurgError):
    """The result misses its degradation budget (the best model is still written)."""

    exit_code = EXIT_BUDGET


class ServiceUnavailable(BadInputError):
    """A pass asked the context for a runtime service (data, evaluator, gradients) it does not have."""
