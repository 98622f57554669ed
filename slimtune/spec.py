"""The job spec: a YAML file validated by pydantic, unknown keys rejected.

The keys of ``JobSpec`` and its parts are a contract: other tools write specs with
them. New keys may be added; none may be renamed.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
from slimtune.policy import ALLOWED_BITS, MAX_CLUSTERS, MIN_CLUSTERS
from slimtune.runtimes import RUNTIMES, Runtime, get_runtime

SEARCHERS = ("tpe", "nsga2", "random", "uniform", "ppo")
BUILTIN_JOBS = ("quickstart",)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ModelSpec(_Strict):
    """A built-in architecture, or a user model by import path with optional weights."""

    arch: str | None = None
    import_: str | None = Field(default=None, alias="import")
    weights: Path | None = None
    # which part of a forward's non-tensor output (dict, tuple, ModelOutput) holds the
    # logits: a key or attribute name, or a tuple index; None: ``logits``, else the first
    # tensor (see slimtune.models.logits)
    output_key: str | int | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.arch is None) == (self.import_ is None):
            raise ValueError("give exactly one of 'arch' or 'import'")
        return self

    def describe(self) -> str:
        return self.arch or f"import:{self.import_}"


DATA_SOURCES = ("dataset", "import", "folder", "npz")
FOLDER_OPTIONS = ("size", "mean", "std", "channels")


class DataSpec(_Strict):
    """Where the data comes from, and how many examples of each split (None: all).

    Exactly one source: ``dataset`` (built-in), ``import`` (``"pkg.module:callable"``
    returning train/val/test ``torch.utils.data.Dataset``s), ``folder`` (an ImageFolder
    tree: ``DIR/train/<class>/*.png``, ``val/``, ``test/``) or ``npz`` (``x_train``,
    ``y_train``, ``x_val``, ``y_val``, ``x_test``, ``y_test``). ``size``, ``mean``,
    ``std`` and ``channels`` apply to ``folder`` only. See slimtune.userdata. ``workers``
    and ``batch_size`` say how the splits are streamed (slimtune.split); they change no
    result and are not part of the baseline's cache key.
    """

    dataset: Literal["fashion-mnist", "digits", "synthetic"] | None = None
    import_: str | None = Field(default=None, alias="import")
    folder: Path | None = None
    npz: Path | None = None
    train_size: int | None = Field(default=None, gt=0, le=100_000_000)
    val_size: int | None = Field(default=None, gt=0, le=100_000_000)
    test_size: int | None = Field(default=None, gt=0, le=100_000_000)
    # folder only: resize to size x size (or [height, width]); per-channel (or one) mean and
    # std after scaling pixels to [0, 1] (default: the train split's); 1 (grey) or 3 (RGB)
    size: int | tuple[int, int] | None = None
    mean: float | tuple[float, ...] | None = None
    std: float | tuple[float, ...] | None = None
    channels: Literal[1, 3] | None = None
    # how every pass reads the data (slimtune.split): DataLoader worker processes, and the
    # batch of evaluation and statistics passes (training batches are the recipes' own)
    workers: int = Field(default=0, ge=0, le=256)
    batch_size: int = Field(default=512, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        given = [name for name, value in zip(DATA_SOURCES, self._sources(), strict=True)
                 if value is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(map(repr, DATA_SOURCES))}"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.folder is None:
            options = [k for k in FOLDER_OPTIONS if getattr(self, k) is not None]
            if options:
                raise ValueError(f"{', '.join(options)}: options of 'folder' data only")
        sizes = (self.size,) if isinstance(self.size, int) else self.size or ()
        if any(not 1 <= s <= 65_536 for s in sizes):
            raise ValueError("size must be a number of pixels in [1, 65536] "
                             "(or [height, width])")
        stds = (self.std,) if isinstance(self.std, float | int) else self.std or ()
        if any(not s > 0 for s in stds):
            raise ValueError("std must be > 0")
        lengths = {1, self.channels} if self.channels else {1, 3}
        for key in ("mean", "std"):
            value = getattr(self, key)
            if isinstance(value, tuple) and len(value) not in lengths:
                raise ValueError(f"{key} must be one value or one per channel")
        return self

    def _sources(self) -> tuple[object, ...]:
        return (self.dataset, self.import_, self.folder, self.npz)

    def describe(self) -> str:
        """The source in a few words: ``synthetic``, ``import:pkg.mod:fn``, ``folder:DIR``."""
        if self.dataset is not None:
            return self.dataset
        name, value = next((n, v) for n, v in zip(DATA_SOURCES, self._sources(), strict=True)
                           if v is not None)
        return f"{name}:{value}"


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
    runtime: str = "onnxruntime"  # a name in slimtune.runtimes.RUNTIMES
    threads: int = Field(default=2, ge=1, le=1024)
    batch_size: int = Field(default=1, ge=1, le=65_536)

    @field_validator("runtime")
    @classmethod
    def _runtime(cls, v: str) -> str:
        if v not in RUNTIMES:
            raise ValueError(f"unknown runtime {v!r}; valid: {', '.join(sorted(RUNTIMES))}")
        return v

    @field_validator("name")
    @classmethod
    def _target_name(cls, v: str) -> str:
        # 'local' measures here; any other name is the Ray node carrying 'target:<name>'
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
            raise ValueError("a target name is letters, digits, '_', '.' and '-' "
                             "('local', or the Ray resource 'target:<name>' of a node)")
        return v

    @property
    def is_local(self) -> bool:
        return self.name == "local"

    @property
    def backend(self) -> Runtime:
        """The registered runtime ``runtime`` names: what deploy hands it, how it times."""
        return get_runtime(self.runtime)


class SearchSpec(_Strict):
    """Which searcher, how many trials, and how many run at once.

    ``warm_start: uniform`` makes an Optuna searcher evaluate two uniform policies first
    (all layers int8 and unpruned; half the channels, fp32), so a short search starts
    from known feasible ground instead of random guesses. ``warm_start_from`` names a
    saved ``policy.json`` (carried to this model by layer features) or a trained
    ``agent.zip`` (run on this model); its policy is the first trial.
    """

    searcher: Literal["tpe", "nsga2", "random", "uniform", "ppo"] = "tpe"
    # How a candidate is scored. ``bn_recal`` (EagleEye's adaptive BN on the plainly
    # pruned baseline) and ``supernet`` (a one-shot weight-sharing supernet) score
    # ``candidates`` policies cheaply, deploy and time the best ``trials`` of them paired
    # with the baseline, and fine-tune only the winners (``finalize``). ``finetune`` is
    # the per-trial 80-step fine-tune of every one of ``trials`` policies, kept for
    # comparison.
    evaluator: Literal["supernet", "bn_recal", "finetune"] = "bn_recal"
    candidates: int = Field(default=300, ge=1, le=1_000_000)
    trials: int = Field(default=16, ge=1, le=100_000)
    seed: int = 0
    concurrency: int = Field(default=1, ge=1, le=1024)
    warm_start: Literal["none", "uniform"] = "none"
    warm_start_from: Path | None = None  # a policy.json or agent.zip, evaluated first

    @model_validator(mode="after")
    def _warm_start_needs_a_queue(self) -> SearchSpec:
        if self.warm_start_from is not None and self.searcher == "uniform":
            raise ValueError("warm_start_from needs a searcher that can evaluate a given "
                             "policy first (tpe, nsga2, random or ppo), not uniform")
        if self.warm_start_from is not None and self.warm_start_from.suffix not in (".json",
                                                                                   ".zip"):
            raise ValueError("warm_start_from must be a policy .json or an agent .zip")
        return self
    # Where an Optuna searcher keeps its study (an Optuna RDB URL, e.g. postgresql://...);
    # None: ``sqlite:///DIR/study.db`` in the output directory. ``run --resume`` reloads it.
    storage: str | None = None
    # Ray Tune retries of a trial whose worker died, before the trial is marked failed.
    max_failures: int = Field(default=2, ge=0, le=100)

    @field_validator("storage")
    @classmethod
    def _rdb_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("sqlite:///", "postgresql", "mysql")):
            raise ValueError("storage must be an RDB URL: sqlite:///FILE.db or postgresql://...")
        return v


def _choices(values: tuple, valid, message: str) -> tuple:
    """Sorted distinct ``values``; ValueError(``message``) if one is not ``valid``."""
    if any(not valid(v) for v in values):
        raise ValueError(message)
    return tuple(sorted(set(values)))


class SpaceSpec(_Strict):
    """The per-layer choices: prune ratios for channel groups, bit-widths for layers."""

    prune_ratios: tuple[float, ...] = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
    bits: tuple[int, ...] = (32, 8)
    round_to: int = Field(default=4, ge=1)
    # Deep Compression per layer (slimtune.deep_compression); empty: dimension off. 0 (no
    # sparsity, no sharing) is always a choice besides the listed ones.
    sparsity: tuple[float, ...] = ()
    clusters: tuple[int, ...] = ()
    # low-rank factorisation per layer (slimtune.lowrank): fractions of the rank kept, in
    # (0, 1]; empty: dimension off. 1.0 (not factorised) is always a choice besides them.
    rank: tuple[float, ...] = ()
    # the fine-tune recipe as searched hyperparameters (``recipe.<name>`` dimensions);
    # empty: not searched, the finetune section's value is used
    distill: tuple[bool, ...] = ()
    temperature: tuple[float, ...] = ()
    alpha: tuple[float, ...] = ()
    # elastic depth (slimtune.depth): each droppable residual block a skip.<block>
    # dimension; off keeps the depth fixed
    skip_blocks: bool = False
    # layer names or fnmatch globs left as they are: no prune, bits, sparsity, clusters or
    # rank choice (checked against the model in preflight: a pattern must match a layer)
    exclude: tuple[str, ...] = ()

    @field_validator("exclude")
    @classmethod
    def _exclude(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(not p.strip() for p in v):
            raise ValueError("exclude must be a list of layer names or globs, none empty")
        return tuple(dict.fromkeys(v))

    @field_validator("rank")
    @classmethod
    def _rank(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        return _choices(v, lambda r: 0.0 < r <= 1.0,
                        "rank must be a list of fractions of the rank kept, in (0, 1]")

    @model_validator(mode="after")
    def _rank_alone(self) -> SpaceSpec:
        if self.rank and (self.sparsity or self.clusters):
            raise ValueError("rank cannot be searched together with sparsity or clusters: "
                             "a factorised layer is not also sparsified or weight-shared")
        return self

    @field_validator("distill")
    @classmethod
    def _distill(cls, v: tuple[bool, ...]) -> tuple[bool, ...]:
        return tuple(sorted(set(v), reverse=True))

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        return _choices(v, lambda t: t > 0, "temperature must be a list of values > 0")

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        return _choices(v, lambda a: 0.0 <= a <= 1.0, "alpha must be a list of values in [0, 1]")

    @property
    def recipe(self) -> dict[str, tuple[bool | float, ...]]:
        """The searched fine-tune hyperparameters and their choices (empty: none searched)."""
        return {name: choices for name, choices in (("distill", self.distill),
                                                    ("temperature", self.temperature),
                                                    ("alpha", self.alpha)) if choices}

    @field_validator("sparsity")
    @classmethod
    def _sparsity(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        return _choices(v, lambda s: 0.0 <= s < 1.0, "sparsity must be a list of values in [0, 1)")

    @field_validator("clusters")
    @classmethod
    def _clusters(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        return _choices(v, lambda k: MIN_CLUSTERS <= k <= MAX_CLUSTERS,
                        f"clusters must be a list of integers in [{MIN_CLUSTERS}, {MAX_CLUSTERS}]")

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

    epochs: float = Field(default=2.0, gt=0, le=10_000)
    batch_size: int = Field(default=128, ge=1)
    lr: float = Field(default=0.05, gt=0)
    weight_decay: float = Field(default=5e-4, ge=0)
    seed: int = 0
    # search a baseline at chance level anyway (slimtune.chance); not part of the cache key
    allow_chance: bool = False


class TrainSpec(_Strict):
    """Where the baseline's training and the fine-tunes run (slimtune.device); latency is
    measured on the target regardless. Not part of the baseline's cache key."""

    device: Literal["auto", "cpu", "cuda"] = "auto"


class FinetuneSpec(_Strict):
    """The short fine-tune every trial gets after compression."""

    steps: int = Field(default=80, ge=0, le=10_000_000)
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=0.01, gt=0)
    distill: bool = True
    temperature: float = Field(default=4.0, gt=0)
    alpha: float = Field(default=0.7, ge=0, le=1)
    calibration_size: int = Field(default=128, ge=1)
    # quantisation-aware fine-tuning: fake-quantised layers train on their final grid
    # (slimtune.qat); off: weights are rounded once, after the fine-tune
    qat: bool = False
    # FitNets hints (slimtune.hints): weight of the feature-matching loss (0: off) and the
    # table layers whose outputs are matched (empty: the last conv layer, see hints)
    hint_weight: float = Field(default=0.0, ge=0)
    hint_layers: tuple[str, ...] = ()


class ScoringSpec(_Strict):
    """How a scoring evaluator scores a candidate: BN statistics re-estimated on
    ``recal_batches`` training batches of ``batch_size``, then top-1 accuracy on the first
    ``val_size`` validation examples."""

    val_size: int = Field(default=1000, ge=1)
    recal_batches: int = Field(default=8, ge=0, le=10_000)
    batch_size: int = Field(default=128, ge=1)


class SupernetSpec(_Strict):
    """How the one-shot supernet (``search.evaluator: supernet``) is trained from the
    baseline, once per (baseline, space, recipe) and cached: ``steps`` sandwich steps
    (the largest, the smallest and ``random_subnets`` random sub-networks a step, in-place
    distillation from the largest) of ``batch_size`` examples at ``lr``."""

    steps: int = Field(default=300, ge=0, le=10_000_000)
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=0.01, gt=0)
    random_subnets: int = Field(default=2, ge=0, le=64)


class FinalizeSpec(_Strict):
    """The final stage of a scoring search: the ``top_k`` best-scored candidates that
    measured within budget are fine-tuned for ``epochs`` epochs of the training split with
    distillation (``finetune.distill``, ``temperature``, ``alpha``), deployed, timed
    paired and evaluated on val and test. With ``references``, what a user would do by
    hand (int8 only; uniform pruning at the mildest ratio that meets the budget) gets the
    same recipe in the same run, so the summary can say what the search beat."""

    top_k: int = Field(default=2, ge=1, le=1000)
    epochs: float = Field(default=1.0, gt=0, le=1000)
    batch_size: int = Field(default=128, ge=1)
    lr: float = Field(default=0.01, gt=0)
    references: bool = True


class EnvSpec(_Strict):
    """The AMC environment: how an episode's policy is scored (see slimtune.envs).

    The proxy is cheap on purpose: BN statistics recalibrated on ``recal_batches``
    training batches after ``proxy_steps`` distillation steps, accuracy on the first
    ``proxy_val_size`` validation examples. ``reward``: ``acc`` (proxy accuracy) or
    ``error_log_flops`` (AMC's -error * log(MACs)). An episode whose measured latency
    misses the budget loses ``infeasible_penalty``. ``evaluator`` and ``measure_every``:
    see below (PPO on the supernet: an episode costs a score, not a fine-tune).
    """

    reward: Literal["acc", "error_log_flops"] = "acc"
    proxy_steps: int = Field(default=10, ge=0)
    proxy_val_size: int = Field(default=512, ge=1)
    recal_batches: int = Field(default=4, ge=0)
    infeasible_penalty: float = Field(default=1.0, ge=0)
    # what scores an episode: ``proxy`` (the above), or an evaluator of the scoring search
    # (``supernet``: the one-shot supernet's sub-network; ``bn_recal``: the pruned
    # baseline, BN recalibrated; both on ``proxy_val_size`` examples after
    # ``recal_batches`` batches); ``auto``: the supernet when ``search.evaluator`` is
    # ``supernet``, else ``proxy``
    evaluator: Literal["auto", "proxy", "bn_recal", "supernet"] = "auto"
    # measure one new architecture in ``measure_every`` on the target; the others' latency
    # is the predictor's, scaled by the measured/predicted ratio learnt so far. Unset: 1
    # with the proxy (every episode measured), 20 with an evaluator (an episode then costs
    # a score, not an export and a timing)
    measure_every: int | None = Field(default=None, ge=1)

    def scorer(self, search_evaluator: str) -> str:
        """The episode scorer this spec resolves to: proxy, bn_recal or supernet."""
        if self.evaluator != "auto":
            return self.evaluator
        return "supernet" if search_evaluator == "supernet" else "proxy"

    def measure_period(self, search_evaluator: str) -> int:
        """One new architecture in this many is measured on the target."""
        if self.measure_every is not None:
            return self.measure_every
        return 1 if self.scorer(search_evaluator) == "proxy" else 20


class AgentSpec(_Strict):
    """PPO (stable-baselines3) for ``slimtune agent train`` and ``searcher: ppo``.

    ``init`` starts from a trained agent.zip instead of a fresh network.
    """

    timesteps: int = Field(default=2048, ge=1)
    n_steps: int = Field(default=128, ge=8)
    batch_size: int = Field(default=64, ge=8)
    learning_rate: float = Field(default=3e-4, gt=0)
    ent_coef: float = Field(default=0.01, ge=0)
    net_arch: tuple[int, ...] = (64, 64)
    init: Path | None = None


class TrackingSpec(_Strict):
    """The MLflow store. ``MLFLOW_TRACKING_URI`` overrides ``uri``.

    ``log_models``: which trials' models are logged as MLflow models (ONNX flavour) at the
    end of a job: the ``best`` feasible one (default), every ``front`` one, or ``none``.
    ``register_as``: the registered model they become versions of (the best gets the
    alias ``best``); unset, they are logged on their runs without registering.
    """

    uri: str = "sqlite:///mlruns.db"
    experiment: str | None = None
    log_models: Literal["best", "front", "none"] = "best"
    register_as: str | None = Field(default=None, min_length=1, max_length=200,
                                    pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

    @model_validator(mode="after")
    def _register_needs_models(self) -> TrackingSpec:
        if self.register_as and self.log_models == "none":
            raise ValueError("register_as needs a model to register: set log_models to "
                             "best or front")
        return self


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
