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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from slimtune.errors import SpecError
from slimtune.policy import ALLOWED_BITS

SEARCHERS = ("tpe", "nsga2", "random", "uniform")
RUNTIMES = ("torch", "onnxruntime")
BUILTIN_JOBS = ("quickstart",)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ModelSpec(_Strict):
    """A built-in architecture, or a user model by import path with optional weights."""

    arch: str | None = None
    import_: str | None = Field(default=None, alias="import")
    weights: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.arch is None) == (self.import_ is None):
            raise ValueError("give exactly one of 'arch' or 'import'")
        return self

    def describe(self) -> str:
        return self.arch or f"import:{self.import_}"


class DataSpec(_Strict):
    """Which dataset, and how many examples of each split (None: all)."""

    dataset: Literal["fashion-mnist", "digits", "synthetic"]
    train_size: int | None = Field(default=None, gt=0)
    val_size: int | None = Field(default=None, gt=0)
    test_size: int | None = Field(default=None, gt=0)


class BudgetSpec(_Strict):
    """The latency budget: a fraction of the baseline's measured latency, or milliseconds."""

    latency_fraction: float | None = Field(default=None, gt=0, le=1)
    latency_ms: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_budget(self) -> BudgetSpec:
        if (self.latency_fraction is None) == (self.latency_ms is None):
            raise ValueError("give exactly one of 'latency_fraction' or 'latency_ms'")
        return self


class TargetSpec(_Strict):
    """Where and how latency is measured."""

    name: str = "local"
    runtime: Literal["torch", "onnxruntime"] = "onnxruntime"
    threads: int = Field(default=2, ge=1)
    batch_size: int = Field(default=1, ge=1)

    @field_validator("name")
    @classmethod
    def _local_only(cls, v: str) -> str:
        if v != "local":
            raise ValueError("only the 'local' target is supported in this version")
        return v


class SearchSpec(_Strict):
    """Which searcher, how many trials, and how many run at once.

    ``warm_start: uniform`` makes an Optuna searcher evaluate two uniform policies first
    (all layers int8 and unpruned; half the channels, fp32), so a short search starts
    from known feasible ground instead of random guesses.
    """

    searcher: Literal["tpe", "nsga2", "random", "uniform"] = "tpe"
    trials: int = Field(default=16, ge=1)
    seed: int = 0
    concurrency: int = Field(default=1, ge=1)
    warm_start: Literal["none", "uniform"] = "none"


class SpaceSpec(_Strict):
    """The per-layer choices: prune ratios for channel groups, bit-widths for layers."""

    prune_ratios: tuple[float, ...] = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
    bits: tuple[int, ...] = (32, 8)
    round_to: int = Field(default=4, ge=1)

    @field_validator("prune_ratios")
    @classmethod
    def _ratios(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(not 0.0 <= r < 1.0 for r in v):
            raise ValueError("prune_ratios must be a non-empty list of values in [0, 1)")
        return tuple(sorted(set(v)))

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(b not in ALLOWED_BITS for b in v):
            raise ValueError(f"bits must be a non-empty list of {list(ALLOWED_BITS)}")
        return tuple(sorted(set(v), reverse=True))


class BaselineSpec(_Strict):
    """How the baseline is trained when no weights are given (part of its cache key).

    ``seed`` also fixes the data subsets, so searches with different seeds share one
    baseline and one validation split.
    """

    epochs: float = Field(default=2.0, gt=0)
    batch_size: int = Field(default=128, ge=1)
    lr: float = Field(default=0.05, gt=0)
    weight_decay: float = Field(default=5e-4, ge=0)
    seed: int = 0


class FinetuneSpec(_Strict):
    """The short fine-tune every trial gets after compression."""

    steps: int = Field(default=80, ge=0)
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=0.01, gt=0)
    distill: bool = True
    temperature: float = Field(default=4.0, gt=0)
    alpha: float = Field(default=0.7, ge=0, le=1)
    calibration_size: int = Field(default=128, ge=1)


class TrackingSpec(_Strict):
    """The MLflow store. ``MLFLOW_TRACKING_URI`` overrides ``uri``."""

    uri: str = "sqlite:///mlruns.db"
    experiment: str | None = None


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
    finetune: FinetuneSpec = FinetuneSpec()
    tracking: TrackingSpec = TrackingSpec()

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
    return spec


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
