"""Stage 3: the winners fine-tuned for real, deployed, timed paired, evaluated."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from slimtune.evaluators.base import Evaluator
from slimtune.finetune import finetune
from slimtune.measurement.latency import machine_lock
from slimtune.measurement.paired import PairedLatency, PairedTimings
from slimtune.pipeline.measure import Budget, paired_timing
from slimtune.ray_local import adopt_env, driver_env
from slimtune.result import TrialResult
from slimtune.spec import JobSpec
from slimtune.teacher_outputs import TeacherOutputs, teacher_outputs
from slimtune.trial import TrialContext, evaluate_deployed


def finalize_steps(spec: JobSpec, train_size: int) -> int:
    """Optimizer steps of ``finalize.epochs`` epochs over the training split."""
    return max(1, math.ceil(spec.finalize.epochs * train_size / spec.finalize.batch_size))


def final_recipe(spec: JobSpec, train_size: int) -> JobSpec:
    """The job spec with its fine-tune section set to the final stage's recipe."""
    ft = spec.finetune.model_copy(update={
        "steps": finalize_steps(spec, train_size), "batch_size": spec.finalize.batch_size,
        "lr": spec.finalize.lr})
    return spec.model_copy(update={"finetune": ft})


def finalize_candidate(ctx: TrialContext, evaluator: Evaluator, row: TrialResult,
                       baseline: Any, budget: Budget,
                       earlier: Sequence[PairedLatency] = (),
                       outputs: TeacherOutputs | None = None) -> TrialResult:
    """Fine-tune ``row``'s policy from the evaluator's network (distillation from the
    baseline, its training-split ``outputs`` looked up where given), deploy it into
    ``trials/ID/`` and evaluate it: a ``final`` row, its latency judged on its own timing
    pooled with the ``earlier`` timings of its architecture."""
    start = time.perf_counter()
    spec = final_recipe(ctx.spec, len(ctx.data.train))
    ctx = replace(ctx, spec=spec)
    torch.set_num_threads(spec.target.threads)
    teacher = ctx.baseline_model()
    with machine_lock("shared"):
        model = evaluator.model(row.policy)
        finetune(model, teacher, ctx.table, row.policy, spec, ctx.data.train,
                 seed=spec.search.seed + row.trial_id, teacher_outputs=outputs)
    fields = evaluate_deployed(ctx, model, row.policy, ctx.trials_dir / str(row.trial_id),
                               timing=paired_timing(ctx, baseline, budget, earlier))
    return replace(row, **fields, finetune_steps=spec.finetune.steps,
                   seconds=row.seconds + time.perf_counter() - start)


def shared_models(winners: Sequence[TrialResult],
                  references: Sequence[TrialResult]) -> dict[int, int]:
    """Reference id -> the id of the winner with its policy: one fine-tune serves both
    when they start from the same network (the caller knows whether they do)."""
    by_policy = {w.policy.key(): w.trial_id for w in winners}
    return {r.trial_id: by_policy[r.policy.key()] for r in references
            if r.policy.key() in by_policy}


def shared_final(ctx: TrialContext, model_row: TrialResult,
                 reference: TrialResult) -> TrialResult:
    """``reference``'s final row when ``model_row`` (a final row of its policy, from the
    same start) is its model: the same figures and files, under the reference's id."""
    src = ctx.trials_dir / str(model_row.trial_id)
    if src.is_dir():
        shutil.copytree(src, ctx.trials_dir / str(reference.trial_id), dirs_exist_ok=True)
    return replace(model_row, trial_id=reference.trial_id, reference=reference.reference,
                   searcher=reference.searcher, score=reference.score,
                   predicted_latency_ms=reference.predicted_latency_ms,
                   mlflow_run_id=reference.mlflow_run_id, seconds=reference.seconds,
                   model_of=model_row.trial_id)


def finalize_in_ray(ctx: TrialContext, evaluator: Evaluator, rows: list[TrialResult],
                    baseline: Any, budget: Budget, on_row, *,
                    references: Evaluator | None = None,
                    timings: PairedTimings | None = None) -> list[TrialResult]:
    """Each candidate's final stage as a Ray task (``target.threads`` CPUs each, at most
    ``search.concurrency`` at once); a task that raises gives a ``failed`` row.

    Reference rows start from ``references``' network when given (the plainly pruned
    baseline, as a user pruning by hand would), searched rows from ``evaluator``'s."""
    import ray

    from slimtune.device import worker_gpus

    task = ray.remote(num_cpus=float(ctx.spec.target.threads),
                      num_gpus=worker_gpus(ctx.spec.train.device, ctx.spec.search.concurrency),
                      max_retries=ctx.spec.search.max_failures)(_finalize_task)
    ctx_ref, searched_ref = ray.put(ctx), ray.put(evaluator)
    outputs_ref = ray.put(_job_teacher_outputs(ctx, len(rows)))
    env = driver_env()
    plain_ref = ray.put(references) if references is not None else searched_ref
    done: list[TrialResult] = []
    pending = list(rows)
    running: dict[Any, TrialResult] = {}
    while pending or running:
        while pending and len(running) < ctx.spec.search.concurrency:
            row = pending.pop(0)
            ev_ref = plain_ref if row.reference else searched_ref
            earlier = timings.of(row.policy.key()) if timings is not None else ()
            running[task.remote(ctx_ref, ev_ref, row, baseline, budget, env, earlier,
                                outputs_ref)] = row
        ready, _ = ray.wait(list(running), num_returns=1)
        row = running.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except Exception as err:  # noqa: BLE001 - one failed candidate must not end the job
            result = replace(row, state="failed", stage="final",
                             error=f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")
        on_row(result)
        done.append(result)
    return done


def _job_teacher_outputs(ctx: TrialContext, finals: int) -> TeacherOutputs | None:
    """The baseline's outputs on the training split for ``finals`` final fine-tunes, where
    distilling from a lookup pays (``slimtune.teacher_outputs``)."""
    spec = final_recipe(ctx.spec, len(ctx.data.train))
    if not finals or not spec.finetune.distill:
        return None
    drawn = finals * spec.finetune.steps * spec.finetune.batch_size
    threads = torch.get_num_threads()
    torch.set_num_threads(spec.target.threads)
    try:
        return teacher_outputs(ctx.baseline_model(), ctx.data.train, examples_drawn=drawn,
                               batch_size=spec.finetune.batch_size)
    finally:
        torch.set_num_threads(threads)


def _finalize_task(ctx: TrialContext, evaluator: Evaluator, row: TrialResult, baseline: Any,
                   budget: Budget, env: dict[str, str] | None = None,
                   earlier: Sequence[PairedLatency] = (),
                   outputs: TeacherOutputs | None = None) -> TrialResult:
    adopt_env(env)
    return finalize_candidate(ctx, evaluator, row, baseline, budget, earlier, outputs)
