"""A latency predictor: a per-layer lookup table measured on the target, plus a fitted overhead.

nn-Meter-style: every layer configuration the search space can produce (channels in and
out, kernel, stride, groups, input size, fp32 or int8) is timed once on the target as a
one-layer model with the job's runtime, threads and batch size. A policy's prediction is
a linear model over the table's sums, fitted by least squares to whole models measured on
the target::

    predicted = a * sum(fp32 layers' times) + b * sum(int8 layers' times)
              + c * (activations crossing an int8/fp32 boundary, mixed models only)
              + d * [any int8 layer] + e

The boundary term is there because ONNX Runtime runs an int8 chain in NHWC with QLinear
kernels: every fp32 layer inside it pays a dequantise, a layout change and a quantise,
which a one-layer model cannot show. The predictor is a filter (the env's budget wall,
skipping candidates that cannot be feasible); every reported figure is still measured.

Cost: ``predict_ms`` is a sum over layers of dict look-ups (~0.1 ms for ResNet-20).
The table is cached in ``$SLIMTUNE_CACHE/latency_lut/<target key>.json`` (shared by
every model on that target) and the calibration measurements next to it, per model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import product
from typing import Any

import numpy as np
from torch import nn

from slimtune.depth import under
from slimtune.layers import LayerInfo, LayerTable
from slimtune.measurement.latency import MeasureProtocol
from slimtune.measurement.layer_lut import (
    LUT_PROTOCOL,
    LUT_VERSION,
    LayerConfig,
    LayerLUT,
    target_key,
)
from slimtune.measurement.policy_timing import (
    MODEL_PROTOCOL,
    calibration_set,
    measure_policies,
    random_policies,
    read_calibration,
    write_calibration,
)
from slimtune.measurement.shapes import ChannelMap
from slimtune.methods.quantization import runs_int8
from slimtune.policy import Policy
from slimtune.spaces import SearchSpace
from slimtune.spec import JobSpec

__all__ = ["LUT_PROTOCOL", "LUT_VERSION", "MODEL_PROTOCOL", "LatencyPredictor", "LayerConfig",
           "LayerLUT", "PredictorReport", "build_predictor", "calibration_set", "error_report",
           "measure_policies", "predictor_report", "random_policies", "target_key"]

#: the predicted dimensions: widths, bit-widths and depth (Deep Compression, low rank and
#: the recipe do not change a layer's configuration)
_PLAIN = {"sparsity": (), "clusters": (), "rank": (), "distill": (), "temperature": (),
          "alpha": ()}

FEATURES = ("fp32_sum", "int8_sum", "boundary", "mixed", "const")


# --- the predictor ------------------------------------------------------------------------


def _padding(model: nn.Module, table: LayerTable) -> dict[str, int]:
    modules = dict(model.named_modules())
    out = {}
    for li in table.layers:
        m = modules.get(li.name)
        pad = getattr(m, "padding", 0)
        out[li.name] = int(pad[0]) if isinstance(pad, tuple) else (
            li.kernel // 2 if pad == "same" else int(pad or 0))
    return out


@dataclass(frozen=True)
class PredictorReport:
    """How far predictions fall from measurements, in percent of the measurement."""

    n: int
    within_10pct: float  # fraction of policies predicted within +-10%
    median_abs_pct: float
    p90_abs_pct: float
    max_abs_pct: float
    mean_pct: float  # signed: > 0 means the predictor overestimates
    rows: tuple[tuple[float, float], ...]  # (predicted, measured) per policy

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows": [{"predicted_ms": p, "measured_ms": m}
                                         for p, m in self.rows]}

    def describe(self) -> str:
        return (f"{self.within_10pct:.0%} of {self.n} policies within +-10% "
                f"(median |error| {self.median_abs_pct:.1f}%, p90 {self.p90_abs_pct:.1f}%, "
                f"max {self.max_abs_pct:.1f}%, mean signed {self.mean_pct:+.1f}%)")


def error_report(pairs: Sequence[tuple[float, float]]) -> PredictorReport:
    """Summarise (predicted_ms, measured_ms) pairs."""
    if not pairs:
        raise ValueError("no (predicted, measured) pairs")
    err = np.array([(p - m) / m * 100 for p, m in pairs])
    absolute = np.abs(err)
    return PredictorReport(
        n=len(pairs), within_10pct=float(np.mean(absolute <= 10.0 + 1e-9)),
        median_abs_pct=float(np.median(absolute)), p90_abs_pct=float(np.percentile(absolute, 90)),
        max_abs_pct=float(absolute.max()), mean_pct=float(err.mean()),
        rows=tuple((float(p), float(m)) for p, m in pairs))


class LatencyPredictor:
    """Predicted latency (ms, the target's median) of any policy of one model on one target.

    Build it with :func:`build_predictor` (or :meth:`for_job`). ``predict_ms`` never
    measures unless a policy needs a layer configuration outside the search space, which
    is then timed once and added to the table.
    """

    def __init__(self, spec: JobSpec, table: LayerTable, cmap: ChannelMap,
                 padding: Mapping[str, int], lut: LayerLUT,
                 calibration: Sequence[tuple[Policy, float]], *, name: str = "") -> None:
        self.spec, self.table, self.cmap, self.lut = spec, table, cmap, lut
        self.name = name or spec.model.describe()
        self.runtime = spec.target.runtime
        self._runs_int8 = spec.target.backend.int8
        self._padding = dict(padding)
        self._layers = table.layers
        self._by_layer: dict[tuple[str, int, int, bool], float] = {}
        self.calibration = list(calibration)
        self.coef = np.zeros(len(FEATURES))
        self.loo_report: PredictorReport | None = None
        if self.calibration:
            self.fit(self.calibration)

    # layer configurations -----------------------------------------------------------------

    def _config(self, li: LayerInfo, c_in: int, c_out: int, groups: int, int8: bool) -> LayerConfig:
        return LayerConfig(kind=li.kind, in_channels=c_in, out_channels=c_out, groups=groups,
                           kernel=li.kernel, stride=li.stride, padding=self._padding[li.name],
                           in_hw=li.in_hw, int8=int8 and self._runs_int8)

    def _int8(self, policy: Policy, layer: str) -> bool:
        return self._runs_int8 and runs_int8(policy.bits_of(layer))

    def configs(self, space: SearchSpace) -> list[LayerConfig]:
        """Every layer configuration ``space`` can produce (deduplicated)."""
        found: set[LayerConfig] = set()
        for li in self._layers:
            groups = sorted(set(self.cmap.in_loss[li.name]) | set(self.cmap.out_loss[li.name]))
            choices = [space.ratios.get(g, (0.0,)) for g in groups]
            bits = {runs_int8(b) and self._runs_int8 for b in space.bits.get(li.name, (32,))}
            for ratios in product(*choices):
                shape = self.cmap.shapes(Policy(prune=dict(zip(groups, ratios, strict=True))))
                s = shape[li.name]
                for int8 in bits:
                    found.add(self._config(li, s.in_channels, s.out_channels, s.groups, int8))
        return sorted(found, key=lambda c: c.key(self.runtime, 0, 0))

    def _layer_ms(self, li: LayerInfo, c_in: int, c_out: int, groups: int, int8: bool) -> float:
        fast = (li.name, c_in, c_out, int8)
        ms = self._by_layer.get(fast)
        if ms is None:
            cfg = self._config(li, c_in, c_out, groups, int8)
            key = self.lut.key(cfg)
            if key not in self.lut.entries:  # outside the space: time it once, lazily
                self.lut.ensure([cfg])
            ms = self._by_layer[fast] = self.lut.entries[key]
        return ms

    # prediction ---------------------------------------------------------------------------

    def features(self, policy: Policy) -> np.ndarray:
        """The regression features of ``policy`` (see the module docstring)."""
        shapes = self.cmap.shapes(policy)
        fp32 = int8_sum = 0.0
        fp32_act = int8_act = 0
        for li in self._layers:
            if under(li.name, policy.skip):  # its block is dropped: it costs nothing
                continue
            s = shapes[li.name]
            int8 = self._int8(policy, li.name)
            ms = self._layer_ms(li, s.in_channels, s.out_channels, s.groups, int8)
            h, w = li.in_hw
            act = s.in_channels * h * w + s.out_channels * h * w // (li.stride * li.stride)
            if int8:
                int8_sum += ms
                int8_act += act
            else:
                fp32 += ms
                fp32_act += act
        mixed = 1.0 if int8_act else 0.0
        # activations (millions, whole batch) of fp32 layers inside an int8 graph
        boundary = mixed * fp32_act * self.spec.target.batch_size / 1e6
        return np.array([fp32, int8_sum, boundary, mixed, 1.0])

    def lut_sum_ms(self, policy: Policy) -> float:
        """The plain table sum (no fitted overhead)."""
        f = self.features(policy)
        return float(f[0] + f[1])

    def predict_ms(self, policy: Policy) -> float:
        """Predicted median latency of ``policy`` on the target, in ms."""
        value = float(self.features(policy) @ self.coef)
        return max(value, 1e-6)

    # fitting --------------------------------------------------------------------------------

    def _solve(self, points: Sequence[tuple[Policy, float]]) -> np.ndarray:
        x = np.array([self.features(p) for p, _ in points])
        y = np.array([m for _, m in points])
        # relative error is what matters: weight each row by 1/measured
        wgt = 1.0 / np.maximum(y, 1e-9)
        # a little ridge toward "the table sum is the latency" keeps few points stable
        prior = np.array([1.0, 1.0, 0.0, 0.0, 0.0])
        lam = 0.05
        a = np.vstack([x * wgt[:, None], lam * np.eye(len(prior)) * np.sqrt(len(y))])
        b = np.concatenate([y * wgt, lam * prior * np.sqrt(len(y))])
        coef, *_ = np.linalg.lstsq(a, b, rcond=None)
        return coef

    def fit(self, points: Sequence[tuple[Policy, float]]) -> None:
        """Fit the overhead terms to measured (policy, ms); leave-one-out error kept."""
        self.calibration = list(points)
        self.coef = self._solve(self.calibration)
        if len(points) >= 3:
            pairs = []
            for i, (policy, measured) in enumerate(points):
                coef = self._solve([pt for j, pt in enumerate(points) if j != i])
                pairs.append((max(float(self.features(policy) @ coef), 1e-6), measured))
            self.loo_report = error_report(pairs)

    def refit(self, job_points: Sequence[tuple[Policy, float]], *, weight: int = 3) -> None:
        """Refit the terms on the calibration plus a job's own measurements (counted
        ``weight`` times); the calibration and its error report stay as they were."""
        self.coef = self._solve(self.calibration + weight * list(job_points))

    def describe(self) -> str:
        """One line: what it is and how well it predicted its own calibration policies."""
        t = self.spec.target
        head = (f"latency predictor for {self.name} on {t.name} ({t.runtime}, {t.threads} "
                f"threads, batch {t.batch_size}): {len(self.lut.entries)} layer entries, "
                f"fitted on {len(self.calibration)} measured policies")
        if self.loo_report is None:
            return head + " (no calibration error: too few policies)"
        return head + "; leave-one-out " + self.loo_report.describe()

    def to_dict(self) -> dict[str, Any]:
        return {"coefficients": dict(zip(FEATURES, map(float, self.coef), strict=True)),
                "calibration_policies": len(self.calibration),
                "lut_entries": len(self.lut.entries), "lut_path": str(self.lut.path),
                "lut_measured_now": self.lut.measured_now,
                "lut_seconds": round(self.lut.seconds, 2),
                "leave_one_out": self.loo_report.to_dict() if self.loo_report else None,
                "describe": self.describe()}

    @classmethod
    def for_job(cls, spec: JobSpec, model: nn.Module, table: LayerTable, *,
                calibration_policies: int = 12, seed: int = 0,
                calibration: Sequence[Policy] | None = None,
                calibration_x: np.ndarray | None = None,
                protocol: MeasureProtocol = MODEL_PROTOCOL,
                lut_protocol: MeasureProtocol = LUT_PROTOCOL,
                progress: Callable[[str], None] | None = None) -> LatencyPredictor:
        """Build (or load from the cache) the table and the fit for ``model`` on the target.

        The fit uses ``calibration`` if given, else uniform anchors plus
        ``calibration_policies`` random policies of the job's space (seeded).
        """
        say = progress or (lambda _msg: None)
        space = _probed(spec, model, table)
        cmap = ChannelMap.probe(model, table, round_to=spec.space.round_to)
        lut = LayerLUT.for_spec(spec, lut_protocol)
        predictor = cls(spec, table, cmap, _padding(model, table), lut, [])
        configs = predictor.configs(space)
        say(f"latency table: {len(configs)} layer configurations, "
            f"{sum(lut.key(c) not in lut.entries for c in configs)} to measure")
        lut.ensure(configs)
        policies = list(calibration) if calibration is not None else calibration_set(
            space, calibration_policies, seed=seed)
        points = read_calibration(spec, table, policies, protocol)
        todo = [p for p in policies if p.key() not in points]
        if todo:
            say(f"latency predictor: measuring {len(todo)} calibration policies")
            measured = measure_policies(spec, model, table, todo, calibration_x=calibration_x,
                                        protocol=protocol)
            # fastest of the interleaved rounds: the model's cost without others' load
            points.update({p.key(): min(m.round_medians_ms)
                           for p, m in zip(todo, measured, strict=True)})
            write_calibration(spec, table, points, protocol)
        predictor.fit([(p, points[p.key()]) for p in policies])
        return predictor


def _probed(spec: JobSpec, model: nn.Module, table: LayerTable) -> SearchSpace:
    """The job's channel and bit choices without the groups preflight's probe leaves out
    (the probe's answer is kept per architecture in a process: free after preflight)."""
    from slimtune.probe import job_probe

    space = SearchSpace.for_spec(spec.space.model_copy(update=_PLAIN), table, model)
    return space.without(groups=job_probe(spec, model, space).removed)


def build_predictor(spec: JobSpec, model: nn.Module, table: LayerTable,
                    **kwargs: Any) -> LatencyPredictor:
    """The predictor for ``model`` (unpruned) on ``spec``'s target; cached on disk.

    Input shape and layers come from ``table``. Keyword arguments go to
    :meth:`LatencyPredictor.for_job`.
    """
    return LatencyPredictor.for_job(spec, model, table, **kwargs)


def predictor_report(predictor: LatencyPredictor, model: nn.Module, n: int, *, seed: int = 1,
                     protocol: MeasureProtocol = MODEL_PROTOCOL) -> PredictorReport:
    """Measure ``n`` random policies (not the calibration ones) and compare with predictions."""
    spec, table = predictor.spec, predictor.table
    space = _probed(spec, model, table)
    seen = {p.key() for p, _ in predictor.calibration}
    policies = [p for p in random_policies(space, n * 2, seed=seed + 7919)
                if p.key() not in seen][:n]
    measured = measure_policies(spec, model, table, policies, protocol=protocol)
    return error_report([(predictor.predict_ms(p), m.median_ms)
                         for p, m in zip(policies, measured, strict=True)])
