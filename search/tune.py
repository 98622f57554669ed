"""Ray Tune orchestration: trials of a searcher scheduled as Ray Tune trials.

Our ask/tell searcher is wrapped as a Ray Tune ``Searcher``; each trial runs
``run_trial`` in a Ray worker; results come back to the driver, which tells the
searcher and reports them (MLflow, progress) through two callbacks.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from typing import Any

from slimtune.policy import Policy
from slimtune.result import TrialResult
from slimtune.search.base import Searcher
from slimtune.trial import TrialContext, run_trial

OnSuggest = Callable[[int, Policy], None]
OnComplete = Callable[[TrialResult], None]


def start_ray(address: str | None = None, *, num_cpus: int | None = None,
              verbose: bool = False) -> None:
    """Connect to a cluster at ``address``, or start a local Ray bound to 127.0.0.1."""
    import ray

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "60")
    if ray.is_initialized():
        return
    level = logging.INFO if verbose else logging.ERROR
    if address:
        ray.init(address=address, logging_level=level, log_to_driver=verbose)
        return
    ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
             _node_ip_address="127.0.0.1", logging_level=level, log_to_driver=verbose)


def stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _trainable(config: dict[str, Any], ctx: TrialContext) -> dict[str, Any]:
    """A Ray Tune function trainable: one policy in, one TrialResult (as JSON) out."""
    policy = Policy.from_dict(config["policy"])
    result = run_trial(ctx, config["trial_id"], policy, config["searcher"])
    return {"trial_json": json.dumps(result.to_dict()), "accuracy": result.accuracy or 0.0}


def _tune_searcher(searcher: Searcher, trials: int, on_suggest: OnSuggest,
                   on_complete: OnComplete):
    from ray.tune.search import Searcher as TuneSearcher

    class AskTellAdapter(TuneSearcher):
        """Presents an ask/tell Searcher to Ray Tune."""

        def __init__(self) -> None:
            super().__init__(metric="accuracy", mode="max")
            self._suggested = 0
            self._live: dict[str, tuple[int, Policy]] = {}

        def suggest(self, trial_id: str) -> dict[str, Any] | None:
            if self._suggested >= trials:
                return TuneSearcher.FINISHED
            number, policy = self._suggested, searcher.ask()
            self._suggested += 1
            self._live[trial_id] = (number, policy)
            on_suggest(number, policy)
            return {"trial_id": number, "policy": policy.to_dict(), "searcher": searcher.name}

        def on_trial_complete(self, trial_id: str, result: dict | None = None,
                              error: bool = False) -> None:
            number, policy = self._live.pop(trial_id)
            if error or not result or "trial_json" not in result:
                outcome = TrialResult(trial_id=number, policy=policy, state="failed",
                                      searcher=searcher.name,
                                      error="the Ray worker running this trial failed")
            else:
                outcome = TrialResult.from_dict(json.loads(result["trial_json"]))
            searcher.tell(policy, outcome)
            on_complete(outcome)

    return AskTellAdapter()


def run_search(ctx: TrialContext, searcher: Searcher, *, trials: int, concurrency: int,
               on_suggest: OnSuggest, on_complete: OnComplete,
               max_failures: int = 1) -> None:
    """Run ``trials`` trials of ``searcher`` through Ray Tune (Ray must be started)."""
    from ray import tune

    cpus = float(ctx.spec.target.threads)
    trainable = tune.with_resources(tune.with_parameters(_trainable, ctx=ctx), {"cpu": cpus})
    with tempfile.TemporaryDirectory(prefix="slimtune-tune-") as storage:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=_tune_searcher(searcher, trials, on_suggest, on_complete),
                num_samples=trials, max_concurrent_trials=concurrency, reuse_actors=True),
            run_config=tune.RunConfig(
                name=ctx.spec.name, storage_path=storage, verbose=0,
                failure_config=tune.FailureConfig(max_failures=max_failures)),
        )
        tuner.fit()
