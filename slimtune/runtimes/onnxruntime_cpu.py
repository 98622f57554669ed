"""ONNX Runtime on CPU: the default runtime."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from slimtune.runtimes.base import Runtime, example_batch

if TYPE_CHECKING:
    import numpy as np
    from torch import nn


class OnnxRuntime(Runtime):
    """ONNX Runtime on CPU, configured exactly like `slimtune.export.onnx_session`."""

    name = "onnxruntime"
    consumes = "onnx"

    def versions(self) -> str:
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"

    def prepare(
        self,
        model: Path | nn.Module,
        input_shape: tuple[int, ...],
        batch_size: int,
        threads: int,
    ) -> Callable[[], None]:
        from slimtune.export import onnx_session

        session = onnx_session(self.subject(model), threads=threads)
        feed = {session.get_inputs()[0].name: example_batch(input_shape, batch_size)}

        def run_once() -> None:
            session.run(None, feed)

        return run_once

    def outputs(self, model: Path | nn.Module, batch: np.ndarray, threads: int) -> np.ndarray:
        from slimtune.export import onnx_session

        session = onnx_session(self.subject(model), threads=threads)
        return session.run(None, {session.get_inputs()[0].name: batch})[0]
