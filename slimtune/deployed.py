"""A compressed model in the form the target runs it: the module, and its ONNX file
when the runtime consumes ONNX."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from slimtune.export import onnx_predict, onnx_session
from slimtune.train import predict

__all__ = ["Deployed"]


@dataclass(frozen=True)
class Deployed:
    """A compressed model in the form the target runs it."""

    model: nn.Module
    onnx_path: Path | None  # None for a runtime that consumes the module (torch)

    def logits(self, x: torch.Tensor, threads: int) -> torch.Tensor:
        if self.onnx_path is None:
            return predict(self.model, x)
        return torch.from_numpy(onnx_predict(onnx_session(self.onnx_path, threads=threads), x))
