"""The job spec: a YAML file validated by pydantic, unknown keys rejected.

The keys of ``JobSpec`` and its parts are a contract: other tools write specs with
them. New keys may be added; none may be renamed.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from slimtune.errors import SpecError
from slimtune.evaluate.registry import (
    BOUNDS,
    DEFAULT_GROUPS,
    DEFAULT_OBJECTIVES,
    GROUPS,
    OBJECTIVES,
    check_bound,
    group_of,
)
from slimtune.spec_base import Strict as _Strict
from slimtune.spec_inputs import (
    DATA_SOURCES,
    FOLDER_OPTIONS,
    BudgetSpec,
    DataSpec,
    ModelSpec,
    TargetSpec,
)
from slimtune.spec_sections import (
    AgentSpec,
    BaselineSpec,
    EnvSpec,
    FinalizeSpec,
    FinetuneSpec,
    ScoringSpec,
    SearchSpec,
    SpaceSpec,
    SupernetSpec,
    TrackingSpec,
    TrainSpec,
)

SEARCHERS = ("tpe", "nsga2", "random", "uniform", "ppo")
BUILTIN_JOBS = ("quickstart",)

__all__ = ["AgentSpec", "BUILTIN_JOBS", "BaselineSpec", "BudgetSpec", "DATA_SOURCES", "DataSpec",
           "EnvSpec", "FOLDER_OPTIONS", "FinalizeSpec", "FinetuneSpec", "JobSpec", "ModelSpec",
           "SEARCHERS", "ScoringSpec", "SearchSpec", "SpaceSpec", "SupernetSpec", "TargetSpec",
           "TrackingSpec", "TrainSpec", "load_spec", "parse_spec"]


class JobSpec(_Strict):
    """A whole compression search job."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    model: ModelSpec
    data: DataSpec
    budget: BudgetSpec
    target: TargetSpec = TargetSpec()
    search: SearchSpec = SearchSpec()
    space: SpaceSpec = SpaceSpec()
    baseline: BaselineSpec = BaselineSpec()
    train: TrainSpec = TrainSpec()
    finetune: FinetuneSpec = FinetuneSpec()
    scoring: ScoringSpec = ScoringSpec()
    supernet: SupernetSpec = SupernetSpec()
    finalize: FinalizeSpec = FinalizeSpec()
    env: EnvSpec = EnvSpec()
    agent: AgentSpec = AgentSpec()
    tracking: TrackingSpec = TrackingSpec()
    # behaviour metrics (slimtune.evaluate): groups computed per trial, bounds, front axes
    evaluate: tuple[str, ...] = DEFAULT_GROUPS
    constraints: dict[str, float] = {}
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES
    # what the model is for (slimtune.objective): class logits, or the user's own outputs,
    # scored by ``metric`` and trained with ``loss`` ("pkg.module:fn" each)
    task: Literal["classification", "custom"] = "classification"
    metric: str | None = None
    loss: str | None = None

    @model_validator(mode="after")
    def _task(self) -> JobSpec:
        if self.task == "classification":
            return self
        missing = [k for k in ("metric", "loss") if getattr(self, k) is None]
        if missing:
            raise ValueError(f"task: custom needs {' and '.join(missing)} "
                             "(\"pkg.module:fn\"): the outputs are not class logits")
        if self.search.evaluator == "supernet":
            raise ValueError("search.evaluator: supernet distils class logits; with task: "
                             "custom use bn_recal or finetune")
        behaviour = [k for k in (*self.constraints, *self.objectives)
                     if k in BOUNDS and group_of(k) is not None]
        if behaviour:
            raise ValueError(f"{', '.join(behaviour)}: behaviour metrics need class logits, "
                             "and task: custom has none")
        return self

    @model_validator(mode="after")
    def _recipe(self) -> JobSpec:
        distill = self.space.distill or (self.finetune.distill,)
        if self.finetune.hint_weight > 0 and True not in distill:
            raise ValueError("finetune.hint_weight needs a teacher (hints match the "
                             "baseline's features): set finetune.distill: true")
        if self.space.recipe and self.search.searcher in ("ppo", "uniform"):
            raise ValueError(f"space.{', space.'.join(self.space.recipe)}: the fine-tune "
                             "recipe is searched by tpe, nsga2 and random, not by "
                             f"{self.search.searcher}")
        return self

    @model_validator(mode="after")
    def _rank_searcher(self) -> JobSpec:
        if self.space.rank and self.search.searcher == "ppo":
            raise ValueError("space.rank: low-rank factorisation is searched by tpe, nsga2, "
                             "random and uniform, not by ppo (nor used by agents or slimtune "
                             "apply, which decide channels and bits only): remove space.rank")
        return self

    @model_validator(mode="after")
    def _env_scorer(self) -> JobSpec:
        if self.env.scorer(self.search.evaluator) == "supernet":
            extra = [k for k in ("rank", "sparsity", "clusters") if getattr(self.space, k)]
            if extra:
                raise ValueError(f"env.evaluator supernet scores prune ratios and bit-widths "
                                 f"only: remove space.{', space.'.join(extra)} or use "
                                 "env.evaluator: bn_recal")
        return self

    @field_validator("evaluate")
    @classmethod
    def _groups(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            if name not in GROUPS:
                raise ValueError(f"unknown metric group {name!r}; valid: {', '.join(GROUPS)}")
        return tuple(dict.fromkeys(v))

    @field_validator("constraints")
    @classmethod
    def _bounds(cls, v: dict[str, float]) -> dict[str, float]:
        for key, bound in v.items():
            problem = check_bound(key, bound)
            if problem:
                raise ValueError(problem)
        return v

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            if name not in OBJECTIVES:
                raise ValueError(f"unknown objective {name!r}; valid: {', '.join(OBJECTIVES)}")
        if len(set(v)) != len(v) or not v:
            raise ValueError("objectives must be a non-empty list without repeats")
        return v

    @property
    def metric_groups(self) -> tuple[str, ...]:
        """``evaluate`` plus every group a constraint or an objective needs (registry order)."""
        if self.task != "classification":  # every group reads class logits
            return ()
        needed = set(self.evaluate) | {group_of(k) for k in (*self.constraints, *self.objectives)
                                       if k in BOUNDS}
        return tuple(g for g in GROUPS if g in needed)

    @property
    def tracking_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or self.tracking.uri

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    def with_overrides(self, **search: Any) -> JobSpec:
        """A copy with search fields replaced (``trials=``, ``searcher=``), re-validated."""
        data = self.model_dump(by_alias=True)
        data["search"].update({k: v for k, v in search.items() if v is not None})
        return parse_spec(data)

    def with_sections(self, **sections: Any) -> JobSpec:
        """A copy with spec sections merged key by key (``budget={"latency_fraction": .5}``);
        a non-mapping value replaces the section (``name="x"``). Re-validated."""
        data = self.model_dump(by_alias=True)
        for key, value in sections.items():
            if (isinstance(value, dict) and isinstance(data.get(key), dict)
                    and key not in ("model", "budget")):  # one-of sections are replaced
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return parse_spec(data)

    def to_yaml(self) -> str:
        data = self.model_dump(by_alias=True, mode="json", exclude_none=True)
        return yaml.safe_dump(data, sort_keys=False)


def _first_error(err: ValidationError) -> str:
    e = err.errors()[0]
    where = ".".join(str(p) for p in e["loc"]) or "spec"
    if e["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    if e["type"] == "missing":
        return f"{where}: required key is missing"
    msg = e["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}"


def parse_spec(data: Any, *, base_dir: Path | None = None) -> JobSpec:
    """Validate a dict as a JobSpec; relative weight paths resolve against ``base_dir``."""
    if not isinstance(data, dict):
        raise SpecError("the job spec must be a YAML mapping of keys to values")
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_first_error(err)) from None
    weights = spec.model.weights
    if weights is not None and base_dir is not None and not weights.is_absolute():
        model = spec.model.model_copy(update={"weights": (base_dir / weights).resolve()})
        spec = spec.model_copy(update={"model": model})
    if base_dir is not None:
        spec = _resolve_paths(spec, base_dir)
    return spec


def _resolve_paths(spec: JobSpec, base_dir: Path) -> JobSpec:
    """Relative ``search.warm_start_from``, ``agent.init``, ``data.folder`` and ``data.npz``
    resolve against the spec's dir."""
    def resolved(path: Path | None) -> Path | None:
        return path if path is None or path.is_absolute() else (base_dir / path).resolve()

    search = spec.search.model_copy(
        update={"warm_start_from": resolved(spec.search.warm_start_from)})
    agent = spec.agent.model_copy(update={"init": resolved(spec.agent.init)})
    data = spec.data.model_copy(update={"folder": resolved(spec.data.folder),
                                        "npz": resolved(spec.data.npz)})
    return spec.model_copy(update={"search": search, "agent": agent, "data": data})


def load_spec(path_or_name: str | os.PathLike[str]) -> JobSpec:
    """Read a job spec from a YAML file, or a built-in job by name (``quickstart``)."""
    text, where, base = _read_spec_text(str(path_or_name))
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{where}: not valid YAML{line}") from None
    try:
        return parse_spec(data, base_dir=base)
    except SpecError as err:
        raise SpecError(f"{where}: {err}") from None


def _read_spec_text(arg: str) -> tuple[str, str, Path | None]:
    path = Path(arg)
    if path.is_file():
        return path.read_text(), str(path), path.parent.resolve()
    if arg in BUILTIN_JOBS:
        text = resources.files("slimtune").joinpath("jobs", f"{arg}.yaml").read_text()
        return text, f"built-in job {arg!r}", None
    if path.exists():
        raise SpecError(f"{arg}: not a file")
    raise SpecError(f"{arg}: no such job spec file (built-in jobs: {', '.join(BUILTIN_JOBS)})")
