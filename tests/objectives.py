"""User objectives for tests: metrics, losses, a regression dataset and model (importable
as ``tests.objectives:NAME``), including broken ones that must be refused."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset


def top2(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example top-2 correctness."""
    return (outputs.topk(2, dim=1).indices == targets[:, None]).any(dim=1).float()


def mean_top1(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """The batch's top-1 accuracy as one number."""
    return float((outputs.argmax(1) == targets).float().mean())


def smoothed(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(outputs, targets, label_smoothing=0.1)


def neg_mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Higher is better: minus each example's mean squared error."""
    return -((outputs - targets) ** 2).mean(dim=1)


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(outputs, targets)


def says_good(outputs, targets) -> str:
    return "good"


def nan_metric(outputs, targets) -> float:
    return float("nan")


def per_vector(outputs, targets) -> torch.Tensor:
    return torch.zeros(len(outputs) + 1)


def vector_loss(outputs, targets) -> torch.Tensor:
    """Forgot the reduction: one loss per example."""
    return torch.nn.functional.cross_entropy(outputs, targets, reduction="none")


NOT_CALLABLE = 3


def regression():
    """Targets are 3 values a linear map of the inputs gives: a custom task."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2 * 6 * 6, 3, generator=g) / 8

    def split(n: int) -> TensorDataset:
        x = torch.randn(n, 2, 6, 6, generator=g)
        return TensorDataset(x, x.flatten(1) @ w)

    return split(64), split(16), split(16)


def regressor(num_classes: int, in_channels: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(in_channels, 8, 3, padding=1),
                               torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(8 * 36, num_classes))
