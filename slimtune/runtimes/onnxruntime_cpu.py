"""ONNX Runtime on CPU: the default runtime."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from slimtune.errors import UserInputError
from slimtune.runtimes.base import Runtime

if TYPE_CHECKING:
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
        import numpy as np
        from torch import nn

        from slimtune.export import onnx_session

        if isinstance(model, nn.Module):
            raise UserInputError("the onnxruntime runtime measures an .onnx file, not a module")
        session = onnx_session(Path(model), threads=threads)
        x = np.random.default_rng(0).standard_normal((batch_size, *input_shape), dtype=np.float32)
        feed = {session.get_inputs()[0].name: x}

        def run_once() -> None:
            session.run(None, feed)

        return run_once
