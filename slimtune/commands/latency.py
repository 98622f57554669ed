"""``slimtune latency JOB``: measure the baseline (or a policy's model) on the job's target.

Uses the job's runtime, threads, batch size and target (``local``, or a Ray node carrying
``target:<name>``), the trial's measurement protocol and the latency cache. The model has
the spec's weights if it names any, else untrained weights: latency does not depend on
the weight values. ``--predictor-report`` builds the per-layer latency predictor for the
job and measures ``--policies`` random policies to report its error distribution.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from slimtune.errors import UserInputError

NAME = "latency"
HELP = "measure latency on the job's target; or report the latency predictor's error"
ORDER = 25


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="job spec YAML file, or a built-in job name")
    p.add_argument("--policy", type=Path, help="policy.json: measure this policy's model")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--predictor-report", action="store_true",
                   help="build the latency predictor and report its error on random policies")
    p.add_argument("--policies", type=int, default=20,
                   help="random policies measured by --predictor-report (default 20)")
    p.add_argument("--address", help="Ray cluster address, for a remote target "
                                     "(default: RAY_ADDRESS)")
    p.add_argument("--no-cache", action="store_true", help="measure even if a figure is cached")


def _say(message: str) -> None:
    print(f"slimtune: {message}", file=sys.stderr, flush=True)


def _load_policy(path: Path):
    from slimtune.policy import Policy

    if not path.is_file():
        raise UserInputError(f"{path}: no such policy file")
    try:
        return Policy.load(path)
    except (ValueError, TypeError, AttributeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserInputError(f"{path}: not a valid policy file ({first})") from None


def run(args: argparse.Namespace) -> int:
    import os

    from slimtune.spec import load_spec

    spec = load_spec(args.job)
    if args.policies < 1:
        raise UserInputError("--policies must be at least 1")
    if args.policy is not None and args.predictor_report:
        raise UserInputError("give --policy or --predictor-report, not both")
    policy = _load_policy(args.policy) if args.policy is not None else None
    if args.no_cache:
        os.environ["SLIMTUNE_LATENCY_CACHE"] = "0"
    warnings.filterwarnings("ignore")

    import torch

    from slimtune.measurement.targets import connect_target
    from slimtune.methods.apply import check_policy
    from slimtune.policy import Policy
    from slimtune.validate import check_inputs

    torch.manual_seed(0)  # untrained weights, the same in every process: the cache key holds
    checked = check_inputs(spec)
    if policy is not None:
        check_policy(checked.table, policy)
    connect_target(spec.target.name, spec.target.threads, args.address)
    try:
        if args.predictor_report:
            out = _predictor_report(spec, checked, args.policies)
        else:
            out = _measure(spec, checked, policy or Policy(), args.policy)
    finally:
        if not spec.target.is_local:
            from slimtune.ray_local import stop_ray

            stop_ray()
    text = out.pop("_text")
    print(json.dumps(out, sort_keys=True) if args.json else text)
    return 0


def _measure(spec, checked, policy, policy_path: Path | None) -> dict[str, Any]:
    from slimtune.compress import count_macs_params
    from slimtune.measurement.latency import machine_lock
    from slimtune.methods.apply import compressed_structure
    from slimtune.methods.quantization import WeightQuantization
    from slimtune.trial import TrialContext, deploy, measure

    table, data = checked.table, checked.data
    ctx = TrialContext(spec=spec, table=table, baseline_state=checked.model.state_dict(),
                       data=data, budget_ms=float("inf"), trials_dir=Path())
    with tempfile.TemporaryDirectory(prefix="slimtune-latency-") as tmp:
        with machine_lock("shared"):
            model = compressed_structure(checked.model, table, policy,
                                         round_to=spec.space.round_to)
            macs, params = count_macs_params(model, data.input_shape)
            deployed = deploy(ctx, model, policy, Path(tmp) / "model.onnx")
        stats = measure(ctx, deployed)
    what = f"policy {policy_path}" if policy_path else "baseline"
    out = {**stats.to_dict(), "model": spec.model.describe(), "subject": what,
           "weights": "spec" if spec.model.weights else "untrained",
           "input_shape": list(data.input_shape), "macs": macs, "params": params,
           "int8_layers": len(WeightQuantization.int8_layers(policy))
           if spec.target.backend.int8 else 0}
    t = spec.target
    cached = " (cached: measured earlier with the same model, target and settings)" \
        if stats.cached else ""
    out["_text"] = "\n".join([
        f"{spec.model.describe()} {what} on target {t.name}: {t.runtime}, {t.threads} threads, "
        f"batch {t.batch_size}, input {'x'.join(map(str, data.input_shape))}{cached}",
        f"  median {stats.median_ms:.3f} ms   p10 {stats.p10_ms:.3f}   p90 {stats.p90_ms:.3f}   "
        f"cv {stats.cv:.3f}",
        f"  {stats.samples} samples in {stats.rounds} rounds "
        f"({stats.rejected_rounds} re-measured); round medians "
        + " ".join(f"{m:.3f}" for m in stats.round_medians_ms),
        f"  {macs / 1e6:.2f}M MACs, {params / 1e3:.1f}k params"])
    return out


def _predictor_report(spec, checked, n: int) -> dict[str, Any]:
    import time

    from slimtune.measurement.predictor import build_predictor, predictor_report

    start = time.perf_counter()
    predictor = build_predictor(spec, checked.model, checked.table, progress=_say)
    built = time.perf_counter() - start
    _say(f"predictor ready in {built:.0f} s; measuring {n} random policies")
    report = predictor_report(predictor, checked.model, n)
    met = report.within_10pct >= 0.9
    out = {"predictor": predictor.to_dict(), "report": report.to_dict(),
           "within_10pct": report.within_10pct, "policies": report.n,
           "target_met": met, "build_seconds": round(built, 1),
           "runtime": spec.target.runtime, "threads": spec.target.threads,
           "batch_size": spec.target.batch_size, "target": spec.target.name}
    out["_text"] = "\n".join([
        predictor.describe(),
        f"held-out random policies: {report.describe()}",
        f"target (>= 90% within +-10%): {'met' if met else 'NOT met'}"])
    return out
