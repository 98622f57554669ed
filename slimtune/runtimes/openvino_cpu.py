"""OpenVINO on CPU: the same ONNX / QDQ-int8 file ONNX Runtime gets (optional extra)."""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimtune.errors import UserInputError
from slimtune.runtimes.base import Runtime, example_batch

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

INSTALL_HINT = "pip install 'slimtune[openvino]'"


def _openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise UserInputError(f"the openvino runtime needs OpenVINO: {INSTALL_HINT}") from None
    return openvino


def compile_config(threads: int) -> dict[str, Any]:
    """CPU plugin settings: `threads` threads, one stream, latency mode, fp32 kept fp32
    (on CPUs with bf16 units OpenVINO would otherwise run fp32 layers in bf16)."""
    return {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}


class _SignalStack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int),
                ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def keeping_signal_stack() -> Iterator[None]:
    """The calling thread's alternate signal stack as it was before the block.

    OpenVINO's ``compile_model`` installs a stack of its own on the calling thread and
    puts the previous one back when that compiled model is destroyed: destroyed out of
    order, the thread is left pointing at a freed stack, and the next signal with a
    handler (Ctrl-C, SIGTERM, a child's SIGCHLD) kills the process with SIGSEGV (seen in
    the test suite's interpreter after the OpenVINO test)."""
    if not sys.platform.startswith("linux"):
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    before = _SignalStack()
    if libc.sigaltstack(None, ctypes.byref(before)) != 0:
        yield
        return
    try:
        yield
    finally:
        libc.sigaltstack(ctypes.byref(before), None)


def compile_onnx(path: Path, input_shape: tuple[int, ...], batch_size: int,
                 threads: int) -> Any:
    """``path`` read, reshaped to the static (batch_size, *input_shape) and compiled for CPU
    with `compile_config`: the model `OpenVinoRuntime` times (an ``openvino.CompiledModel``).
    The thread's signal stack is kept (see ``keeping_signal_stack``)."""
    ov = _openvino()
    core = ov.Core()
    graph = core.read_model(str(path))
    graph.reshape([batch_size, *input_shape])
    with keeping_signal_stack():
        return core.compile_model(graph, "CPU", compile_config(threads))


class OpenVinoRuntime(Runtime):
    """OpenVINO's CPU plugin: the .onnx file reshaped to the static batch and compiled;
    QDQ layers run as int8 kernels, the others fp32."""

    name = "openvino"
    consumes = "onnx"

    def versions(self) -> str:
        return f"openvino {_openvino().__version__}"

    def prepare(
        self,
        model: Path | nn.Module,
        input_shape: tuple[int, ...],
        batch_size: int,
        threads: int,
    ) -> Callable[[], None]:
        path = self.subject(model)
        ov = _openvino()
        request = compile_onnx(path, input_shape, batch_size, threads).create_infer_request()
        request.set_input_tensor(ov.Tensor(example_batch(input_shape, batch_size)))

        def run_once() -> None:
            request.infer()

        return run_once

    def outputs(self, model: Path | nn.Module, batch: np.ndarray, threads: int) -> np.ndarray:
        ov = _openvino()
        compiled = compile_onnx(self.subject(model), batch.shape[1:], len(batch), threads)
        request = compiled.create_infer_request()
        request.set_input_tensor(ov.Tensor(batch))
        request.infer()
        return request.get_output_tensor(0).data.copy()
