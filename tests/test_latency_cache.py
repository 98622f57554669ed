"""The latency cache: keyed by the exported model, the target and the runtime settings."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from slimtune.export import export_onnx
from slimtune.measurement import targets
from slimtune.measurement.latency import MeasureProtocol
from slimtune.measurement.targets import cache_path, measure_on_target, subject_digest
from slimtune.models import build_builtin

SHAPE = (1, 16, 16)
TINY = MeasureProtocol(warmup=1, rounds=2, repeats=3)


@pytest.fixture(autouse=True)
def _quiet_machine(monkeypatch):
    """CI machines are busy; the cache's load rule is tested on its own below."""
    monkeypatch.setattr(targets, "machine_load", lambda: 0.0)


def test_figures_taken_under_load_are_not_cached(onnx_file, monkeypatch):
    monkeypatch.setattr(targets, "machine_load", lambda: 3.0)
    first = _measure(onnx_file, batch_size=3)
    assert not first.cached
    assert not _measure(onnx_file, batch_size=3).cached


def test_old_figures_expire(onnx_file, monkeypatch):
    _measure(onnx_file, batch_size=5)
    assert _measure(onnx_file, batch_size=5).cached
    later = targets.time.time() + targets.MAX_CACHE_AGE_S + 1
    monkeypatch.setattr(targets.time, "time", lambda: later)
    assert not _measure(onnx_file, batch_size=5).cached


def _measure(subject, **kw):
    args = dict(runtime="onnxruntime", input_shape=SHAPE, batch_size=2, threads=1,
                protocol=TINY)
    args.update(kw)
    return measure_on_target("local", subject, **args)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_builtin("tiny_resnet", 10, 1)
    return export_onnx(model, SHAPE, tmp_path_factory.mktemp("m") / "m.onnx")


def test_a_repeated_measurement_is_read_back(onnx_file: Path, tmp_path: Path) -> None:
    first = _measure(onnx_file)
    assert not first.cached and first.target == "local"
    second = _measure(onnx_file)
    assert second.cached
    assert second.median_ms == first.median_ms and second.samples == first.samples
    files = list((tmp_path / "cache" / "latency").glob("*.json"))
    assert len(files) == 1
    stored = json.loads(files[0].read_text())["stats"]
    assert stored["median_ms"] == first.median_ms and stored["cached"] is False


def test_settings_are_part_of_the_key(onnx_file: Path, tmp_path: Path) -> None:
    _measure(onnx_file)
    assert not _measure(onnx_file, threads=2).cached
    assert not _measure(onnx_file, batch_size=3).cached
    assert not _measure(onnx_file, protocol=MeasureProtocol(warmup=1, rounds=2, repeats=4)).cached
    assert not _measure(onnx_file, use_cache=False).cached
    assert len(list((tmp_path / "cache" / "latency").glob("*.json"))) == 4


def test_the_switch_turns_the_cache_off(onnx_file: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLIMTUNE_LATENCY_CACHE", "0")
    _measure(onnx_file)
    assert not _measure(onnx_file).cached
    assert not (tmp_path / "cache" / "latency").exists()


def test_a_corrupt_entry_is_measured_again(onnx_file: Path) -> None:
    first = _measure(onnx_file)
    from slimtune.measurement.targets import cache_key

    key = cache_key(subject_digest(onnx_file), target="local", runtime="onnxruntime",
                    threads=1, batch_size=2, input_shape=SHAPE, protocol=TINY)
    assert cache_path(key).is_file()
    cache_path(key).write_text("{not json")
    again = _measure(onnx_file)
    assert not again.cached and again.samples == first.samples


def test_the_same_model_exports_to_the_same_digest(tmp_path: Path) -> None:
    """Export is deterministic, so a repeated policy really hits the cache."""
    torch.manual_seed(0)
    model = build_builtin("tiny_resnet", 10, 1)
    a = export_onnx(model, SHAPE, tmp_path / "a.onnx")
    b = export_onnx(copy.deepcopy(model), SHAPE, tmp_path / "b.onnx")
    assert subject_digest(a) == subject_digest(b)


def test_torch_modules_are_keyed_by_architecture_and_weights() -> None:
    torch.manual_seed(0)
    model = build_builtin("tiny_resnet", 10, 1).eval()
    twin = copy.deepcopy(model)
    assert subject_digest(model) == subject_digest(twin)
    with torch.no_grad():
        twin.fc.weight.add_(1.0)
    assert subject_digest(model) != subject_digest(twin)
    first = measure_on_target("local", model, runtime="torch", input_shape=SHAPE, batch_size=1,
                              threads=1, protocol=TINY)
    assert measure_on_target("local", copy.deepcopy(model), runtime="torch", input_shape=SHAPE,
                             batch_size=1, threads=1, protocol=TINY).cached
    assert not measure_on_target("local", twin, runtime="torch", input_shape=SHAPE,
                                 batch_size=1, threads=1, protocol=TINY).cached
    assert first.runtime == "torch"
