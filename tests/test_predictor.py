"""The latency predictor: one-layer models, the lookup table and its cache, the fit."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import slimtune.measurement.layer_lut as layer_lut
import slimtune.measurement.predictor as predictor_mod
from slimtune.export import ORT_DISABLED_OPTIMIZERS
from slimtune.layers import build_layer_table
from slimtune.measurement.latency import MeasureProtocol
from slimtune.measurement.predictor import (
    LatencyPredictor,
    LayerConfig,
    build_predictor,
    error_report,
    random_policies,
)
from slimtune.models import build_builtin
from slimtune.policy import Policy
from slimtune.spaces import SearchSpace
from slimtune.spec import parse_spec
from tests.jobs import tiny_job

LIGHT = MeasureProtocol(warmup=1, rounds=2, repeats=3)
SHAPE = (1, 16, 16)


def _optimized_ops(model: onnx.ModelProto, tmp_path: Path) -> list[str]:
    src, opt = tmp_path / "m.onnx", tmp_path / "m.opt.onnx"
    onnx.save(model, str(src))
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(opt)
    options.log_severity_level = 3
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"],
                         disabled_optimizers=set(ORT_DISABLED_OPTIMIZERS))
    return [n.op_type for n in onnx.load(str(opt)).graph.node]


@pytest.mark.parametrize("int8", [False, True])
def test_one_layer_models_run_as_the_real_ones_do(int8: bool, tmp_path: Path) -> None:
    cfg = LayerConfig("conv", 8, 16, 1, 3, 2, 1, (16, 16), int8)
    model = layer_lut._conv_onnx(cfg)
    onnx.checker.check_model(model)
    ops = _optimized_ops(model, tmp_path)
    # int8: the QLinearConv that quantize_onnx's QDQ layers become; fp32: a plain Conv
    assert ("QLinearConv" in ops) == int8 and ("Conv" in ops) == (not int8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = session.run(None, {"input": np.zeros((3, *cfg.input_shape), np.float32)})[0]
    assert y.shape == (3, 16, *cfg.out_hw) == (3, 16, 8, 8)
    assert "QGemm" in _optimized_ops(
        layer_lut._conv_onnx(LayerConfig("linear", 16, 10, 1, 1, 1, 0, (1, 1), True)),
        tmp_path)


def test_config_keys_name_every_setting() -> None:
    key = LayerConfig("depthwise", 32, 32, 32, 3, 2, 1, (14, 14), True).key("onnxruntime", 2, 64)
    for part in ("onnxruntime", "t2", "b64", "depthwise", "32x32", "g32", "k3s2p1", "14x14",
                 "int8"):
        assert part in key


def test_error_report_arithmetic() -> None:
    report = error_report([(1.05, 1.0), (0.8, 1.0), (2.0, 2.0), (1.1, 1.0)])
    assert report.n == 4 and report.within_10pct == 0.75
    assert report.max_abs_pct == pytest.approx(20.0)
    assert report.mean_pct == pytest.approx((5 - 20 + 0 + 10) / 4)
    assert "75% of 4 policies within +-10%" in report.describe()


@pytest.fixture
def tiny(tmp_path: Path):
    spec = parse_spec(tiny_job(tmp_path, target={"batch_size": 2},
                               space={"prune_ratios": [0.0, 0.25, 0.5], "round_to": 2}))
    torch.manual_seed(0)
    model = build_builtin("tiny_resnet", 10, 1).eval()
    table = build_layer_table(model, SHAPE, round_to=2)
    return spec, model, table


def test_the_table_covers_the_space_and_is_cached(tiny, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    spec, model, table = tiny
    space = SearchSpace.from_table(table, spec.space.prune_ratios, spec.space.bits,
                                   round_to=2)
    calibration = [space.uniform(0.0, 32), space.uniform(0.5, 8), space.uniform(0.25, 32)]
    pred = build_predictor(spec, model, table, calibration=calibration, lut_protocol=LIGHT,
                           protocol=LIGHT)
    n_configs = len(pred.configs(space))
    assert pred.lut.measured_now == n_configs == len(pred.lut.entries) > len(table.layers)
    assert (tmp_path / "cache" / "latency_lut").is_dir()
    assert list((tmp_path / "cache" / "latency_lut").glob("*calib-*.json"))
    # every policy the space can produce is predicted from the table, nothing measured lazily
    for policy in random_policies(space, 25, seed=3):
        assert pred.predict_ms(policy) > 0
    assert pred.lut.measured_now == n_configs
    # a second build measures nothing: the table and the calibration come from disk
    monkeypatch.setattr(predictor_mod, "measure_policies",
                        lambda *a, **k: pytest.fail("calibration measured again"))
    again = build_predictor(spec, model, table, calibration=calibration, lut_protocol=LIGHT,
                            protocol=LIGHT)
    assert again.lut.measured_now == 0
    assert np.allclose(again.coef, pred.coef)
    assert "leave-one-out" in again.describe() and "policies within +-10%" in again.describe()


def test_configs_match_the_really_pruned_layers(tiny) -> None:
    spec, model, table = tiny
    from slimtune.measurement.shapes import ChannelMap
    from slimtune.methods.apply import prune_structure

    pred = LatencyPredictor(spec, table, ChannelMap.probe(model, table, round_to=2),
                            predictor_mod._padding(model, table),
                            predictor_mod.LayerLUT.for_spec(spec, LIGHT), [])
    space = SearchSpace.from_table(table, spec.space.prune_ratios, spec.space.bits, round_to=2)
    configs = set(pred.configs(space))
    for policy in random_policies(space, 5, seed=1):
        pruned = dict(prune_structure(model, table, policy, round_to=2).named_modules())
        for li in table.layers:
            m = pruned[li.name]
            conv = isinstance(m, torch.nn.Conv2d)
            real = LayerConfig(li.kind, m.in_channels if conv else m.in_features,
                               m.out_channels if conv else m.out_features,
                               m.groups if conv else 1, li.kernel, li.stride,
                               m.padding[0] if conv else 0, li.in_hw,
                               policy.bits_of(li.name) <= 8)
            assert real in configs


def test_the_fit_recovers_known_overheads_and_predicts_fast(tiny) -> None:
    """Calibration points made from known coefficients are fitted back to within 2%."""
    spec, model, table = tiny
    from slimtune.measurement.shapes import ChannelMap

    lut = predictor_mod.LayerLUT.for_spec(spec, LIGHT)
    pred = LatencyPredictor(spec, table, ChannelMap.probe(model, table, round_to=2),
                            predictor_mod._padding(model, table), lut, [])
    space = SearchSpace.from_table(table, spec.space.prune_ratios, spec.space.bits, round_to=2)
    rng = np.random.default_rng(0)
    for cfg in pred.configs(space):  # a synthetic table: no timing in this test
        lut.entries[lut.key(cfg)] = float(rng.uniform(0.01, 0.2))
    truth = np.array([1.3, 0.7, 0.02, 0.05, 0.4])
    policies = random_policies(space, 30, seed=2) + [space.uniform(0.0, 32)]
    pred.fit([(p, float(pred.features(p) @ truth)) for p in policies])
    for p in random_policies(space, 20, seed=9):
        assert pred.predict_ms(p) == pytest.approx(float(pred.features(p) @ truth), rel=0.02)
    assert pred.loo_report is not None and pred.loo_report.within_10pct == 1.0
    start = time.perf_counter()
    for p in policies:
        pred.predict_ms(p)
    assert (time.perf_counter() - start) / len(policies) < 0.005  # the env calls it a lot


def test_torch_runtime_tables_time_eager_modules(tiny, tmp_path: Path) -> None:
    spec, model, table = tiny
    spec = parse_spec({**spec.model_dump(by_alias=True, mode="json"),
                       "target": {"runtime": "torch", "threads": 1, "batch_size": 1}})
    pred = build_predictor(spec, model, table, calibration_policies=2, lut_protocol=LIGHT,
                           protocol=LIGHT)
    assert all("/int8" not in k and k.startswith("torch/t1/b1/") for k in pred.lut.entries)
    policy = Policy(prune={"conv1": 0.5}, bits={"layer1.conv1": 8})
    assert pred.features(policy)[1] == 0.0  # torch runs every layer fp32
    assert pred.predict_ms(policy) > 0
