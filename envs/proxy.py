"""The episode's accuracy proxy: cheap, deterministic, cached by policy.

With ``env.evaluator`` set to an evaluator (``supernet``, ``bn_recal``), the problem's
evaluator scores the episode instead, and only one new architecture in
``env.measure_every`` is measured on the target (``sampled_latency``).

AMC scores a policy without full fine-tuning. Here: channels removed for real, a few
distillation steps from the baseline (``env.proxy_steps``), BN statistics recalibrated
on ``env.recal_batches`` training batches, every quantized layer's weights
fake-quantized (8-bit too: the int8 runtime's effect on accuracy is small and the proxy
must stay in torch), then top-1 accuracy on the first ``env.proxy_val_size`` validation
examples. The same policy always gets the same score, so repeats cost nothing. With
``constraints`` in the spec, the bounded behaviour metrics are computed on the same
proxy model (test split, as trials do) so the reward can respect them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from slimtune.compress import quantize_weights
from slimtune.device import training_device
from slimtune.envs.problem import CompressionProblem
from slimtune.evaluators.bn import recalibrate_bn
from slimtune.measurement.latency import LatencyStats, machine_lock
from slimtune.methods.apply import prune_structure
from slimtune.objective import Objective, evaluate_split
from slimtune.policy import Policy
from slimtune.train import predict, train

CORRECTION_WINDOW = 10


class ProxyEvaluator:
    """Proxy accuracy and measured latency of policies on one problem, memoised by
    ``Policy.key()`` (share one between env copies to share the memo)."""

    def __init__(self, problem: CompressionProblem) -> None:
        self.problem = problem
        self.cache: dict[str, tuple[float, dict[str, Any]]] = {}
        # the metric groups the spec's constraints bound (none: accuracy only)
        from slimtune.evaluate import group_of

        self.groups = tuple(sorted({g for k in problem.spec.constraints
                                    if (g := group_of(k)) is not None}))
        self._ref: Any = None
        self.latencies: dict[str, LatencyStats] = {}
        self.evaluations = 0
        self.measurements = 0
        self.ratios: list[float] = []
        spec = problem.spec
        self.measure_every = spec.env.measure_period(spec.search.evaluator)
        self.unmeasured = 0  # new architectures seen by sampled_latency

    def record(self, predicted_ms: float, measured_ms: float) -> None:
        """Remember how a prediction compared with its measurement."""
        if predicted_ms > 0 and measured_ms > 0:
            self.ratios.append(measured_ms / predicted_ms)

    def correction(self) -> float:
        """The median measured/predicted ratio of the last ``CORRECTION_WINDOW`` episodes
        (1 before any), bounded to [0.5, 3] so one outlier cannot move the wall far."""
        recent = self.ratios[-CORRECTION_WINDOW:]
        return float(min(max(np.median(recent), 0.5), 3.0)) if recent else 1.0

    def latency(self, policy: Policy) -> LatencyStats:
        """The policy's architecture measured on the target (episode protocol)."""
        key = policy.key()
        if key not in self.latencies:
            self.latencies[key] = self.problem.measure(policy)
            self.measurements += 1
        return self.latencies[key]

    def sampled_latency(self, policy: Policy) -> LatencyStats | None:
        """The measurement of ``policy`` if it is measured: one new architecture in
        ``env.measure_every`` is (the first always), and one measured before stays so;
        None for the others, whose latency is the corrected prediction."""
        key = policy.key()
        if key in self.latencies:
            return self.latencies[key]
        self.unmeasured += 1
        if (self.unmeasured - 1) % self.measure_every:
            return None
        return self.latency(policy)

    def accuracy(self, policy: Policy) -> float:
        return self.evaluate(policy)[0]

    def evaluate(self, policy: Policy) -> tuple[float, dict[str, Any]]:
        """Proxy accuracy and, when the spec has ``constraints``, the constrained behaviour
        metrics of the proxy model on the test split (as trials compute them)."""
        key = policy.key()
        if key not in self.cache:
            self.cache[key] = self._evaluate(policy)
            self.evaluations += 1
        return self.cache[key]

    def _reference(self) -> Any:
        if self._ref is None:
            from slimtune.evaluate.suite import baseline_reference

            base = self.problem.baseline
            self._ref = baseline_reference(self.groups, model=base, data=self.problem.data,
                                           logits_fn=lambda x: predict(base, x))
        return self._ref

    def _evaluate(self, policy: Policy) -> tuple[float, dict[str, Any]]:
        p = self.problem
        torch.set_num_threads(p.spec.target.threads)
        with machine_lock("shared"):
            if p.evaluator is not None:
                acc = p.evaluator.score(policy)
                if not self.groups:
                    return acc, {}
                model = p.evaluator.model(policy)
                quantize_weights(model, p.table, policy, include_8bit=True)
            else:
                model = self._proxy_model(policy)
                val = p.data.val
                first = val.first(min(p.spec.env.proxy_val_size, len(val)))
                acc, _ = evaluate_split(Objective.of(p.spec), lambda x: predict(model, x), first)
                if not self.groups:
                    return acc, {}
            from slimtune.evaluate.suite import EvalInputs, evaluate_behaviour

            inputs = EvalInputs(logits=predict(model, p.data.test), data=p.data,
                                logits_fn=lambda x: predict(model, x), model=model,
                                reference=self._reference())
            return acc, evaluate_behaviour(self.groups, inputs).metrics

    def _proxy_model(self, policy: Policy) -> torch.nn.Module:
        """The proxy's network: pruned for real, a few distillation steps, BN recalibrated,
        quantized layers fake-quantized (8-bit too)."""
        p = self.problem
        spec, env, ft = p.spec, p.spec.env, p.spec.finetune
        model = prune_structure(p.baseline, p.table, policy, round_to=spec.space.round_to)
        train(model, p.data.train, steps=env.proxy_steps, batch_size=ft.batch_size,
              lr=ft.lr, seed=spec.search.seed, teacher=p.baseline if ft.distill else None,
              temperature=ft.temperature, alpha=ft.alpha,
              device=training_device(spec.train.device), objective=Objective.of(spec))
        recalibrate_bn(model, p.data.train, batches=env.recal_batches,
                       batch_size=ft.batch_size)
        quantize_weights(model, p.table, policy, include_8bit=True)
        return model
