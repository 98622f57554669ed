"""Stage 3: the winners fine-tuned for real, deployed, timed paired, evaluated."""

from __future__ import annotations

import copy
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from slimtune.evaluators.base import Evaluator
from slimtune.finetune import finetune
from slimtune.measurement.budget import Budget
from slimtune.measurement.latency import machine_lock
from slimtune.measurement.paired import PairedLatency, PairedTimings
from slimtune.objective import Objective, evaluate_split
from slimtune.pipeline.measure import paired_timing
from slimtune.policy import Policy
from slimtune.ray_local import adopt_env, driver_env
from slimtune.result import TrialResult
from slimtune.spec import JobSpec
from slimtune.teacher_outputs import TeacherOutputs, teacher_outputs
from slimtune.trial import TrialContext, evaluate_deployed

#: a round's seed offset: each round of a final fine-tune draws its own batches
ROUND_SEED = 7919


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
        steps = fine_tune_final(ctx, model, teacher, row.policy,
                                seed=spec.search.seed + row.trial_id, outputs=outputs)
    fields = evaluate_deployed(ctx, model, row.policy, ctx.trials_dir / str(row.trial_id),
                               timing=paired_timing(ctx, baseline, budget, earlier))
    return replace(row, **fields, finetune_steps=steps,
                   seconds=row.seconds + time.perf_counter() - start)


def final_rounds(spec: JobSpec) -> int:
    """Rounds of ``finalize.epochs`` a final fine-tune may take (``max_epochs`` allows)."""
    f = spec.finalize
    return 1 if f.max_epochs is None else max(1, math.floor(f.max_epochs / f.epochs + 1e-9))


def fine_tune_final(ctx: TrialContext, model: nn.Module, teacher: nn.Module, policy: Policy,
                    *, seed: int, outputs: TeacherOutputs | None = None) -> int:
    """Fine-tune ``model`` in place by ``ctx.spec``'s final recipe (:func:`final_recipe`):
    one round of ``finalize.epochs``, then, while its validation score is short of the
    teacher's by more than ``finalize.min_gain``, another round (a fresh cosine schedule)
    as long as the last one gained ``min_gain``, up to :func:`final_rounds`. The weights
    best on validation are kept. Returns the optimizer steps taken.

    A pruned copy of a briefly trained baseline needs about its training again (the
    quickstart's ResNet-20 pruned 37.5%: val 0.779 after one epoch, 0.82 after three,
    baseline 0.8475), an int8 copy one epoch; rounds let each take what it needs."""
    spec = ctx.spec

    def tune(k: int) -> None:
        finetune(model, teacher, ctx.table, policy, spec, ctx.data.train,
                 seed=seed + ROUND_SEED * k, teacher_outputs=outputs)

    tune(0)
    rounds, f = final_rounds(spec), spec.finalize
    if rounds == 1:
        return spec.finetune.steps
    objective = Objective.of(spec)
    target = _val_score(objective, teacher, ctx.data.val)
    best, kept = _val_score(objective, model, ctx.data.val), copy.deepcopy(model.state_dict())
    done = 1
    while done < rounds and best < target - f.min_gain:
        tune(done)
        done += 1
        score = _val_score(objective, model, ctx.data.val)
        gained = score - best
        if gained > 0:
            best, kept = score, copy.deepcopy(model.state_dict())
        if gained < f.min_gain:
            break
    model.load_state_dict(kept)
    return done * spec.finetune.steps


def _val_score(objective: Objective, model: nn.Module, split: Any) -> float:
    model.eval()
    with torch.inference_mode():
        return evaluate_split(objective, model, split)[0]


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
