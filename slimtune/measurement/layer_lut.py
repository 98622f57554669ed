"""The per-layer latency table: every layer configuration a search space can produce,
timed once on the target as a one-layer model (the predictor's terms,
:mod:`slimtune.measurement.predictor`); cached per target in ``$SLIMTUNE_CACHE/latency_lut/``."""

from __future__ import annotations

import json
import socket
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from slimtune.baseline import cache_dir
from slimtune.measurement.latency import MeasureProtocol
from slimtune.policy import write_text_atomic
from slimtune.runtimes import get_runtime
from slimtune.spec import JobSpec

LUT_VERSION = 3  # 3: entries are the fastest of interleaved rounds
#: One-layer models are fast; a lighter protocol keeps building the table to about a minute.
LUT_PROTOCOL = MeasureProtocol(warmup=5, rounds=4, repeats=10, min_seconds_per_round=0.05)
OPSET = 18



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
        from slimtune.measurement.targets import measure_many_on_target

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


