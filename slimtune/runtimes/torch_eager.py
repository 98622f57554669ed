"""Eager PyTorch on CPU: the module itself, fp32."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from slimtune.runtimes.base import Runtime, example_batch

if TYPE_CHECKING:
    import numpy as np
    from torch import nn


class TorchRuntime(Runtime):
    """Eager PyTorch on CPU: the module in eval mode, `torch.inference_mode`, `threads` threads.

    No int8 path (eager int8 is not faster than fp32 on CPUs without VNNI): bit-widths are
    applied to the weights only.
    """

    name = "torch"
    consumes = "module"

    def versions(self) -> str:
        import torch

        return f"torch {torch.__version__}"

    def prepare(
        self,
        model: Path | nn.Module,
        input_shape: tuple[int, ...],
        batch_size: int,
        threads: int,
    ) -> Callable[[], None]:
        import torch

        model = self.subject(model)
        model.eval()
        x = torch.from_numpy(example_batch(input_shape, batch_size))

        def run_once() -> None:
            with torch.inference_mode():
                model(x)

        return run_once

    def outputs(self, model: Path | nn.Module, batch: np.ndarray, threads: int) -> np.ndarray:
        import torch

        model = self.subject(model)
        with self.context(threads), torch.inference_mode():
            return model.eval()(torch.from_numpy(batch)).numpy()

    @contextlib.contextmanager
    def context(self, threads: int) -> Iterator[None]:
        """`torch.set_num_threads(threads)` while measuring, restored afterwards."""
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)
