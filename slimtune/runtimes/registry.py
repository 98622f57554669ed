"""The runtimes a target can measure on, by name: `target.runtime` in a spec is one of them."""

from __future__ import annotations

from slimtune.errors import UserInputError
from slimtune.runtimes.base import Runtime
from slimtune.runtimes.onnxruntime_cpu import OnnxRuntime
from slimtune.runtimes.openvino_cpu import OpenVinoRuntime
from slimtune.runtimes.torch_eager import TorchRuntime

RUNTIMES: dict[str, type[Runtime]] = {}


def register(cls: type[Runtime]) -> type[Runtime]:
    """Add `cls` under `cls.name` (usable as a class decorator); returns it."""
    RUNTIMES[cls.name] = cls
    return cls


def unknown_runtime(name: str) -> str:
    """The one-line message for a runtime name nothing registered."""
    return f"unknown runtime {name!r}; known: {sorted(RUNTIMES)}"


def get_runtime(name: str) -> Runtime:
    """The runtime registered as `name`; UserInputError (one line) if none is."""
    if name not in RUNTIMES:
        raise UserInputError(unknown_runtime(name))
    return RUNTIMES[name]()


for _builtin in (OnnxRuntime, TorchRuntime, OpenVinoRuntime):
    register(_builtin)
