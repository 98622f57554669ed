"""``train.device``: auto resolves to what torch sees, cuda without CUDA is one line, exit 2,
and training on the CPU leaves the model where export and latency expect it."""

from __future__ import annotations

import pytest
import torch

from slimtune.cli import main
from slimtune.device import DeviceError, training_device, worker_gpus
from slimtune.spec import parse_spec
from slimtune.split import Split
from slimtune.train import train
from tests.jobs import tiny_job, write_job


def test_auto_is_cuda_only_where_torch_sees_one(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training_device("auto") == torch.device("cpu") == training_device("cpu")
    assert worker_gpus("auto", 4) == 0.0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert training_device("auto") == torch.device("cuda") == training_device("cuda")
    assert worker_gpus("cuda", 4) == 0.25


def test_cuda_without_cuda_is_one_line(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="train.device is cuda but torch sees no CUDA GPU"):
        training_device("cuda")


def test_spec_key_and_default(tmp_path) -> None:
    assert parse_spec(tiny_job(tmp_path)).train.device == "auto"
    assert parse_spec(tiny_job(tmp_path, train={"device": "cpu"})).train.device == "cpu"
    with pytest.raises(ValueError, match="train.device"):
        parse_spec(tiny_job(tmp_path, train={"device": "tpu"}))


@pytest.mark.parametrize("command", ["validate", "run"])
def test_cli_refuses_cuda_before_compute(tmp_path, capsys, monkeypatch, command) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = write_job(tmp_path, train={"device": "cuda"})
    args = [command, str(spec)] + (["--out", str(tmp_path / "out")] if command == "run" else [])
    assert main(args) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "train.device is cuda" in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlruns.db").exists()


def test_training_on_the_cpu_device_matches_the_default() -> None:
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randn(40, 6, generator=g), torch.arange(40) % 2)
    models = []
    for device in (None, "cpu"):
        torch.manual_seed(0)
        model = torch.nn.Linear(6, 2)
        kwargs = {} if device is None else {"device": device}
        models.append(train(model, split, steps=4, batch_size=8, lr=0.1, **kwargs))
    assert models[1].weight.device.type == "cpu"
    assert torch.equal(models[0].weight, models[1].weight)
