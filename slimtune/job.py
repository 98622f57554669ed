"""A whole job: check the input, prepare the baseline, search through Ray, report.

``preflight`` does every check that needs no training, so bad input ends with one line
and exit 2 before an output directory or an MLflow run exists. ``run_job`` then trains
(or loads) the baseline, measures it, runs the search through Ray Tune with every trial
in MLflow, and writes the output directory (see ``slimtune.results.outputs``).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

from slimtune.chance import ChanceBaselineError
from slimtune.errors import UserInputError
from slimtune.evaluate.registry import OBJECTIVES, flat_metrics
from slimtune.job_baseline import BaselineFigures, MeasuredBaseline, baseline_stage
from slimtune.measurement.latency import MeasureProtocol
from slimtune.policy import Policy, write_text_atomic
from slimtune.preflight import Prepared, preflight, print_line, uses_scoring
from slimtune.progress import Progress
from slimtune.result import TrialResult
from slimtune.results.outcome import JobOutcome
from slimtune.results.outputs import append_trial, copy_trial, write_json
from slimtune.results.pareto import best_feasible, normalized_hypervolume, pareto_front, plot_pareto
from slimtune.results.tracking import PENDING_FILE, Tracker
from slimtune.resume import (
    check_resume,
    clear_unfinished,
    free_ids,
    new_study,
    read_finished,
    read_state,
    save_study,
    sync_or_stop,
    write_state,
)
from slimtune.search.base import Searcher
from slimtune.spec import JobSpec

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


def run_job(spec: JobSpec, out_dir: Path, *, overwrite: bool = False, address: str | None = None,
            verbose: bool = False, protocol: MeasureProtocol | None = None,
            searcher: Searcher | None = None, resume: bool = False) -> JobOutcome:
    """Run a whole job; see the module docstring. ``searcher`` replaces the spec's
    (``slimtune apply`` runs a FixedSearcher). ``resume`` continues the stopped job in
    ``out_dir`` (see ``slimtune.resume``).

    The stages, each handing the next a typed value: preflight (:class:`Prepared`; every
    refusal happens there), the output directory (or what a stopped job left in it), the
    baseline (:class:`MeasuredBaseline`), tracking (the parent run), the searcher, the
    search (its rows) and the outputs (:class:`JobOutcome`)."""
    start = time.perf_counter()
    out_dir = out_dir.resolve()  # Ray workers run in directories of their own
    protocol = protocol or MeasureProtocol()
    prep = _preflight(spec, out_dir, protocol, resume=resume, overwrite=overwrite,
                      address=address, verbose=verbose, given=searcher)
    finished, state = _open_out_dir(spec, out_dir, resume=resume, overwrite=overwrite)
    tracker = Tracker(spec.tracking_uri, spec.experiment, pending=out_dir / PENDING_FILE)
    try:
        try:
            measured = baseline_stage(prep, out_dir, protocol, state.get("baseline"))
        except ChanceBaselineError:  # refused before the search: no outputs left
            shutil.rmtree(out_dir, ignore_errors=True)
            raise
        parent = _start_tracking(spec, out_dir, tracker, measured.figures, state, finished)
        storage, study_name = new_study(spec, out_dir)
        study_name = state.get("study_name") or study_name
        write_state(out_dir, parent_run_id=parent, study_name=study_name,
                    baseline=measured.figures.to_dict())
        searcher = _searcher(prep, measured, searcher, finished, storage=storage,
                             study_name=study_name, resume=resume)
        search_start = time.perf_counter()
        results = _search(prep, measured, searcher, finished, out_dir, tracker,
                          address=address, verbose=verbose)
        search_seconds = time.perf_counter() - search_start
        save_study(storage, study_name, out_dir)
        if getattr(searcher, "agent", None) is not None:  # ppo: keep the trained agent
            searcher.agent.save(out_dir / "agent.zip")
            tracker.log_artifacts(parent, [out_dir / "agent.zip"])
        outcome = _finish(spec, out_dir, tracker, results, measured.figures.to_dict(),
                          measured.figures.budget_ms, start, search_seconds)
        tracker.end(parent, "FINISHED")
        sync_or_stop(tracker, out_dir)
        return outcome
    except BaseException as err:
        tracker.close_on(err)
        raise


def _preflight(spec: JobSpec, out_dir: Path, protocol: MeasureProtocol, *, resume: bool,
               overwrite: bool, address: str | None, verbose: bool,
               given: Searcher | None) -> Prepared:
    """Every check that can refuse the job, before anything is written."""
    if resume and given is None and uses_scoring(spec):
        raise UserInputError(
            f"--resume continues a search.evaluator: finetune job; this one scores "
            f"candidates ({spec.search.evaluator}): run it again without --resume (its "
            "baseline, latency table and supernet are cached and not redone)")
    if resume:
        check_resume(out_dir, spec)
    else:
        check_out_dir(out_dir, overwrite=overwrite)
    if not spec.target.is_local:  # a remote target is a Ray node: connect, check it exists
        from slimtune.measurement.targets import connect_target

        connect_target(spec.target.name, spec.target.threads, address, verbose=verbose)
    # given policies (apply's) are judged by their own timing: a space whose fastest model
    # times over the budget in one run does not refuse a policy already measured within it
    prep = preflight(spec, protocol, reachable=given is None)
    if spec.search.warm_start_from is not None and given is None:
        from slimtune.agents.transfer import check_warm_start

        check_warm_start(spec.search.warm_start_from, prep.table)
    _say(prep.probe_summary)  # after the last check that can refuse the job
    return prep


def _open_out_dir(spec: JobSpec, out_dir: Path, *, resume: bool,
                  overwrite: bool) -> tuple[list[TrialResult], dict]:
    """A fresh output directory with ``job.yaml``; or, resuming, the trials a stopped job
    finished (its unfinished ones cleared) and its saved state."""
    if resume:
        finished = read_finished(out_dir)
        clear_unfinished(out_dir, finished)
        return finished, read_state(out_dir)
    prepare_out_dir(out_dir, overwrite=overwrite)
    write_text_atomic(out_dir / "job.yaml", spec.to_yaml())
    return [], {}


def _start_tracking(spec: JobSpec, out_dir: Path, tracker: Tracker, figures: BaselineFigures,
                    state: dict, finished: list[TrialResult]) -> str:
    """The job's parent MLflow run: a new one with the spec and the baseline's figures,
    or (resuming) the stopped job's, its interrupted trial runs closed as KILLED."""
    if state.get("parent_run_id"):
        closed = tracker.resume_job(state["parent_run_id"], {
            r.mlflow_run_id: r for r in finished if r.mlflow_run_id})
        _say(f"resume: {len(finished)} of {spec.search.trials} trials finished; "
             f"{closed['killed']} interrupted MLflow runs closed as KILLED")
        return tracker.parent_id
    parent = tracker.start_job(spec.name, _flat_params(spec), {"searcher": spec.search.searcher})
    info = figures.to_dict()
    tracker.log(parent, metrics={f"baseline_{k}": v for k, v in info.items()
                                 if isinstance(v, (int, float))})
    tracker.log(parent, metrics={f"baseline_{k}": v for k, v in
                                 flat_metrics(figures.metrics).items()})
    tracker.log_artifacts(parent, [out_dir / "job.yaml"])
    return parent


def _searcher(prep: Prepared, measured: MeasuredBaseline, given: Searcher | None,
              finished: list[TrialResult], *, storage, study_name: str,
              resume: bool) -> Searcher:
    """The spec's searcher (or ``given``: slimtune apply's fixed policy, scored like any
    other), warm-started and resumed as the spec says, prepared."""
    from slimtune.search import make_searcher

    spec, figures = prep.spec, measured.figures

    def problem_factory():  # the AMC env's problem, for ppo and agent warm starts
        from slimtune.envs.problem import problem_from_parts

        return problem_from_parts(spec, prep.data, prep.table, prep.space,
                                  measured.baseline.model, baseline_ms=figures.latency_ms,
                                  budget_ms=figures.budget_ms)

    searcher = given or make_searcher(
        spec.search.searcher, prep.space, seed=spec.search.seed,
        trials=spec.search.candidates if uses_scoring(spec) else spec.search.trials,
        warm_start=spec.search.warm_start, storage=storage, study_name=study_name,
        constraints=spec.constraints, problem_factory=problem_factory)
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
    return searcher


def _search(prep: Prepared, measured: MeasuredBaseline, searcher: Searcher,
            finished: list[TrialResult], out_dir: Path, tracker: Tracker, *,
            address: str | None, verbose: bool) -> list[TrialResult]:
    """The search through Ray: a scoring search (slimtune.pipeline), or Ray Tune trials
    that each fine-tune (``search.evaluator: finetune``). Returns every row."""
    from slimtune.ray_local import start_ray, stop_ray

    spec = prep.spec
    scoring = uses_scoring(spec)
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

            return scoring_search(measured.ctx, prep.space, searcher, measured.baseline.model,
                                  measured.figures.latency_ms, out_dir, tracker, say=_say)
        return _tune_trials(prep, measured, searcher, finished, out_dir, tracker)
    except KeyboardInterrupt:  # Ctrl-C or `slimtune stop`: close runs before Ray's
        tracker.close_all("KILLED")  # shutdown, which can outlast a stop's grace time
        stop_ray(force=True)  # a stopped job's trials stop now, not at exit
        raise
    finally:
        stop_ray()  # a cluster's connection ends; a local Ray is kept for the process


def _tune_trials(prep: Prepared, measured: MeasuredBaseline, searcher: Searcher,
                 finished: list[TrialResult], out_dir: Path,
                 tracker: Tracker) -> list[TrialResult]:
    """``search.trials`` Ray Tune trials (those a resumed job still lacks), each an MLflow
    child run opened at suggestion and closed with its row in ``trials.jsonl``."""
    from slimtune.search.tune import run_search

    spec, budget = prep.spec, measured.figures.budget_ms
    results: list[TrialResult] = list(finished)
    remaining = max(spec.search.trials - len(finished), 0)
    runs: dict[int, str] = {}
    progress = Progress(spec.search.trials, budget)

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

    try:
        if remaining:
            run_search(measured.ctx, searcher, trials=remaining,
                       concurrency=spec.search.concurrency, on_suggest=on_suggest,
                       on_complete=on_complete,
                       trial_ids=free_ids((r.trial_id for r in finished), remaining))
    finally:
        progress.close()
    return results


def _finish(spec: JobSpec, out_dir: Path, tracker: Tracker, results: list[TrialResult],
            base: dict, budget: float, start: float, search_seconds: float) -> JobOutcome:
    from slimtune.results.front import publish_front
    from slimtune.results.pareto import reference_points

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
    from slimtune.results.report import write_report

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
