"""Inference runtimes as plug-ins: the `Runtime` interface and the registry of them by name.

One file a runtime (`onnxruntime_cpu`, `torch_eager`, `openvino_cpu`) plus its line in
`registry`; a user runtime is a `Runtime` subclass passed to `register`.
"""

from slimtune.runtimes.base import Consumes, Runtime
from slimtune.runtimes.onnxruntime_cpu import OnnxRuntime
from slimtune.runtimes.openvino_cpu import OpenVinoRuntime
from slimtune.runtimes.registry import RUNTIMES, get_runtime, register, unknown_runtime
from slimtune.runtimes.torch_eager import TorchRuntime

__all__ = ["RUNTIMES", "Consumes", "OnnxRuntime", "OpenVinoRuntime", "Runtime", "TorchRuntime",
           "get_runtime", "register", "unknown_runtime"]
