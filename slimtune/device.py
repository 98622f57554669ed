"""Where training and fine-tuning run: ``train.device: auto | cpu | cuda``.

``auto`` is CUDA when torch sees a GPU, else the CPU. Only the training loops move to the
device; every model comes back to the CPU for export, int8 calibration and latency,
which are measured on the target as before.
"""

from __future__ import annotations

import torch

from slimtune.errors import SpecError

DEVICES = ("auto", "cpu", "cuda")


class DeviceError(SpecError):
    """``train.device: cuda`` on a machine where torch sees no CUDA GPU."""


def training_device(requested: str) -> torch.device:
    """The torch device ``train.device`` names here; DeviceError for cuda without CUDA."""
    if requested not in DEVICES:
        raise DeviceError(f"train.device must be one of {', '.join(DEVICES)}, got {requested!r}")
    available = torch.cuda.is_available()
    if requested == "cuda" and not available:
        raise DeviceError("train.device is cuda but torch sees no CUDA GPU here (torch "
                          f"{torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                          "use train.device: cpu or auto")
    if requested == "auto":
        return torch.device("cuda" if available else "cpu")
    return torch.device(requested)


def worker_gpus(requested: str, concurrency: int) -> float:
    """The GPU share a Ray trial asks for: ``1 / concurrency`` when training runs on CUDA
    (so that Ray makes the GPU visible to the worker), else 0."""
    if training_device(requested).type != "cuda":
        return 0.0
    return 1.0 / max(concurrency, 1)
