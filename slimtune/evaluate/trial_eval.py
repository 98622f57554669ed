"""The behaviour metrics of one trial: glue between ``slimtune.trial`` and the suite."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimtune.evaluate.suite import Behaviour, BehaviourReference, EvalInputs, baseline_reference
from slimtune.evaluate.suite import evaluate_behaviour as _evaluate
from slimtune.train import predict

SALIENCY_FILE = "saliency.npy"  # in trials/ID/ and baseline/: the maps kept for the report


def reference_for(ctx: Any) -> BehaviourReference:
    """The job's reference, or (a context built without one, as in tests) the fp32 torch
    baseline's, computed here."""
    if ctx.reference is not None:
        return ctx.reference
    model = ctx.baseline_model()
    return baseline_reference(ctx.spec.metric_groups, model=model,
                              logits_fn=lambda x: predict(model, x), data=ctx.data)


def gradient_model(ctx: Any, model: nn.Module, policy: Any) -> nn.Module:
    """A copy of the fine-tuned model with every quantised layer fake-quantised, 8-bit
    ones included (ONNX Runtime runs those int8; autograd needs a torch module)."""
    from slimtune.compress import quantize_weights

    twin = copy.deepcopy(model).eval()
    return quantize_weights(twin, ctx.table, policy, include_8bit=True)


def evaluate_trial(ctx: Any, deployed: Any, model: nn.Module, policy: Any,
                   test_logits: torch.Tensor, out: Path) -> Behaviour:
    """Run the spec's metric groups on a deployed trial; saliency maps go to ``out``."""
    groups = ctx.spec.metric_groups
    if not groups:
        return Behaviour({}, {})
    threads = ctx.spec.target.threads
    inputs = EvalInputs(logits=test_logits, data=ctx.data,
                        logits_fn=lambda x: deployed.logits(x, threads),
                        model=gradient_model(ctx, model, policy), reference=reference_for(ctx))
    behaviour = _evaluate(groups, inputs)
    if "saliency_maps" in behaviour.arrays:
        np.save(out / SALIENCY_FILE, behaviour.arrays["saliency_maps"].numpy())
    return behaviour


def job_reference(ctx: Any, model: nn.Module, baseline_dir: Path) -> BehaviourReference:
    """The reference of a job, once, from the deployed baseline (``baseline_dir/model.onnx``;
    the torch model for gradients), with the baseline's own metrics; the baseline's
    saliency maps and their inputs go to ``baseline_dir/saliency.npz`` for the report."""
    from slimtune.deployed import Deployed
    from slimtune.evaluate.saliency import SALIENCY_KEPT

    onnx = baseline_dir / "model.onnx"
    deployed = Deployed(model, onnx if ctx.spec.target.backend.takes_onnx else None)
    threads = ctx.spec.target.threads
    ref = baseline_reference(ctx.spec.metric_groups, model=model.eval(),
                             logits_fn=lambda x: deployed.logits(x, threads), data=ctx.data)
    if ref.saliency is not None:
        test = ctx.data.test
        kept = test.head(SALIENCY_KEPT)
        np.savez(baseline_dir / "saliency.npz", inputs=kept.x.numpy(), labels=kept.y.numpy(),
                 maps=ref.saliency[:SALIENCY_KEPT].numpy())
    return ref
