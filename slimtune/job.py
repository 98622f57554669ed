"""A whole job: check the input, prepare the baseline, search through Ray, report.

``preflight`` does every check that needs no training, so bad input ends with one line
and exit 2 before an output directory or an MLflow run exists. ``run_job`` then trains
(or loads) the baseline, measures it, runs the search through Ray Tune with every trial
in MLflow, and writes the output directory (see ``slimtune.outputs``).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from slimtune.baseline import prepare_baseline
from slimtune.chance import ChanceBaselineError, check_above_chance, vanishing_norms
from slimtune.errors import UserInputError
from slimtune.evaluate.registry import OBJECTIVES, flat_metrics
from slimtune.evaluate.trial_eval import job_reference
from slimtune.latency import MeasureProtocol, machine_lock
from slimtune.objective import Objective, evaluate_split
from slimtune.outputs import append_trial, copy_trial, write_json
from slimtune.pareto import best_feasible, normalized_hypervolume, pareto_front, plot_pareto
from slimtune.policy import Policy, write_text_atomic
from slimtune.preflight import budget_ms, preflight, print_line, uses_scoring
from slimtune.progress import Progress
from slimtune.result import TrialResult
from slimtune.resume import (
    check_resume,
    clear_unfinished,
    free_ids,
    new_study,
    read_finished,
    read_state,
    sync_or_stop,
    write_state,
)
from slimtune.search.base import Searcher
from slimtune.spec import JobSpec
from slimtune.tracking import PENDING_FILE, Tracker
from slimtune.trial import TrialContext, deploy, measure

log = logging.getLogger("slimtune")


def check_out_dir(out_dir: Path, *, overwrite: bool) -> None:
    """Refuse to mix two jobs' outputs in one directory (checked before any compute)."""
    if not (out_dir.exists() and any(out_dir.iterdir())):
        return
    if not overwrite:
        raise UserInputError(f"output directory {out_dir} is not empty "
                             "(choose another --out, or pass --overwrite)")
    if not (out_dir / "trials.jsonl").exists() and not (out_dir / "job.yaml").exists():
        raise UserInputError(f"--overwrite refused: {out_dir} is not a slimtune output "
                             "directory")


def prepare_out_dir(out_dir: Path, *, overwrite: bool) -> None:
    """An empty output directory; an earlier job's outputs are removed if ``overwrite``."""
    check_out_dir(out_dir, overwrite=overwrite)
    if out_dir.exists() and overwrite:
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class JobOutcome:
    out_dir: Path
    results: list[TrialResult]
    front: list[TrialResult]
    best: TrialResult | None
    baseline: dict
    budget_ms: float
    hypervolume: float
    tracking_uri: str
    parent_run_id: str
    wall_seconds: float
    search_seconds: float  # Ray start to Ray shutdown
    trial_seconds: float  # the sum of the trials' own time inside their workers


def run_job(spec: JobSpec, out_dir: Path, *, overwrite: bool = False, address: str | None = None,
            verbose: bool = False, protocol: MeasureProtocol | None = None,
            searcher: Searcher | None = None, resume: bool = False) -> JobOutcome:
    """Run a whole job; see the module docstring. ``searcher`` replaces the spec's
    (``slimtune apply`` runs a FixedSearcher). ``resume`` continues the stopped job in
    ``out_dir`` (see ``slimtune.resume``)."""
    start = time.perf_counter()
    out_dir = out_dir.resolve()  # Ray workers run in directories of their own
    protocol = protocol or MeasureProtocol()
    if resume and searcher is None and uses_scoring(spec):
        raise UserInputError(
            f"--resume continues a search.evaluator: finetune job; this one scores "
            f"candidates ({spec.search.evaluator}): run it again without --resume (its "
            "baseline, latency table and supernet are cached and not redone)")
    if resume:
        check_resume(out_dir, spec)
    else:
        check_out_dir(out_dir, overwrite=overwrite)
    if not spec.target.is_local:  # a remote target is a Ray node: connect, check it exists
        from slimtune.targets import connect_target

        connect_target(spec.target.name, spec.target.threads, address, verbose=verbose)
    prep = preflight(spec, protocol)
    if spec.search.warm_start_from is not None and searcher is None:
        from slimtune.agents.transfer import check_warm_start

        check_warm_start(spec.search.warm_start_from, prep.table)
    _say(prep.probe_summary)  # after the last check that can refuse the job
    if resume:
        finished = read_finished(out_dir)
        clear_unfinished(out_dir, finished)
        state = read_state(out_dir)
    else:
        prepare_out_dir(out_dir, overwrite=overwrite)
        write_text_atomic(out_dir / "job.yaml", spec.to_yaml())
        finished, state = [], {}
    tracker = Tracker(spec.tracking_uri, spec.experiment, pending=out_dir / PENDING_FILE)
    progress: Progress | None = None
    try:
        _say(f"baseline {spec.model.describe()} on {spec.data.describe()}: preparing")
        with machine_lock("shared"):
            baseline = prepare_baseline(spec, prep.data)
        ctx = TrialContext(spec=spec, table=prep.table, baseline_state=baseline.model.state_dict(),
                           data=prep.data, budget_ms=float("inf"),
                           trials_dir=out_dir / "trials", protocol=protocol)
        if state.get("baseline"):  # a resumed job keeps its baseline figures and budget
            base_info = dict(state["baseline"])
        else:
            try:
                base_info = _measure_baseline(ctx, baseline, out_dir / "baseline")
            except ChanceBaselineError:  # refused before the search: no outputs left
                shutil.rmtree(out_dir, ignore_errors=True)
                raise
        budget = budget_ms(spec, base_info["latency_ms"])
        base_info.update(budget_ms=budget, fastest_ms=prep.fastest_ms)
        ctx = replace(ctx, budget_ms=budget)
        if spec.metric_groups:
            with machine_lock("shared"):
                reference = job_reference(ctx, baseline.model, out_dir / "baseline")
            ctx = replace(ctx, reference=reference)
            base_info["metrics"] = dict(reference.metrics)
        _say(f"baseline ({baseline.source}): val accuracy {base_info['accuracy']:.4f}, "
             f"{base_info['latency_ms']:.3f} ms on {spec.target.runtime}; "
             f"budget {budget:.3f} ms")

        if state.get("parent_run_id"):
            closed = tracker.resume_job(state["parent_run_id"], {
                r.mlflow_run_id: r for r in finished if r.mlflow_run_id})
            parent = tracker.parent_id
            _say(f"resume: {len(finished)} of {spec.search.trials} trials finished; "
                 f"{closed['killed']} interrupted MLflow runs closed as KILLED")
        else:
            parent = tracker.start_job(spec.name, _flat_params(spec),
                                       {"searcher": spec.search.searcher})
            tracker.log(parent, metrics={f"baseline_{k}": v for k, v in base_info.items()
                                         if isinstance(v, (int, float))})
            tracker.log(parent, metrics={f"baseline_{k}": v for k, v in
                                         flat_metrics(base_info.get("metrics", {})).items()})
            tracker.log_artifacts(parent, [out_dir / "job.yaml"])
        storage, study_name = new_study(spec, out_dir)
        study_name = state.get("study_name") or study_name
        state = write_state(out_dir, parent_run_id=parent, study_name=study_name,
                            baseline=base_info)

        from slimtune.ray_local import start_ray, stop_ray
        from slimtune.search import make_searcher
        from slimtune.search.tune import run_search

        def problem_factory():  # the AMC env's problem, for ppo and agent warm starts
            from slimtune.envs.problem import problem_from_parts

            return problem_from_parts(spec, prep.data, prep.table, prep.space, baseline.model,
                                      baseline_ms=base_info["latency_ms"], budget_ms=budget)

        given = searcher
        # a given searcher (slimtune apply's fixed policy) is scored like any other: with a
        # scoring evaluator its policy is scored, timed paired and finalized beside the
        # references, on this model's own evaluator (its supernet)
        scoring = uses_scoring(spec)
        searcher = given or make_searcher(
            spec.search.searcher, prep.space, seed=spec.search.seed,
            trials=spec.search.candidates if scoring else spec.search.trials,
            warm_start=spec.search.warm_start, storage=storage, study_name=study_name,
            constraints=spec.constraints,
            problem_factory=problem_factory)
        if spec.search.warm_start_from is not None and given is None:
            from slimtune.agents.transfer import warm_start_policy

            first, lines = warm_start_policy(spec.search.warm_start_from, prep.space,
                                             problem_factory)
            for line in lines:
                _say(f"warm start: {line}")
            searcher.enqueue(first)
        if searcher.name == "ppo":
            _say(f"ppo: training the agent for {spec.agent.timesteps} env steps on the proxy")
        if resume and given is None:
            from slimtune.search.resume import resume_searcher

            searcher = resume_searcher(searcher, finished)
        searcher.prepare()
        results: list[TrialResult] = list(finished)
        remaining = max(spec.search.trials - len(finished), 0)
        runs: dict[int, str] = {}

        def on_suggest(number: int, policy: Policy) -> None:
            params = prep.space.params_from_policy(policy)
            # the recipe a policy carries is logged even where the space does not search it
            params.update({f"recipe.{k}": v for k, v in policy.recipe.items()})
            runs[number] = tracker.start_trial(number, params, searcher.name)

        def on_complete(result: TrialResult) -> None:
            run_id = runs.pop(result.trial_id)
            result = replace(result, mlflow_run_id=run_id, budget_ms=budget,
                             searcher=searcher.name)
            append_trial(out_dir, result)  # first: a finished trial is never lost
            tracker.end_trial(run_id, result)
            if tracker.degraded:
                tracker.sync()
            results.append(result)
            progress.update(results)

        search_start = time.perf_counter()
        if scoring:
            _say(f"search: {spec.search.candidates} candidates of {searcher.name} scored by "
                 f"{spec.search.evaluator}; the best {spec.search.trials} timed paired, "
                 f"the top {spec.finalize.top_k} fine-tuned")
        else:
            _say(f"search: {spec.search.trials} trials of {searcher.name} through Ray Tune")
        start_ray(address, verbose=verbose)
        try:
            if scoring:
                from slimtune.pipeline.job import scoring_search

                results = scoring_search(ctx, prep.space, searcher, baseline.model, base_info,
                                         out_dir, tracker, say=_say)
            else:
                progress = Progress(spec.search.trials, budget)
                if remaining:
                    run_search(ctx, searcher, trials=remaining,
                               concurrency=spec.search.concurrency,
                               on_suggest=on_suggest, on_complete=on_complete,
                               trial_ids=free_ids((r.trial_id for r in finished), remaining))
        except KeyboardInterrupt:  # Ctrl-C or `slimtune stop`: close runs before Ray's
            tracker.close_all("KILLED")  # shutdown, which can outlast a stop's grace time
            stop_ray(force=True)  # a stopped job's trials stop now, not at exit
            raise
        finally:
            stop_ray()  # a cluster's connection ends; a local Ray is kept for the process
        search_seconds = time.perf_counter() - search_start
        if progress is not None:
            progress.close()
        if getattr(searcher, "agent", None) is not None:  # ppo: keep the trained agent
            searcher.agent.save(out_dir / "agent.zip")
            tracker.log_artifacts(parent, [out_dir / "agent.zip"])
        outcome = _finish(spec, out_dir, tracker, results, base_info, budget, start,
                          search_seconds)
        tracker.end(parent, "FINISHED")
        sync_or_stop(tracker, out_dir)
        return outcome
    except BaseException as err:
        tracker.close_on(err)
        raise
    finally:
        if progress is not None:
            progress.close()


def _measure_baseline(ctx: TrialContext, baseline, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    from slimtune.compress import count_macs_params, packed_size_bytes

    with machine_lock("shared"):
        deployed = deploy(ctx, baseline.model, Policy(), out / "model.onnx")
    stats = measure(ctx, deployed)
    threads = ctx.spec.target.threads
    with machine_lock("shared"):
        run, objective = deployed.runner(threads), Objective.of(ctx.spec)
        val, _ = evaluate_split(objective, run, ctx.data.val)
        test, _ = evaluate_split(objective, run, ctx.data.test)
        check_chance = objective.logits and not ctx.spec.baseline.allow_chance
        val_logits = deployed.logits(ctx.data.val, threads) if check_chance else None
    if val_logits is not None:
        warning = check_above_chance(np.asarray(val_logits), ctx.data.val.y.numpy(),
                                     ctx.data.num_classes, source=baseline.source,
                                     hint=vanishing_norms(baseline.model))
        if warning:
            _say(f"warning: {warning}")
    macs, params = count_macs_params(baseline.model, ctx.data.input_shape)
    return {"accuracy": val, "test_accuracy": test, "latency_ms": stats.median_ms,
            "latency_p10_ms": stats.p10_ms, "latency_p90_ms": stats.p90_ms,
            "size_bytes": packed_size_bytes(baseline.model, ctx.table, Policy()),
            "macs": macs, "params": params, "source": baseline.source,
            "train_seconds": baseline.train_seconds, "cache_key": baseline.cache_key}


def _finish(spec: JobSpec, out_dir: Path, tracker: Tracker, results: list[TrialResult],
            base: dict, budget: float, start: float, search_seconds: float) -> JobOutcome:
    from slimtune.front import publish_front
    from slimtune.pareto import reference_points

    front = pareto_front(results, spec.objectives)
    best = best_feasible(results)
    hv = normalized_hypervolume(front, budget_ms=budget, baseline_size_bytes=base["size_bytes"])
    write_json(out_dir / "pareto.json", {
        "objectives": {k: "max" if OBJECTIVES[k] == "maximize" else "min"
                       for k in spec.objectives},
        "constraints": spec.constraints, "mlflow_parent_run_id": tracker.parent_id,
        "tracking_uri": spec.tracking_uri,
        "budget_ms": budget, "hypervolume": hv, "baseline": base,
        "best_trial": best.trial_id if best else None,
        "front": [r.to_dict() for r in front]})
    plot_pareto(results, front, out_dir / "pareto.png", budget_ms=budget,
                baseline_accuracy=base["accuracy"], baseline_latency_ms=base["latency_ms"],
                title=f"{spec.name}: {spec.search.searcher}, {len(results)} trials",
                references=reference_points(results), baseline_size_bytes=base["size_bytes"])
    if best is not None:
        copy_trial(out_dir, best.trial_id, out_dir / "best")
    parent = tracker.parent_id
    assert parent is not None
    feasible = [r for r in results if r.feasible]
    trial_seconds = sum(r.seconds for r in results)
    tracker.log(parent, metrics={
        "search_seconds": search_seconds, "trial_seconds_sum": trial_seconds,
        "hypervolume": hv, "front_size": len(front), "trials_feasible": len(feasible),
        "trials_failed": sum(r.state == "failed" for r in results),
        **({"best_accuracy": best.accuracy or 0.0, "best_test_accuracy": best.test_accuracy or 0.0,
            "best_latency_ms": best.latency_ms or 0.0, "best_size_bytes": best.size_bytes or 0}
           if best else {})},
        tags={"best_trial": best.trial_id if best else "none"})
    tracker.log_artifacts(parent, [out_dir / n for n in ("pareto.json", "pareto.png",
                                                         "trials.jsonl")])
    if best is not None:
        tracker.log_artifacts(parent, sorted((out_dir / "best").iterdir()), subdir="best")
    publish_front(tracker, parent, results, front, best, out_dir, spec, base, budget_ms=budget)
    if spec.metric_groups:
        _report(out_dir, tracker, parent)
    wall = time.perf_counter() - start
    return JobOutcome(out_dir, results, front, best, base, budget, hv, spec.tracking_uri,
                      parent, wall, search_seconds, trial_seconds)


def _report(out_dir: Path, tracker: Tracker, parent: str) -> None:
    """``report.html`` (slimtune.commands.report), attached to the parent run; a report
    that cannot be built costs a warning, not the finished search."""
    from slimtune.report import write_report

    try:
        path = write_report(out_dir, out_dir / "report.html")
    except Exception as err:  # noqa: BLE001 - the search itself is done and recorded
        _say(f"report.html not written: {type(err).__name__}: {err}")
        return
    tracker.log_artifacts(parent, [path])


def _flat_params(spec: JobSpec) -> dict[str, str]:
    flat: dict[str, str] = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = str(value)

    walk("", spec.model_dump(by_alias=True, mode="json", exclude_none=True))
    return flat


_say = print_line  # what the job says on stderr
