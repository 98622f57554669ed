"""NVIDIA ModelOpt FastNAS as a column of ``search_quality.py compare --fastnas`` (issue 17).

FastNAS (``modelopt.torch.prune``, mode ``fastnas``) prunes the job's own trained baseline
(slimtune's cache) to a FLOPs bound: a sensitivity map (the validation-accuracy drop of
every width choice of every prunable channel group, each sub-network scored as
``bn_recal`` scores a candidate: see ``_FastNAS``) built once and kept in a checkpoint,
then a binary search under ``constraints={"flops": ...}``.

The FLOPs bound that matches slimtune's budget is found by bisection over FLOPs fractions
(the first probe at the budget's latency fraction): each result is deployed fp32 and int8
(slimtune's export and static QDQ path, int8 on the layers the job's int8 reference runs
int8) and timed paired with the baseline (``slimtune.measurement.paired``), and it meets the budget
when the faster of the two does; as the job's candidates, each architecture is judged on
its timings pooled (a bisection that lands on it again times it again). The largest
fraction that met is kept, BN recalibrated, fine-tuned by the recipe slimtune's finalized
models get (``final_recipe``: the same steps, distillation from the baseline,
``slimtune.finetune``), deployed the faster way, timed paired and evaluated on the full
val and test splits (``evaluate_deployed``, as the final stage does), its final timing
pooled with its probes' as a job's final rows are with their candidates'.

Not a slimtune dependency: needs ``nvidia-modelopt`` and ``torchprofile`` (install lines
in benchmarks/README.md).
"""

from __future__ import annotations

import contextlib
import copy
import io
import time
import warnings
from pathlib import Path
from typing import Any

#: FastNAS's channel and feature divisor (its default, 32, leaves only ResNet-20's 64-wide
#: stage searchable)
DIVISOR = 8


def missing() -> str | None:
    """None when FastNAS can run here, else the one line that says what to install."""
    try:
        import modelopt.torch.prune  # noqa: F401
        import torchprofile  # noqa: F401  # FastNAS's flops constraint counts with it
    except ImportError as err:
        name = getattr(err, "name", None) or str(err)
        return (f"--fastnas needs nvidia-modelopt and torchprofile, which are not slimtune "
                f"dependencies ({name} does not import): see benchmarks/README.md, "
                f"'FastNAS column'")
    return None


def rules(divisor: int = DIVISOR) -> dict[str, Any]:
    """The ``fastnas`` mode config: the default width ratios (5% steps), ``divisor``."""
    ratios = tuple(0.05 * i for i in range(1, 21))
    conv = {"*": {"channels_ratio": ratios, "kernel_size": (), "channel_divisor": divisor}}
    feat = {"*": {"features_ratio": ratios, "feature_divisor": divisor}}
    return {"nn.Conv2d": conv, "nn.Linear": feat, "nn.BatchNorm2d": feat}


def fastnas_row(spec, outcome, *, probes: int = 5, say=print) -> dict[str, Any]:
    """The ``fastnas`` entry of a compare row, for the finished job ``outcome`` of ``spec``
    (its ``out_dir``, ``baseline`` figures, ``budget_ms`` and ``results``). Everything it
    writes goes to ``out_dir/fastnas/``."""
    import torch

    from slimtune.baseline import baseline_key, cache_dir, prepare_baseline
    from slimtune.evaluators.bn import recalibrate_bn
    from slimtune.finetune import finetune
    from slimtune.layers import count_macs_params
    from slimtune.measurement.latency import machine_lock
    from slimtune.measurement.paired import PairedTimings, measure_paired
    from slimtune.pipeline.finalize import final_recipe
    from slimtune.pipeline.measure import Budget, judged, paired_timing
    from slimtune.policy import Policy
    from slimtune.trial import TrialContext, evaluate_deployed
    from slimtune.validate import check_inputs

    start = time.perf_counter()
    out = Path(outcome.out_dir) / "fastnas"
    out.mkdir(parents=True, exist_ok=True)
    with machine_lock("shared"):  # compute: never beside another process's timing
        checked = check_inputs(spec)  # the job's data and layer table, as the job loaded them
        data, table = checked.data, checked.table
        cached = cache_dir() / "baselines" / f"{baseline_key(spec, data)}.pt"
        if spec.model.weights is None and not cached.is_file():  # the job cached it
            raise RuntimeError(f"the job's baseline is not in slimtune's cache ({cached.name})")
        baseline = prepare_baseline(spec, data)  # the very weights the job searched
        base_macs, base_params = count_macs_params(baseline.model, data.input_shape)
    torch.set_num_threads(spec.target.threads)
    final = final_recipe(spec, len(data.train))
    ctx = TrialContext(spec=final, table=table, baseline_state=baseline.model.state_dict(),
                       data=data, budget_ms=outcome.budget_ms, trials_dir=out)
    fraction = spec.budget.latency_fraction
    budget = Budget(ms=outcome.budget_ms, fraction=fraction,
                    baseline_ms=float(outcome.baseline["latency_ms"]))
    reference: Any = Path(outcome.out_dir) / "baseline" / "model.onnx"
    if not spec.target.backend.takes_onnx:
        reference = baseline.model
    deployments = {"fp32": Policy()}
    int8 = [r.policy for r in outcome.results if r.reference == "int8"]
    if int8 and spec.target.backend.int8:  # the layers the int8 reference runs int8
        deployments["int8"] = int8[0]

    search = _FastNAS(baseline.model, data, spec, out / "search.pth")
    # as the job times its candidates: one paired timing a decision, pooled by what is
    # timed (here architecture and deployment); the final timing pools with them
    timings = PairedTimings()

    def key(arch: tuple, name: str) -> str:
        return f"{name}:{arch}"

    def probe(f: float) -> tuple[dict[str, Any], Any]:
        """FastNAS at FLOPs <= ``f``, each deployment timed paired: (its entry, model)."""
        with machine_lock("shared"):
            try:
                model, seconds = search.prune(f)
            except ValueError as err:  # below the smallest sub-network's FLOPs
                if "NOT all constraints" not in str(err):
                    raise
                return {"flops_fraction": f, "met": False, "error": "below the FLOPs of "
                        "the smallest sub-network FastNAS can choose"}, None
            macs, params = count_macs_params(model, data.input_shape)
        arch = tuple(tuple(t.shape) for t in model.state_dict().values())
        verdicts: dict[str, tuple[float, bool]] = {}  # deployment -> (pooled ratio, met)
        for name, policy in deployments.items():  # chosen before: timed again, pooled
            with machine_lock("shared"):
                deployed = _deploy(ctx, model, policy, out / "probe" / f"{name}.onnx")
            paired = measure_paired(deployed.onnx_path or deployed.model, reference,
                                    spec.target, data.input_shape)
            _, ratio, within = judged(timings.add(key(arch, name), paired), budget)
            verdicts[name] = (ratio, within)
        ratios = {k: v[0] for k, v in verdicts.items()}
        best = min(ratios, key=ratios.get)
        return {"flops_fraction": f, "macs_fraction": macs / base_macs,
                "params_fraction": params / base_params, "ratios": ratios, "deploy": best,
                "met": verdicts[best][1], "fastnas_seconds": seconds}, model

    ladder: list[dict[str, Any]] = []
    chosen: tuple[float, Any, str] | None = None  # (fraction, model, deployment)
    lo, hi = 0.0, 1.0  # bisection: the answer lies in (lo, hi)
    f = fraction if fraction is not None else budget.ms / budget.baseline_ms
    for _ in range(probes):
        entry, model = probe(f)
        ladder.append(entry)
        if model is None:
            say(f"fastnas: FLOPs <= {f:.1%}: below FastNAS's smallest sub-network")
        else:
            say(f"fastnas: FLOPs <= {f:.1%}: MACs {entry['macs_fraction']:.1%}, paired "
                + ", ".join(f"{k} {v:.3f}" for k, v in entry["ratios"].items())
                + f": {'meets' if entry['met'] else 'misses'} the budget")
        if entry["met"] and (chosen is None or f > chosen[0]):
            chosen = (f, model, entry["deploy"])
        if entry["met"] or model is None:
            lo = f
        else:
            hi = f
        f = 0.5 * (lo + hi)
    row: dict[str, Any] = {"probes": ladder, "divisor": DIVISOR,
                           "fastnas_seconds": search.seconds,
                           "sensitivity_seconds": search.map_seconds}
    if chosen is None:
        row.update(val=None, test=None, seconds=time.perf_counter() - start,
                   error="no probed FLOPs fraction met the budget")
        return row

    f, model, deploy_as = chosen
    policy = deployments[deploy_as]
    trial_id = max((r.trial_id for r in outcome.results), default=-1) + 1
    t0 = time.perf_counter()
    teacher = ctx.baseline_model()
    with machine_lock("shared"):
        recalibrate_bn(model, data.train, batches=spec.scoring.recal_batches,
                       batch_size=spec.scoring.batch_size)  # as bn_recal's start has it
        finetune(model, teacher, table, policy, final, data.train,
                 seed=spec.search.seed + trial_id)
    arch = tuple(tuple(t.shape) for t in model.state_dict().values())
    earlier = timings.of(key(arch, deploy_as))  # the probes' timings of this very model
    fields = evaluate_deployed(ctx, model, policy, out / "final",
                               timing=paired_timing(ctx, reference, budget, earlier))
    with machine_lock("shared"):
        macs, params = count_macs_params(model, data.input_shape)
    (out / "final" / "subnet.txt").write_text(_shapes(model))
    row.update(trial=trial_id, val=fields["accuracy"], test=fields["test_accuracy"],
               latency_ratio=fields["latency_ratio"], latency_ms=fields["latency_ms"],
               feasible=fields["state"] == "ok", finetune_steps=final.finetune.steps,
               deploy=deploy_as, flops_fraction=f, macs_fraction=macs / base_macs,
               params_fraction=params / base_params, size_bytes=fields["size_bytes"],
               finalize_seconds=time.perf_counter() - t0,
               seconds=time.perf_counter() - start)
    return row


class _FastNAS:
    """``mtp.prune`` on copies of the baseline, one FLOPs bound a call; the sensitivity
    map is built by the first call and read back from ``checkpoint`` by the others.

    The score function scores a sub-network as ``bn_recal`` scores a candidate: exported
    (a plain pruned copy), BN recalibrated on ``scoring.recal_batches`` training batches,
    top-1 on the first ``scoring.val_size`` validation images. FastNAS's own BN
    recalibration is not used: once it has sorted the channels by importance, modelopt
    0.47 slices every sorted BN's running statistics by an index tensor, a copy, so the
    recalibration writes nowhere and the sub-networks are scored with the baseline's
    statistics (the quickstart ResNet-20 with ``layer1.0.conv1`` halved scored 0.41 so,
    0.865 exported and recalibrated, on 200 validation images; unsorted both 0.755)."""

    def __init__(self, baseline, data, spec, checkpoint: Path) -> None:
        import torch

        from slimtune.evaluators.bn import recalibrate_bn
        from slimtune.train import accuracy, predict

        self.baseline, self.checkpoint = baseline, checkpoint
        self.dummy = torch.zeros(1, *data.input_shape)
        val = data.val.first(spec.scoring.val_size)  # the subset bn_recal scores on
        train, scoring = data.train, spec.scoring

        def score(model) -> float:
            import modelopt.torch.nas as mtn

            sub = mtn.export(copy.deepcopy(model))
            recalibrate_bn(sub, train, batches=scoring.recal_batches,
                           batch_size=scoring.batch_size)
            return accuracy(predict(sub, val), val.y)

        self.score = score
        self.seconds = 0.0
        self.map_seconds: float | None = None  # the call that built the sensitivity map

    def prune(self, fraction: float):
        import modelopt.torch.prune as mtp

        model = copy.deepcopy(self.baseline)
        builds_map = not self.checkpoint.is_file()
        t0 = time.perf_counter()
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                # no data_loader: its BN calibration queue would be unused (see above)
                warnings.filterwarnings("ignore", "modelopt data queue not filled")
                model, _ = mtp.prune(
                    model, mode=[("fastnas", rules())],
                    constraints={"flops": f"{100 * fraction:.4f}%"}, dummy_input=self.dummy,
                    config={"score_func": self.score, "checkpoint": str(self.checkpoint),
                            "verbose": False})
        finally:
            seconds = time.perf_counter() - t0
            self.seconds += seconds
            if builds_map and self.checkpoint.is_file():
                self.map_seconds = seconds
        return model.eval(), seconds


def _deploy(ctx, model, policy, path: Path):
    from slimtune.trial import deploy

    path.parent.mkdir(parents=True, exist_ok=True)
    return deploy(ctx, model, policy, path)


def _shapes(model) -> str:
    return "".join(f"{k} {tuple(v.shape)}\n" for k, v in model.state_dict().items()
                   if k.endswith("weight"))
