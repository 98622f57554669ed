"""Ray Tune orchestration: trials of a searcher scheduled as Ray Tune trials.

Our ask/tell searcher is wrapped as a Ray Tune ``Searcher``; each trial runs
``run_trial`` in a Ray worker; results come back to the driver, which tells the
searcher and reports them (MLflow, progress) through two callbacks.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from ray.tune.search import Searcher as TuneSearcher

from slimtune.policy import Policy
from slimtune.ray_local import adopt_env, driver_env
from slimtune.result import TrialResult
from slimtune.search.base import Searcher
from slimtune.trial import TrialContext, run_trial

OnSuggest = Callable[[int, Policy], None]
OnComplete = Callable[[TrialResult], None]


FAULT_ENV = "SLIMTUNE_FAULT_KILL_TRIAL"  # test hook, see _inject_fault


def _inject_fault(ctx: TrialContext, trial_id: int) -> None:
    """Fault injection for tests: ``SLIMTUNE_FAULT_KILL_TRIAL=N`` SIGKILLs the worker
    running trial N on its first attempt (a marker file beside ``trials/`` remembers it),
    so Ray Tune's ``max_failures`` retry can be seen doing its work."""
    if os.environ.get(FAULT_ENV) != str(trial_id):
        return
    marker = ctx.trials_dir.parent / f".fault-killed-{trial_id}"
    if marker.exists():
        return
    marker.write_text(f"{os.getpid()}\n")
    os.kill(os.getpid(), signal.SIGKILL)


def _trainable(config: dict[str, Any], ctx: TrialContext,
               env: dict[str, str] | None = None) -> dict[str, Any]:
    """A Ray Tune function trainable: one policy in, one TrialResult (as JSON) out."""
    adopt_env(env)
    _inject_fault(ctx, config["trial_id"])
    policy = Policy.from_dict(config["policy"])
    result = run_trial(ctx, config["trial_id"], policy, config["searcher"])
    return {"trial_json": json.dumps(result.to_dict()), "accuracy": result.accuracy or 0.0}


class AskTellAdapter(TuneSearcher):
    """Presents an ask/tell Searcher to Ray Tune; it lives in the driver only."""

    _DRIVER_ONLY = ("_asktell", "on_suggest", "on_complete", "_live")

    def __init__(self, searcher: Searcher, trials: int, on_suggest: OnSuggest,
                 on_complete: OnComplete, trial_ids: Sequence[int] | None = None) -> None:
        super().__init__(metric="accuracy", mode="max")
        # not ``self.searcher``: Ray Tune reads that name as a wrapped Tune searcher
        self._asktell, self.trials = searcher, trials
        self.on_suggest, self.on_complete = on_suggest, on_complete
        self._suggested = 0
        # the ids given to the trials in order (a resumed job continues its numbering)
        self._ids = list(trial_ids) if trial_ids is not None else list(range(trials))
        self._live: dict[str, tuple[int, Policy]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Ray Tune pickles the search algorithm into its experiment state; the searcher
        # and the callbacks (MLflow client, terminal) are not picklable and stay out.
        return {k: v for k, v in self.__dict__.items() if k not in self._DRIVER_ONLY}

    def get_state(self) -> dict[str, Any]:
        """What Ray Tune checkpoints: only the count (a resumed job re-asks the searcher)."""
        return {"suggested": self._suggested}

    def set_state(self, state: dict[str, Any]) -> None:
        self._suggested = int(state["suggested"])

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self._suggested >= self.trials:
            return TuneSearcher.FINISHED
        number, policy = self._ids[self._suggested], self._asktell.ask()
        self._suggested += 1
        self._live[trial_id] = (number, policy)
        self.on_suggest(number, policy)
        return {"trial_id": number, "policy": policy.to_dict(), "searcher": self._asktell.name}

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        number, policy = self._live.pop(trial_id)
        if error or not result or "trial_json" not in result:
            outcome = TrialResult(trial_id=number, policy=policy, state="failed",
                                  searcher=self._asktell.name,
                                  error="the Ray worker running this trial failed")
        else:
            outcome = TrialResult.from_dict(json.loads(result["trial_json"]))
        self._asktell.tell(policy, outcome)
        self.on_complete(outcome)


def run_search(ctx: TrialContext, searcher: Searcher, *, trials: int, concurrency: int,
               on_suggest: OnSuggest, on_complete: OnComplete,
               max_failures: int | None = None,
               trial_ids: Sequence[int] | None = None) -> None:
    """Run ``trials`` trials of ``searcher`` through Ray Tune (Ray must be started).

    A trial whose worker dies is retried ``max_failures`` times (default: the spec's
    ``search.max_failures``), then reported failed; the search goes on.
    """
    if max_failures is None:
        max_failures = ctx.spec.search.max_failures
    from ray import tune

    from slimtune.device import worker_gpus

    resources = {"cpu": float(ctx.spec.target.threads)}
    gpus = worker_gpus(ctx.spec.train.device, concurrency)
    if gpus:  # fine-tunes on CUDA: Ray shows the GPU only to workers that ask for it
        resources["gpu"] = gpus
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, ctx=ctx, env=driver_env()), resources)
    with tempfile.TemporaryDirectory(prefix="slimtune-tune-") as storage:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=AskTellAdapter(searcher, trials, on_suggest, on_complete,
                                          trial_ids),
                num_samples=trials, max_concurrent_trials=concurrency, reuse_actors=True),
            run_config=tune.RunConfig(
                name=ctx.spec.name, storage_path=storage, verbose=0,
                failure_config=tune.FailureConfig(max_failures=max_failures)),
        )
        tuner.fit()
