"""Evaluators: how a search scores a candidate policy (see ``base.Evaluator``)."""

from slimtune.evaluators.base import Evaluator

__all__ = ["Evaluator"]
