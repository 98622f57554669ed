"""One trial: apply a policy, fine-tune, evaluate, measure latency on the target.

Order matters for cost: the compressed architecture is measured first, and a policy
whose measured latency misses the budget stops there (infeasible, never fine-tuned).
A feasible one is fine-tuned with distillation from the baseline (the recipe, with its
optional QAT and hints, is ``slimtune.finetune``'s), then the deployed
artefact (ONNX, int8 where the policy says 8 bits) is measured again and evaluated:
the reported latency and accuracy are those of the very file ``export`` hands out.
Its behaviour metrics (``slimtune.evaluate``, the spec's ``evaluate:``) come last; a
trial that breaks one of the spec's ``constraints:`` is ``infeasible`` with the bounds
it broke in ``violations``.
"""

from __future__ import annotations

import copy
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimtune.baseline import build_model
from slimtune.compress import count_macs_params
from slimtune.data import Dataset
from slimtune.deployed import Deployed
from slimtune.evaluate import violations
from slimtune.evaluate.suite import BehaviourReference
from slimtune.evaluate.trial_eval import evaluate_trial
from slimtune.export import export_onnx, quantize_onnx
from slimtune.finetune import finetune
from slimtune.layers import LayerTable
from slimtune.measurement.budget import Budget, judged
from slimtune.measurement.latency import LatencyStats, MeasureProtocol, machine_lock
from slimtune.measurement.paired import measure_paired
from slimtune.methods.apply import compressed_structure, policy_size_bytes, weights_as_deployed
from slimtune.methods.quantization import int8_layers
from slimtune.objective import Objective, evaluate_split
from slimtune.policy import Policy
from slimtune.result import TrialResult
from slimtune.spec import JobSpec

LAYERS_FILE = "layers.json"


@dataclass(frozen=True)
class PairedWith:
    """What a trial's timings are paired with: the deployed baseline (its .onnx, or its
    module for the torch runtime) and the budget the pair's figures are judged on."""

    baseline: Any
    budget: Budget


@dataclass(frozen=True)
class TrialContext:
    """Everything a trial needs, shipped once to every worker."""

    spec: JobSpec
    table: LayerTable
    baseline_state: dict[str, torch.Tensor]
    data: Dataset
    budget_ms: float
    trials_dir: Path
    protocol: MeasureProtocol = MeasureProtocol()
    # the baseline's side of the behaviour metrics (slimtune.evaluate), made once per job;
    # None: a trial computes it from the fp32 torch baseline
    reference: BehaviourReference | None = None
    # where set, every timing is paired with the baseline and judged on the pair (a
    # fractional budget on the ratio); None: on the candidate's own median against
    # ``budget_ms``
    paired: PairedWith | None = None

    def baseline_model(self) -> nn.Module:
        model = build_model(self.spec.model, num_classes=self.data.num_classes,
                            in_channels=self.data.input_shape[0],
                            input_shape=self.data.input_shape)
        model.load_state_dict(self.baseline_state)
        return model.eval()


def deploy(ctx: TrialContext, model: nn.Module, policy: Policy, onnx_path: Path) -> Deployed:
    """Export for the target: ONNX (+ int8 QDQ for low-bit layers) for a runtime that takes
    ONNX, else the torch module."""
    if not ctx.spec.target.backend.takes_onnx:
        return Deployed(model, None)
    fp32 = onnx_path.with_suffix(".fp32.onnx")
    export_onnx(model, ctx.data.input_shape, fp32)
    calib = ctx.data.train.first(ctx.spec.finetune.calibration_size)  # streamed
    quantize_onnx(fp32, onnx_path, int8_layers=int8_layers(policy, model), calibration=calib)
    fp32.unlink(missing_ok=True)
    return Deployed(model, onnx_path)


def measure(ctx: TrialContext, deployed: Deployed) -> LatencyStats:
    """Latency of ``deployed`` on the spec's target (remote via Ray, or here), cached by
    (model hash, target, runtime settings, protocol): see ``slimtune.measurement.targets``."""
    from slimtune.measurement.targets import measure_on_target

    target = ctx.spec.target
    subject: Any = deployed.model if deployed.onnx_path is None else deployed.onnx_path
    return measure_on_target(target.name, subject, runtime=target.runtime,
                             input_shape=ctx.data.input_shape, batch_size=target.batch_size,
                             threads=target.threads, protocol=ctx.protocol)


def run_trial(ctx: TrialContext, trial_id: int, policy: Policy, searcher: str) -> TrialResult:
    """Evaluate one policy; an exception inside becomes a ``failed`` result, not a crash."""
    start = time.perf_counter()
    try:
        return _run(ctx, trial_id, policy, searcher, start)
    except Exception as err:  # noqa: BLE001 - a failing trial must not end the job
        last = traceback.extract_tb(err.__traceback__)[-1]
        where = f"{Path(last.filename).name}:{last.lineno}"
        return TrialResult(trial_id=trial_id, policy=policy, state="failed",
                           budget_ms=ctx.budget_ms, searcher=searcher,
                           seconds=time.perf_counter() - start,
                           error=f"{type(err).__name__}: {err} ({where})")


def _run(ctx: TrialContext, trial_id: int, policy: Policy, searcher: str,
         start: float) -> TrialResult:
    spec = ctx.spec
    torch.set_num_threads(spec.target.threads)
    teacher = ctx.baseline_model()
    with machine_lock("shared"):
        # channels removed and rank layers factorised before the gate, so MACs and
        # latency are the compressed model's; the fine-tune recovers the SVD truncation
        model = compressed_structure(teacher, ctx.table, policy, round_to=spec.space.round_to)
        macs, params = count_macs_params(model, ctx.data.input_shape)
    base = dict(trial_id=trial_id, policy=policy, macs=macs, params=params,
                budget_ms=ctx.budget_ms, searcher=searcher)

    with tempfile.TemporaryDirectory(prefix="slimtune-gate-") as tmp:
        with machine_lock("shared"):
            gate = deploy(ctx, model, policy, Path(tmp) / "gate.onnx")
        gate_latency, gate_ratio, within = _timed(ctx, gate)
    if not within:
        size = deployed_size_bytes(ctx, model, policy)
        return TrialResult(**base, state="infeasible", stage="measured",
                           latency_ms=gate_latency.median_ms,
                           latency=gate_latency.to_dict(), latency_ratio=gate_ratio,
                           size_bytes=size, seconds=time.perf_counter() - start)

    out = ctx.trials_dir / str(trial_id)
    with machine_lock("shared"):
        # the spec's recipe with the policy's searched part; QAT, hints, Deep Compression
        finetune(model, teacher, ctx.table, policy, spec, ctx.data.train,
                 seed=spec.search.seed + trial_id)
    result = evaluate_deployed(ctx, model, policy, out, timing=lambda d: _timed(ctx, d))
    return replace(TrialResult(**base, state="ok"), **result,
                   seconds=time.perf_counter() - start)


#: how a deployed model is timed: (its latency, its ratio to the baseline or None, within
#: the budget)
Timing = Callable[["Deployed"], tuple[LatencyStats, float | None, bool]]


def _timed(ctx: TrialContext, deployed: Deployed) -> tuple[LatencyStats, float | None, bool]:
    """``deployed`` timed paired with the baseline where ``ctx.paired`` says so, else on
    its own against ``budget_ms``."""
    if ctx.paired is not None:
        paired = measure_paired(deployed.onnx_path or deployed.model, ctx.paired.baseline,
                                ctx.spec.target, ctx.data.input_shape)
        return judged(paired, ctx.paired.budget)
    latency = measure(ctx, deployed)
    return latency, None, latency.median_ms <= ctx.budget_ms


def evaluate_deployed(ctx: TrialContext, model: nn.Module, policy: Policy, out: Path, *,
                      timing: Timing) -> dict[str, Any]:
    """Deploy a trained compressed ``model`` into ``out`` (ONNX, int8 where the policy
    says; the files ``export`` hands out), time it, evaluate it on val and test and on
    the behaviour metrics, check the constraints. Returns the TrialResult fields."""
    spec = ctx.spec
    out.mkdir(parents=True, exist_ok=True)
    with machine_lock("shared"):
        weights_as_deployed(model, ctx.table, policy, include_8bit=not spec.target.backend.int8)
        deployed = deploy(ctx, model, policy, out / "model.onnx")
    latency, ratio, within = timing(deployed)
    with machine_lock("shared"):
        threads = spec.target.threads
        run = deployed.runner(threads)
        objective = Objective.of(spec)
        val, _ = evaluate_split(objective, run, ctx.data.val)
        test, test_logits = evaluate_split(objective, run, ctx.data.test)
        behaviour = evaluate_trial(ctx, deployed, model, policy, test_logits, out)
    save_trial_model(out, model, policy, ctx)
    if deployed.onnx_path is None:  # module target (torch): an fp32 ONNX export for deployment
        export_onnx(model, ctx.data.input_shape, out / "model.onnx")
    broken = violations({"accuracy": val, **behaviour.metrics}, spec.constraints)
    return dict(state="ok" if within and not broken else "infeasible", stage="final",
                accuracy=val, metrics=behaviour.metrics, violations=tuple(broken),
                test_accuracy=test, latency_ms=latency.median_ms, latency=latency.to_dict(),
                latency_ratio=ratio, size_bytes=policy_size_bytes(model, ctx.table, policy))


def deployed_size_bytes(ctx: TrialContext, model: nn.Module, policy: Policy) -> int:
    """``size_bytes`` of a row whose ``model`` has the policy's structure but not yet its
    trained weights (it failed the latency gate): the size its deployed weights would have,
    counted as a finished row's is (Deep Compression's container when the policy uses it;
    its zeros and shared weights are applied to a copy first)."""
    if policy.sparsity or policy.clusters:
        model = weights_as_deployed(copy.deepcopy(model), ctx.table, policy,
                                    include_8bit=not ctx.spec.target.backend.int8)
    return policy_size_bytes(model, ctx.table, policy)


def save_layer_table(out: Path, table: LayerTable) -> None:
    """``layers.json`` beside a ``policy.json``: the features that carry it to other models."""
    import json

    from slimtune.policy import write_text_atomic

    write_text_atomic(out / LAYERS_FILE, json.dumps(table.to_dict()) + "\n")


def save_trial_model(out: Path, model: nn.Module, policy: Policy, ctx: TrialContext) -> None:
    """``policy.json`` and ``model.pt``: the state dict and what rebuilds the architecture.

    ``model.pt`` holds only tensors and plain values, so it loads with
    ``torch.load(weights_only=True)`` (see ``slimtune.results.outputs.load_compressed``).
    """
    policy.save(out / "policy.json")
    save_layer_table(out, ctx.table)
    spec = ctx.spec
    torch.save({"state_dict": model.state_dict(), "policy": policy.to_dict(),
                "model": spec.model.model_dump(by_alias=True, mode="json", exclude_none=True),
                "round_to": spec.space.round_to, "input_shape": list(ctx.data.input_shape),
                "num_classes": ctx.data.num_classes}, out / "model.pt")
