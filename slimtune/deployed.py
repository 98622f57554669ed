"""A compressed model in the form the target runs it: the module, and its ONNX file
when the runtime consumes ONNX."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from slimtune.export import onnx_predict, onnx_session
from slimtune.split import Split
from slimtune.train import predict

__all__ = ["Deployed"]


@dataclass(frozen=True)
class Deployed:
    """A compressed model in the form the target runs it."""

    model: nn.Module
    onnx_path: Path | None  # None for a runtime that consumes the module (torch)

    def runner(self, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """Its forward on a batch of inputs (one ONNX Runtime session for all batches)."""
        if self.onnx_path is None:
            return lambda x: predict(self.model, x)
        session = onnx_session(self.onnx_path, threads=threads)
        return lambda x: torch.from_numpy(onnx_predict(session, x))

    def logits(self, x: torch.Tensor | Split, threads: int) -> torch.Tensor:
        """Outputs on a tensor of inputs, or on a whole split (streamed in batches)."""
        if self.onnx_path is None:
            return predict(self.model, x)
        return torch.from_numpy(onnx_predict(onnx_session(self.onnx_path, threads=threads), x))
