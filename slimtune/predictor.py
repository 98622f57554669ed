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

import hashlib
import json
import random
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from slimtune.baseline import cache_dir
from slimtune.depth import under
from slimtune.latency import MeasureProtocol
from slimtune.layers import LayerInfo, LayerTable
from slimtune.policy import Policy, write_text_atomic
from slimtune.runtimes import get_runtime
from slimtune.shapes import ChannelMap
from slimtune.spaces import SearchSpace
from slimtune.spec import JobSpec

#: the predicted dimensions: widths, bit-widths and depth (Deep Compression, low rank and
#: the recipe do not change a layer's configuration)
_PLAIN = {"sparsity": (), "clusters": (), "rank": (), "distill": (), "temperature": (),
          "alpha": ()}

LUT_VERSION = 3  # 3: entries are the fastest of interleaved rounds
#: One-layer models are fast; a lighter protocol keeps building the table to about a minute.
LUT_PROTOCOL = MeasureProtocol(warmup=5, rounds=4, repeats=10, min_seconds_per_round=0.05)
#: Whole-model measurements for calibration and error reports.
MODEL_PROTOCOL = MeasureProtocol(warmup=10, rounds=5, repeats=20, min_seconds_per_round=0.1)
OPSET = 18
FEATURES = ("fp32_sum", "int8_sum", "boundary", "mixed", "const")


# --- layer configurations and their one-layer models ----------------------------------------


@dataclass(frozen=True)
class LayerConfig:
    """One layer as the runtime sees it: everything its latency depends on."""

    kind: str  # conv | depthwise | linear
    in_channels: int
    out_channels: int
    groups: int
    kernel: int
    stride: int
    padding: int
    in_hw: tuple[int, int]
    int8: bool

    @property
    def out_hw(self) -> tuple[int, int]:
        if self.kind == "linear":
            return (1, 1)
        h, w = self.in_hw
        return tuple((s + 2 * self.padding - self.kernel) // self.stride + 1  # type: ignore
                     for s in (h, w))

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.kind == "linear":
            return (self.in_channels,)
        return (self.in_channels, *self.in_hw)

    def activations(self) -> int:
        """Elements per example entering and leaving the layer."""
        return (self.in_channels * self.in_hw[0] * self.in_hw[1]
                + self.out_channels * self.out_hw[0] * self.out_hw[1])

    def key(self, runtime: str, threads: int, batch_size: int) -> str:
        h, w = self.in_hw
        return (f"{runtime}/t{threads}/b{batch_size}/{self.kind}/{self.in_channels}x"
                f"{self.out_channels}/g{self.groups}/k{self.kernel}s{self.stride}p{self.padding}"
                f"/{h}x{w}/{'int8' if self.int8 else 'fp32'}")


def _conv_onnx(cfg: LayerConfig) -> onnx.ModelProto:
    """A one-layer ONNX model: Conv(+Relu) in fp32, or its QDQ int8 form (as quantize_onnx
    writes it: u8 activations, per-channel s8 weights, int32 bias), dynamic batch."""
    rng = np.random.default_rng(0)
    linear = cfg.kind == "linear"
    if linear:
        w_shape = [cfg.out_channels, cfg.in_channels]
        x_shape: list[Any] = ["batch", cfg.in_channels]
        y_shape: list[Any] = ["batch", cfg.out_channels]
    else:
        w_shape = [cfg.out_channels, cfg.in_channels // cfg.groups, cfg.kernel, cfg.kernel]
        x_shape = ["batch", cfg.in_channels, *cfg.in_hw]
        y_shape = ["batch", cfg.out_channels, *cfg.out_hw]
    weight = rng.standard_normal(w_shape).astype(np.float32) * 0.1
    bias = rng.standard_normal(cfg.out_channels).astype(np.float32) * 0.1
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def init(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(array, name))
        return name

    if cfg.int8:
        xs, xz = init("x_scale", np.float32(0.05)), init("x_zp", np.uint8(128))
        init("y_scale", np.float32(0.05))
        init("y_zp", np.uint8(0))
        w_scale = (np.abs(weight).reshape(cfg.out_channels, -1).max(axis=1) / 63).astype(
            np.float32)
        wq = np.clip(np.round(weight / w_scale.reshape(-1, *[1] * (weight.ndim - 1))), -63, 63)
        init("w_q", wq.astype(np.int8))
        init("w_scale", w_scale)
        init("w_zp", np.zeros(cfg.out_channels, np.int8))
        b_scale = (w_scale * 0.05).astype(np.float32)
        init("b_q", np.round(bias / b_scale).astype(np.int32))
        init("b_scale", b_scale)
        init("b_zp", np.zeros(cfg.out_channels, np.int32))
        nodes += [
            helper.make_node("QuantizeLinear", ["input", xs, xz], ["x_q"]),
            helper.make_node("DequantizeLinear", ["x_q", xs, xz], ["x_dq"]),
            helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], axis=0),
            helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zp"], ["b"], axis=0),
        ]
        x, w, b, y = "x_dq", "w", "b", "y_f"
    else:
        x, w, b, y = "input", init("w", weight), init("b", bias), "y_f"
    if linear:
        nodes.append(helper.make_node("Gemm", [x, w, b], [y], transB=1))
    else:
        p = cfg.padding
        # int8: the ReLU disappears into the output quantiser (zero point 0), as ORT does it
        conv_out = y if cfg.int8 else "conv"
        nodes.append(helper.make_node("Conv", [x, w, b], [conv_out],
                                      kernel_shape=[cfg.kernel] * 2, strides=[cfg.stride] * 2,
                                      pads=[p, p, p, p], group=cfg.groups))
        if not cfg.int8:
            nodes.append(helper.make_node("Relu", ["conv"], [y]))
    if cfg.int8:
        nodes += [helper.make_node("QuantizeLinear", [y, "y_scale", "y_zp"], ["y_q"]),
                  helper.make_node("DequantizeLinear", ["y_q", "y_scale", "y_zp"], ["output"])]
    else:
        nodes.append(helper.make_node("Identity", [y], ["output"]))
    graph = helper.make_graph(
        nodes, "layer", [helper.make_tensor_value_info("input", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, y_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def _torch_layer(cfg: LayerConfig) -> nn.Module:
    """The eager module of one layer as the models run it: conv-BN-ReLU, or a Linear."""
    if cfg.kind == "linear":
        return nn.Linear(cfg.in_channels, cfg.out_channels).eval()
    return nn.Sequential(
        nn.Conv2d(cfg.in_channels, cfg.out_channels, cfg.kernel, cfg.stride, cfg.padding,
                  groups=cfg.groups, bias=False),
        nn.BatchNorm2d(cfg.out_channels), nn.ReLU()).eval()


# --- the lookup table ---------------------------------------------------------------------


def target_key(spec: JobSpec) -> str:
    """File-name-safe key of (target, runtime, threads, batch); ``local`` names this host."""
    t = spec.target
    where = f"local-{socket.gethostname()}" if t.is_local else t.name
    raw = f"{where}_{t.runtime}_t{t.threads}_b{t.batch_size}"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in raw)


@dataclass
class LayerLUT:
    """Measured milliseconds per layer configuration on one target, cached on disk."""

    path: Path
    target: str
    runtime: str
    threads: int
    batch_size: int
    protocol: MeasureProtocol = LUT_PROTOCOL
    entries: dict[str, float] = field(default_factory=dict)
    measured_now: int = 0
    seconds: float = 0.0

    @classmethod
    def for_spec(cls, spec: JobSpec, protocol: MeasureProtocol = LUT_PROTOCOL) -> LayerLUT:
        t = spec.target
        path = cache_dir() / "latency_lut" / f"{target_key(spec)}.json"
        lut = cls(path, t.name, t.runtime, t.threads, t.batch_size, protocol)
        lut.entries.update(lut._read())
        return lut

    def _read(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if data.get("version") != LUT_VERSION or data.get("protocol") != asdict(self.protocol):
            return {}
        return {k: float(v) for k, v in data.get("entries", {}).items()}

    def save(self) -> None:
        """Merge with what another process may have written meanwhile, then write atomically."""
        merged = {**self._read(), **self.entries}
        write_text_atomic(self.path, json.dumps({
            "version": LUT_VERSION, "target": self.target, "runtime": self.runtime,
            "threads": self.threads, "batch_size": self.batch_size,
            "protocol": asdict(self.protocol), "entries": merged}, indent=0, sort_keys=True))

    def key(self, cfg: LayerConfig) -> str:
        return cfg.key(self.runtime, self.threads, self.batch_size)

    def ensure(self, configs: Iterable[LayerConfig]) -> int:
        """Measure the configurations not in the table yet; returns how many were measured."""
        from slimtune.targets import measure_many_on_target

        missing = {self.key(c): c for c in configs if self.key(c) not in self.entries}
        if not missing:
            return 0
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="slimtune-lut-") as tmp:
            items: list[tuple[Any, tuple[int, ...]]] = []
            takes_onnx = get_runtime(self.runtime).takes_onnx
            for i, cfg in enumerate(missing.values()):
                if not takes_onnx:
                    items.append((_torch_layer(cfg), cfg.input_shape))
                else:
                    path = Path(tmp) / f"layer{i}.onnx"
                    onnx.save(_conv_onnx(cfg), str(path))
                    items.append((path, cfg.input_shape))
            stats = measure_many_on_target(self.target, items, runtime=self.runtime,
                                           batch_size=self.batch_size, threads=self.threads,
                                           protocol=self.protocol, interleave=True)
        for key, s in zip(missing, stats, strict=True):
            # load from other processes only ever adds time: the fastest round is the
            # best estimate of the layer's own cost (rounds are interleaved over entries)
            self.entries[key] = min(s.round_medians_ms)
        self.measured_now += len(missing)
        self.seconds += time.perf_counter() - start
        self.save()
        return len(missing)


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
        return self._runs_int8 and policy.bits_of(layer) <= 8

    def configs(self, space: SearchSpace) -> list[LayerConfig]:
        """Every layer configuration ``space`` can produce (deduplicated)."""
        found: set[LayerConfig] = set()
        for li in self._layers:
            groups = sorted(set(self.cmap.in_loss[li.name]) | set(self.cmap.out_loss[li.name]))
            choices = [space.ratios.get(g, (0.0,)) for g in groups]
            bits = {b <= 8 and self._runs_int8 for b in space.bits.get(li.name, (32,))}
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
        points = _read_calibration(spec, table, policies, protocol)
        todo = [p for p in policies if p.key() not in points]
        if todo:
            say(f"latency predictor: measuring {len(todo)} calibration policies")
            measured = measure_policies(spec, model, table, todo, calibration_x=calibration_x,
                                        protocol=protocol)
            # fastest of the interleaved rounds: the model's cost without others' load
            points.update({p.key(): min(m.round_medians_ms)
                           for p, m in zip(todo, measured, strict=True)})
            _write_calibration(spec, table, points, protocol)
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


# --- policies and their measurements --------------------------------------------------------


def random_policies(space: SearchSpace, n: int, *, seed: int = 0) -> list[Policy]:
    """``n`` policies with every choice drawn uniformly (what random search proposes)."""
    rng = random.Random(seed)
    dists = space.distributions()
    return [space.policy_from_params({k: rng.choice(d.choices)  # type: ignore[attr-defined]
                                      for k, d in dists.items()}) for _ in range(n)]


def calibration_set(space: SearchSpace, n_random: int, *, seed: int = 0) -> list[Policy]:
    """Uniform anchors (every ratio allowed, fp32 and all-int8) plus random policies."""
    ratios = sorted({r for rs in space.ratios.values() for r in rs})
    picks = [ratios[0], ratios[len(ratios) // 2], ratios[-1]]
    if len(ratios) > 3:
        picks.append(ratios[len(ratios) // 4])
    bits = sorted({b for bs in space.bits.values() for b in bs})
    anchors = [space.uniform(r, b) for r in sorted(set(picks)) for b in {bits[0], bits[-1]}]
    out: dict[str, Policy] = {p.key(): p for p in anchors}
    for p in random_policies(space, n_random, seed=seed + 1000):
        out.setdefault(p.key(), p)
    return list(out.values())


def _calibration_path(spec: JobSpec, table: LayerTable, protocol: MeasureProtocol) -> Path:
    h = hashlib.sha256(json.dumps([LUT_VERSION, table.signature(), spec.space.round_to,
                                   asdict(protocol)])
                       .encode()).hexdigest()[:12]
    return cache_dir() / "latency_lut" / f"{target_key(spec)}.calib-{h}.json"


def _read_calibration(spec: JobSpec, table: LayerTable, policies: Sequence[Policy],
                      protocol: MeasureProtocol) -> dict[str, float]:
    try:
        data = json.loads(_calibration_path(spec, table, protocol).read_text())
    except (OSError, ValueError):
        return {}
    wanted = {p.key() for p in policies}
    return {k: float(v) for k, v in data.get("measured_ms", {}).items() if k in wanted}


def _write_calibration(spec: JobSpec, table: LayerTable, points: Mapping[str, float],
                       protocol: MeasureProtocol) -> None:
    path = _calibration_path(spec, table, protocol)
    try:
        old = json.loads(path.read_text()).get("measured_ms", {})
    except (OSError, ValueError):
        old = {}
    write_text_atomic(path, json.dumps({"signature": table.signature(),
                                        "measured_ms": {**old, **points}}, sort_keys=True))


def measure_policies(spec: JobSpec, model: nn.Module, table: LayerTable,
                     policies: Sequence[Policy], *, calibration_x: np.ndarray | None = None,
                     protocol: MeasureProtocol = MODEL_PROTOCOL,
                     interleave: bool = True) -> list[Any]:
    """Prune, deploy (ONNX + int8 QDQ, or the torch module) and measure each policy on the
    target, as a trial's latency gate does; returns LatencyStats.

    ``interleave`` (default) measures the policies round-robin, so a burst of load on a
    shared machine is spread over all of them (not cached); otherwise each is measured
    alone through the latency cache, exactly as a trial does."""
    from slimtune.compress import compressed_structure
    from slimtune.export import export_onnx, quantize_onnx
    from slimtune.latency import machine_lock
    from slimtune.targets import measure_many_on_target, measure_on_target
    from slimtune.trial import int8_layers

    t = spec.target
    shape = table.input_shape
    if calibration_x is None:
        n = spec.finetune.calibration_size
        calibration_x = np.random.default_rng(0).standard_normal((n, *shape)).astype(np.float32)
    subjects: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="slimtune-policies-") as tmp:
        for i, policy in enumerate(policies):
            with machine_lock("shared"):
                pruned = compressed_structure(model, table, policy,
                                              round_to=spec.space.round_to)
                subject: Any = pruned
                if t.backend.takes_onnx:
                    fp32 = export_onnx(pruned, shape, Path(tmp) / f"p{i}.fp32.onnx")
                    subject = quantize_onnx(fp32, Path(tmp) / f"p{i}.onnx",
                                            int8_layers=int8_layers(policy, pruned),
                                            calibration=calibration_x)
            subjects.append(subject)
        if interleave:
            return measure_many_on_target(t.name, [(s, shape) for s in subjects],
                                          runtime=t.runtime, batch_size=t.batch_size,
                                          threads=t.threads, protocol=protocol, interleave=True)
        return [measure_on_target(t.name, s, runtime=t.runtime, input_shape=shape,
                                  batch_size=t.batch_size, threads=t.threads, protocol=protocol)
                for s in subjects]


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
