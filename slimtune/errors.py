"""Errors a user can fix. The CLI prints their message as one line and exits 2."""

from __future__ import annotations


class UserInputError(ValueError):
    """Bad input found before any compute: a spec, a path, a budget, a model, a dataset."""

    exit_code = 2


class SpecError(UserInputError):
    """The job spec is missing, malformed or inconsistent."""


class BudgetError(UserInputError):
    """No policy in the search space can meet the latency budget."""


class PolicyError(UserInputError):
    """The policy does not fit the model: another model's signature, or an unknown name.

    A ValueError (via UserInputError), so the CLI prints it as one line and exits 2.
    """
