"""The job spec's sections on how a job runs: the search and its space, the baseline's
training and the fine-tunes, scoring, the supernet, the final stage, the AMC env and its
agent, and tracking.

Parts of :class:`slimtune.spec.JobSpec`; their keys are a contract (see slimtune.spec).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from slimtune.policy import ALLOWED_BITS, MAX_CLUSTERS, MIN_CLUSTERS
from slimtune.spec_base import Strict as _Strict


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
    # Scoring evaluators: NetAdapt-style walks into the budget from the best-scored
    # models measured just over it (``slimtune/pipeline/refine.py``); 0: none.
    refine: int = Field(default=2, ge=0, le=100)
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
    # ``layer``: a bit-width per layer (``bits.<layer>``); ``model``: one bit-width for
    # every layer (``bits:all``), for targets where mixed precision costs a Q/DQ pair at
    # every change (ONNX Runtime on CPU) and a per-layer choice mostly samples those
    bits_per: Literal["layer", "model"] = "layer"
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
    ``val_size`` validation examples. With ``anchors``, a few uniform policies of each
    precision are timed paired before the first candidate is scored, so the latency
    screen has learnt this machine's int8 and fp32 costs before the searcher hears one."""

    val_size: int = Field(default=1000, ge=1)
    recal_batches: int = Field(default=8, ge=0, le=10_000)
    batch_size: int = Field(default=128, ge=1)
    anchors: bool = True


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
    same recipe in the same run, so the summary can say what the search beat.

    ``max_epochs``: a model still short of the baseline's validation score after
    ``epochs`` gets ``epochs`` more (a fresh cosine schedule, a warm restart) while each
    round raises that score by at least ``min_gain``, up to ``max_epochs`` in all; the
    weights best on validation are kept. None: ``epochs`` exactly."""

    top_k: int = Field(default=2, ge=1, le=1000)
    epochs: float = Field(default=1.0, gt=0, le=1000)
    max_epochs: float | None = Field(default=None, gt=0, le=1000)
    min_gain: float = Field(default=0.005, ge=0)
    batch_size: int = Field(default=128, ge=1)
    lr: float = Field(default=0.01, gt=0)
    references: bool = True

    @model_validator(mode="after")
    def _max_epochs_at_least_epochs(self) -> FinalizeSpec:
        if self.max_epochs is not None and self.max_epochs < self.epochs:
            raise ValueError(f"max_epochs ({self.max_epochs:g}) must be at least epochs "
                             f"({self.epochs:g})")
        return self


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
