"""``slimtune validate`` exports the model to ONNX and runs it in ONNX Runtime on a batch
of the data: a model every trial would fail to deploy is one line and exit 2 up front."""

from __future__ import annotations

import yaml
from torch import nn

from slimtune.cli import main
from tests.jobs import tiny_job

HERE = "tests.test_validate_export"


class _Net(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def features(self, x):
        return self.conv(x).relu().mean(dim=(2, 3))


class BranchOnValue(_Net):
    """Python control flow on a tensor's value: torch.export cannot trace it."""

    def forward(self, x):
        f = self.features(x)
        return self.fc(f) if f.sum().item() > 0 else -self.fc(f)


class OtherWhenExported(_Net):
    """Takes another path while being exported (as some library models do under
    ``torch.compiler.is_exporting()`` or ``torch.jit.is_tracing()``): ONNX Runtime then
    computes other logits than torch."""

    def forward(self, x):
        import torch

        logits = self.fc(self.features(x))
        exporting = torch.compiler.is_exporting() or torch.jit.is_tracing()
        return logits.flip(1) if exporting else logits


def branch_on_value(num_classes: int, in_channels: int) -> nn.Module:
    return BranchOnValue(num_classes, in_channels)


def other_when_exported(num_classes: int, in_channels: int) -> nn.Module:
    return OtherWhenExported(num_classes, in_channels)


def _validate(tmp_path, capsys, target: str) -> tuple[int, list[str]]:
    job = {**tiny_job(tmp_path), "model": {"import": f"{HERE}:{target}"}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    code = main(["validate", str(tmp_path / "job.yaml")])
    return code, capsys.readouterr().err.strip().splitlines()


def test_a_model_that_does_not_export_is_one_line_exit_2(tmp_path, capsys) -> None:
    code, err = _validate(tmp_path, capsys, "branch_on_value")
    assert code == 2 and len(err) == 1
    assert "ONNX export (torch.onnx.export, dynamo) failed" in err[0]
    assert "\x1b[" not in err[0] and len(err[0]) < 500


def test_an_export_that_computes_other_logits_is_one_line_exit_2(tmp_path, capsys) -> None:
    code, err = _validate(tmp_path, capsys, "other_when_exported")
    assert code == 2 and len(err) == 1
    assert "ONNX Runtime's logits differ from torch's" in err[0]


def test_run_refuses_it_before_an_output_directory_exists(tmp_path, capsys) -> None:
    job = {**tiny_job(tmp_path), "model": {"import": f"{HERE}:branch_on_value"}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    assert main(["run", str(tmp_path / "job.yaml"), "--out", str(tmp_path / "out")]) == 2
    assert "ONNX export" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
