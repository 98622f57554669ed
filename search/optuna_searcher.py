"""Searchers backed by an Optuna sampler, through Optuna's ask-and-tell interface."""

from __future__ import annotations

import json
import math
from abc import abstractmethod
from collections import Counter
from collections.abc import Sequence

import optuna
from optuna.trial import TrialState

from slimtune.evaluate import constraint_excess
from slimtune.policy import Policy
from slimtune.result import TrialResult
from slimtune.search.base import Searcher
from slimtune.spaces import SearchSpace

LATENCY_CONSTRAINT = "latency_over_budget_ms"  # feasible when <= 0
REQUEUED = "slimtune_requeued"  # user attr of a trial a crash interrupted (run again)
# user attr of a sampler's redraw of a known policy, told without running (see ask): the
# number of the trial it repeats, or -1 when that one was still running
DUPLICATE = "slimtune_duplicate_of"
MAX_REDRAWS = 20
_CONSTRAINTS_KEY = "constraints"  # Optuna's system-attr prefix of Trial.set_constraint


def signal(result: TrialResult) -> float:
    """What a searcher maximises: the deployed model's validation accuracy, else the
    evaluator's score of a candidate never deployed (0 when it has neither)."""
    if result.accuracy is not None:
        return result.accuracy
    return result.score or 0.0


def latency_of(result: TrialResult) -> float:
    """The measured latency, else the screen's prediction (0 when neither)."""
    if result.latency_ms is not None:
        return float(result.latency_ms)
    return float(result.predicted_latency_ms or 0.0)


def _key(params: dict) -> str:
    return json.dumps(params, sort_keys=True, default=str)


class OptunaSearcher(Searcher):
    """Base for Optuna searchers; subclasses pick the sampler and the objectives.

    The latency budget reaches the sampler as a trial constraint (``latency - budget``,
    feasible when <= 0), so an infeasible policy is known as infeasible, not merely as a
    poor score. So does every bound in ``constraints`` (the spec's ``constraints:``, set
    by ``make_searcher``), as ``slimtune.evaluate.constraint_excess``; a metric a trial
    did not produce (stopped at the latency gate) is told as 0, the latency already
    marks that trial infeasible.
    """

    directions: tuple[str, ...] = ("maximize",)

    def __init__(self, space: SearchSpace, *, seed: int = 0, trials: int = 16,
                 storage: str | None = None, study_name: str | None = None) -> None:
        super().__init__(space, seed=seed, trials=trials)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # With an RDB ``storage`` (sqlite:///..., postgresql://...) the study outlives the
        # process: a resumed job loads it by ``study_name`` (see ``resume``).
        self.study = optuna.create_study(directions=list(self.directions),
                                         sampler=self.make_sampler(), storage=storage,
                                         study_name=study_name,
                                         load_if_exists=storage is not None)
        self._pending: list[tuple[Policy, optuna.Trial]] = []
        self.constraints: dict[str, float] = {}

    @abstractmethod
    def make_sampler(self) -> optuna.samplers.BaseSampler:
        """The Optuna sampler this searcher asks."""

    def values(self, result: TrialResult) -> list[float]:
        """The objective values told to Optuna: the deployed accuracy, else the
        evaluator's score (0 when neither: stopped before either)."""
        return [signal(result)]

    def enqueue(self, policy: Policy) -> None:
        """Evaluate ``policy`` first (a warm start from a known policy)."""
        # skip_if_exists: a resumed study already holds its warm-start trials
        self.study.enqueue_trial(self.space.params_from_policy(policy), skip_if_exists=True)

    def resume(self, finished: Sequence[TrialResult]) -> None:
        """Continue a study a stopped job left in its storage.

        ``finished`` are the trials the job recorded (``trials.jsonl``). Trials the crash
        left RUNNING are marked FAIL and their parameters enqueued, so the same policies
        run again, unless the job recorded them before the crash (then Optuna is told
        their result now); a trial told to Optuna but never recorded is enqueued again.
        Told and recorded trials are neither lost nor repeated.
        """
        recorded = Counter(_key(self.space.params_from_policy(r.policy)) for r in finished)
        results: dict[str, list[TrialResult]] = {}
        for r in finished:
            results.setdefault(_key(self.space.params_from_policy(r.policy)), []).append(r)
        # Samplers do not store their random state: a sampler seeded as before would draw
        # the stopped job's first policies again. Seed it from where the study stands.
        self.seed = self.seed + 7919 * (len(self.study.trials) + 1)
        self.study.sampler = self.make_sampler()
        for trial in self.study.get_trials(deepcopy=False):
            key = _key(trial.params)
            if trial.user_attrs.get(REQUEUED) or DUPLICATE in trial.user_attrs:
                continue  # enqueued again by an earlier resume / a redraw never run
            if trial.state == TrialState.RUNNING and recorded[key]:
                # recorded in trials.jsonl, killed before Optuna was told: tell it now
                recorded[key] -= 1
                self._tell(optuna.Trial(self.study, trial._trial_id), results[key].pop(0))
            elif trial.state == TrialState.RUNNING:
                optuna.Trial(self.study, trial._trial_id).set_user_attr(REQUEUED, True)
                self.study.tell(trial.number, state=TrialState.FAIL)
                self.study.enqueue_trial(trial.params)
            elif trial.state.is_finished():
                if recorded[key]:
                    recorded[key] -= 1
                elif trial.params:
                    self.study.enqueue_trial(trial.params)

    def ask(self) -> Policy:
        """A policy not evaluated yet: a sampler's redraw of a known one costs no trial.

        Samplers on categorical spaces (TPE above all, once it has converged) redraw
        policies already evaluated. A redraw of a finished policy is told that policy's
        values and constraints at once (Optuna's FAQ recipe, "ignore duplicated
        samples"); a redraw of one still running is told FAIL. Both are marked
        ``DUPLICATE`` and the sampler asked again, up to ``MAX_REDRAWS`` times, after
        which the redraw is evaluated (a small space may be exhausted). Enqueued trials
        (warm starts, resumed trials) are never skipped.
        """
        dists = self.space.distributions()
        for attempt in range(MAX_REDRAWS):
            trial = self.study.ask(dists)
            frozen = self.study.get_trials(deepcopy=False)[trial.number]
            if attempt == MAX_REDRAWS - 1 or "fixed_params" in frozen.system_attrs \
                    or not self._skip_duplicate(trial):
                break
        policy = self.space.policy_from_params(trial.params)
        self._pending.append((policy, trial))
        return policy

    def _skip_duplicate(self, trial: optuna.Trial) -> bool:
        """Tell ``trial`` from what is known about its params; False when nothing is."""
        key = _key(trial.params)
        if any(_key(t.params) == key for _, t in self._pending):
            trial.set_user_attr(DUPLICATE, -1)
            self.study.tell(trial, state=TrialState.FAIL)
            return True
        for done in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if done.user_attrs.get(DUPLICATE) is None and _key(done.params) == key:
                trial.set_user_attr(DUPLICATE, done.number)
                for name, value in done.system_attrs.items():
                    if name.startswith(f"{_CONSTRAINTS_KEY}:"):
                        trial.set_constraint(name.split(":", 1)[1], value)
                self.study.tell(trial, done.values)
                return True
        return False

    def tell(self, policy: Policy, result: TrialResult) -> None:
        index = next(i for i, (p, _) in enumerate(self._pending) if p is policy)
        _, trial = self._pending.pop(index)
        self._tell(trial, result)

    def _tell(self, trial: optuna.Trial, result: TrialResult) -> None:
        latency = result.latency_ms if result.latency_ms is not None \
            else result.predicted_latency_ms  # a scored candidate: the screen's figure
        if result.state == "failed" or latency is None:
            self.study.tell(trial, state=TrialState.FAIL)
            return
        trial.set_constraint(LATENCY_CONSTRAINT, latency - (result.budget_ms or float("inf")))
        for key, excess in constraint_excess(result.to_dict(), self.constraints).items():
            trial.set_constraint(key, excess if math.isfinite(excess) else 0.0)
        self.study.tell(trial, self.values(result))
