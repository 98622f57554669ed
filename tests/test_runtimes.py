"""Runtimes as plug-ins: the registry, a toy runtime through a real trial, OpenVINO vs ORT,
and what each runtime puts in the latency cache key."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from slimtune.errors import SpecError
from slimtune.export import export_onnx, onnx_predict, onnx_session, quantize_onnx
from slimtune.measurement.latency import MeasureProtocol, measure_model
from slimtune.measurement.targets import _runtime_versions, cache_key, measure_interleaved
from slimtune.models.zoo import ZOO
from slimtune.policy import Policy
from slimtune.runtimes import RUNTIMES, Runtime, get_runtime, register
from slimtune.spec import parse_spec
from slimtune.trial import run_trial
from tests.jobs import tiny_job, tiny_trial_context

TINY = MeasureProtocol(warmup=2, rounds=3, repeats=5)
SHAPE = (1, 16, 16)


# --- the registry --------------------------------------------------------------------------


def test_an_unknown_runtime_in_a_spec_is_one_line_naming_the_registered_ones(tmp_path):
    with pytest.raises(SpecError) as err:
        parse_spec(tiny_job(tmp_path, target={"runtime": "tensorrt"}))
    message = str(err.value)
    assert "\n" not in message
    assert message == ("target.runtime: unknown runtime 'tensorrt'; valid: "
                       + ", ".join(sorted(RUNTIMES)))
    assert {"onnxruntime", "openvino", "torch"} <= set(RUNTIMES)


def test_the_builtin_runtimes_say_what_they_consume():
    assert get_runtime("onnxruntime").takes_onnx and get_runtime("onnxruntime").int8
    assert get_runtime("openvino").takes_onnx and get_runtime("openvino").int8
    torch_rt = get_runtime("torch")
    assert not torch_rt.takes_onnx and not torch_rt.int8


# --- a toy runtime, registered here, through a real trial ---------------------------------


class ToyRuntime(Runtime):
    """Times ONNX Runtime on what deploy hands it, and keeps what that was."""

    name = "toy"
    seen: list[Any] = []

    def versions(self) -> str:
        return "toy 0.1"

    def prepare(self, model: Path | nn.Module, input_shape: tuple[int, ...], batch_size: int,
                threads: int) -> Callable[[], None]:
        ToyRuntime.seen.append(model if isinstance(model, nn.Module)
                               else {n.op_type for n in onnx.load(str(model)).graph.node})
        return get_runtime("onnxruntime" if self.takes_onnx else "torch").prepare(
            model, input_shape, batch_size, threads)


class ToyModuleRuntime(ToyRuntime):
    name = "toy-module"
    consumes = "module"


@pytest.fixture
def toys() -> Iterator[None]:
    for cls in (ToyRuntime, ToyModuleRuntime):
        register(cls)
    ToyRuntime.seen.clear()
    yield
    for cls in (ToyRuntime, ToyModuleRuntime):
        RUNTIMES.pop(cls.name)


@pytest.mark.usefixtures("toys")
@pytest.mark.parametrize("runtime", ["toy", "toy-module"])
def test_a_runtime_registered_from_a_test_runs_a_trial(tmp_path, runtime):
    ctx = tiny_trial_context(tmp_path, TINY)
    ctx = replace(ctx, spec=ctx.spec.with_sections(target={"runtime": runtime}))  # validated
    layer = ctx.table.layers[0].name
    result = run_trial(ctx, 1, Policy(bits={layer: 8}), "test")
    assert result.state == "ok", result.error
    assert result.latency["runtime"] == runtime and result.latency_ms > 0
    assert len(ToyRuntime.seen) == 2  # the latency gate and the final model
    for subject in ToyRuntime.seen:
        if runtime == "toy":  # deploy exported ONNX with the 8-bit layer as QDQ
            assert "QuantizeLinear" in subject and "Conv" in subject
        else:  # deploy handed the module itself
            assert isinstance(subject, nn.Module)
    assert (ctx.trials_dir / "1" / "model.onnx").is_file()


# --- OpenVINO -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zoo_onnx(tmp_path_factory) -> tuple[Path, Path]:
    """An untrained mobilenet_se as fp32 ONNX and all-int8 QDQ ONNX."""
    tmp = tmp_path_factory.mktemp("ov")
    torch.manual_seed(0)
    model = ZOO["mobilenet_se"]().eval()
    fp32 = export_onnx(model, SHAPE, tmp / "fp32.onnx")
    layers = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    calib = np.random.default_rng(0).standard_normal((32, *SHAPE), dtype=np.float32)
    return fp32, quantize_onnx(fp32, tmp / "int8.onnx", int8_layers=layers, calibration=calib)


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_openvino_runs_the_ort_file_with_ort_outputs(zoo_onnx, kind):
    pytest.importorskip("openvino")
    from slimtune.runtimes.openvino_cpu import compile_onnx

    path = zoo_onnx[0] if kind == "fp32" else zoo_onnx[1]
    x = np.random.default_rng(1).standard_normal((8, *SHAPE), dtype=np.float32)
    expected = onnx_predict(onnx_session(path, threads=1), x)
    got = compile_onnx(path, SHAPE, 8, threads=1)(x)[0]
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=0, atol=(1e-4 if kind == "fp32" else 0.05)
                               * scale)
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.9

    stats = measure_model(path, "openvino", SHAPE, batch_size=8, threads=1, protocol=TINY)
    assert (stats.runtime, stats.threads, stats.batch_size) == ("openvino", 1, 8)
    assert stats.samples == 15 and stats.rounds == 3 and stats.median_ms > 0


def test_openvino_measures_interleaved_like_ort(zoo_onnx):
    pytest.importorskip("openvino")
    items = [(p, SHAPE) for p in zoo_onnx]
    for runtime in ("onnxruntime", "openvino"):
        stats = measure_interleaved(items, runtime=runtime, batch_size=2, threads=1,
                                    protocol=TINY)
        assert [s.runtime for s in stats] == [runtime, runtime]
        assert all(len(s.round_medians_ms) == 3 and s.median_ms > 0 for s in stats)


def _signal_stack() -> tuple[int, bool]:
    """The calling thread's alternate signal stack: its address, and whether it is mapped."""
    import ctypes

    from slimtune.runtimes.openvino_cpu import _SignalStack

    now = _SignalStack()
    assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(now)) == 0
    sp = now.ss_sp or 0
    with open("/proc/self/maps") as maps:
        spans = [line.split()[0].split("-") for line in maps]
    return sp, any(int(lo, 16) <= sp < int(hi, 16) for lo, hi in spans)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sigaltstack, /proc")
def test_compiled_models_destroyed_out_of_order_leave_the_signal_stack_alone(zoo_onnx):
    """OpenVINO's compile_model installs a signal stack of its own on the thread and puts
    back the previous one when that model is destroyed: out of order, the thread pointed
    at freed memory and the next handled signal killed the suite with SIGSEGV."""
    pytest.importorskip("openvino")
    import gc

    from slimtune.runtimes.openvino_cpu import compile_onnx

    before = _signal_stack()
    first = compile_onnx(zoo_onnx[0], SHAPE, 2, threads=1)
    second = compile_onnx(zoo_onnx[1], SHAPE, 2, threads=1)
    assert _signal_stack() == before
    del first
    gc.collect()
    del second
    gc.collect()
    assert _signal_stack() == before and before[1] in (True, before[0] == 0)


def test_an_openvino_target_runs_a_trial(tmp_path):
    pytest.importorskip("openvino")
    ctx = tiny_trial_context(tmp_path, TINY)
    ctx = replace(ctx, spec=ctx.spec.with_sections(target={"runtime": "openvino"}))
    result = run_trial(ctx, 2, Policy(bits={ctx.table.layers[0].name: 8}), "test")
    assert result.state == "ok", result.error
    assert result.latency["runtime"] == "openvino" and result.latency_ms > 0


def test_openvino_missing_is_one_line_with_the_install_hint(tmp_path, monkeypatch):
    import sys

    from slimtune.errors import UserInputError

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(UserInputError, match=r"slimtune\[openvino\]"):
        get_runtime("openvino").versions()
    from slimtune.validate import check_inputs

    spec = parse_spec(tiny_job(tmp_path, target={"runtime": "openvino"}))
    with pytest.raises(UserInputError, match=r"^the openvino runtime needs OpenVINO: pip"):
        check_inputs(spec)  # before any data or model is loaded


def test_openvino_refuses_a_module():
    pytest.importorskip("openvino")
    from slimtune.errors import UserInputError

    with pytest.raises(UserInputError, match="openvino runtime measures an .onnx file"):
        measure_model(nn.Linear(2, 2), "openvino", (2,), 1, 1, TINY)


# --- the cache key ------------------------------------------------------------------------


def test_the_cache_key_carries_the_runtimes_own_library_version():
    assert _runtime_versions("torch") == f"torch {torch.__version__}"
    import onnxruntime

    assert _runtime_versions("onnxruntime") == f"onnxruntime {onnxruntime.__version__}"
    assert "torch" not in _runtime_versions("onnxruntime")
    openvino = pytest.importorskip("openvino")
    assert _runtime_versions("openvino") == f"openvino {openvino.__version__}"
    assert "torch" not in _runtime_versions("openvino")


def test_a_runtime_version_change_changes_the_cache_key(monkeypatch):
    pytest.importorskip("openvino")
    from slimtune.runtimes.openvino_cpu import OpenVinoRuntime

    args = dict(target="local", runtime="openvino", threads=1, batch_size=1,
                input_shape=SHAPE, protocol=TINY)
    before = cache_key("d" * 64, **args)
    monkeypatch.setattr(OpenVinoRuntime, "versions", lambda self: "openvino 0.0")
    assert cache_key("d" * 64, **args) != before
    assert cache_key("d" * 64, **{**args, "runtime": "onnxruntime"}) != before
