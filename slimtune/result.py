"""TrialResult: what one evaluated policy scored, as a small serialisable record."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from slimtune.evaluate.registry import METRIC_KEYS
from slimtune.policy import Policy

#: what ``TrialResult.reference`` names, as people say it
REFERENCE_LABELS = {"int8": "int8 only", "uniform": "uniform pruning"}


@dataclass(frozen=True)
class TrialResult:
    """One trial's outcome.

    ``accuracy`` is the validation accuracy of the deployed model (the search's signal);
    ``test_accuracy`` is reported and never used to decide anything. ``latency_ms`` is
    the measured median on the target; ``latency`` holds the full measurement.
    ``state`` is ``ok``, ``infeasible`` (measured over budget: not fine-tuned, never on
    the front) or ``failed`` (an error inside the trial, in ``error``).

    ``metrics`` holds the behaviour metrics (``slimtune.evaluate``) of a trial that passed
    the latency gate; they are flattened into the row (``ece``, ``agreement``, ...).
    ``violations`` names the spec's ``constraints`` the trial broke: such a trial is
    ``infeasible`` like one over the latency budget.

    ``stage`` is how far a candidate went: ``scored`` (the evaluator's ``score`` and the
    screen's ``predicted_latency_ms`` only; ``state`` says whether the prediction is
    within budget), ``measured`` (deployed and timed paired with the baseline:
    ``latency_ratio``, ``latency_ms``) or ``final`` (fine-tuned, deployed, measured and
    evaluated: ``accuracy`` and ``test_accuracy`` are the deployed model's). Only final
    rows are models a user is handed (``has_model``). ``reference`` names what a user
    would do by hand (``int8``, ``uniform``) when the row is that baseline, finalized by
    the same recipe in the same run. ``model_of`` is the trial whose final model this
    row is: a reference whose policy a searched winner has, from the same start network,
    is fine-tuned once and both rows hand out that model.
    """

    trial_id: int
    policy: Policy
    state: str
    accuracy: float | None = None
    test_accuracy: float | None = None
    latency_ms: float | None = None
    latency: Mapping[str, Any] = field(default_factory=dict)
    size_bytes: int | None = None
    macs: int | None = None
    params: int | None = None
    budget_ms: float | None = None
    searcher: str = ""
    seconds: float = 0.0
    mlflow_run_id: str = ""
    error: str | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    violations: tuple[str, ...] = ()
    stage: str = "final"
    score: float | None = None
    predicted_latency_ms: float | None = None
    latency_ratio: float | None = None
    reference: str = ""
    finetune_steps: int | None = None
    model_of: int | None = None

    @property
    def feasible(self) -> bool:
        return self.state == "ok"

    @property
    def has_model(self) -> bool:
        """A deployed, evaluated model (a final row): what fronts and ``best`` choose from."""
        return self.accuracy is not None and self.stage == "final"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["policy"] = self.policy.to_dict()
        data["feasible"] = self.feasible
        data["violations"] = list(self.violations)
        metrics = data.pop("metrics")
        data.update({k: v for k, v in metrics.items() if k not in data})
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialResult:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["policy"] = Policy.from_dict(data["policy"])
        fields["violations"] = tuple(data.get("violations", ()))
        fields["metrics"] = {k: data[k] for k in METRIC_KEYS if k in data}
        return cls(**fields)
