"""The `Runtime` interface: one inference runtime a latency target can run models on."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

#: what a runtime is handed by the deploy step: the exported ``.onnx`` file (layers at
#: 8 bits or fewer as QDQ int8 nodes), or the compressed torch module itself
Consumes = Literal["onnx", "module"]


class Runtime(ABC):
    """A stateless plug-in: its name, what it runs, its versions, how it times one forward.

    Subclass it, set `name` (and `consumes`, `versions` if they differ from the defaults),
    implement `prepare`, and register it with `slimtune.runtimes.register`.
    """

    name: ClassVar[str]
    consumes: ClassVar[Consumes] = "onnx"

    @property
    def takes_onnx(self) -> bool:
        """True: `deploy` exports ONNX (+ QDQ int8) and `measure` times that file."""
        return self.consumes == "onnx"

    @property
    def int8(self) -> bool:
        """True: layers at 8 bits or fewer run int8 here (the file's QDQ nodes); False: they
        run fp32, their weights rounded to the bit-width in the module."""
        return self.takes_onnx

    def versions(self) -> str:
        """The runtime library version(s): part of the latency cache key. Override it; the
        default names the runtime only."""
        return f"{self.name} (unversioned)"

    @abstractmethod
    def prepare(
        self,
        model: Path | nn.Module,
        input_shape: tuple[int, ...],
        batch_size: int,
        threads: int,
    ) -> Callable[[], None]:
        """Load `model` and return a zero-arg callable running ONE forward on a fixed random
        batch of shape (batch_size, *input_shape) with `threads` threads."""

    def outputs(self, model: Path | nn.Module, batch: np.ndarray,
                threads: int) -> np.ndarray | None:
        """The outputs of ONE forward of ``model`` on ``batch`` (float32, N x ...), what
        preflight's group probe compares with the unpruned model. Override it; the default
        None says the runtime only times (the probe then only checks the model runs)."""
        return None

    def subject(self, model: Path | nn.Module) -> Path | nn.Module:
        """``model`` as this runtime consumes it (a Path, or the module); a one-line
        UserInputError when it is the other kind."""
        from torch import nn

        from slimtune.errors import UserInputError

        is_module = isinstance(model, nn.Module)
        if is_module != (self.consumes == "module"):
            wanted = ("an nn.Module, not a file" if self.consumes == "module"
                      else "an .onnx file, not a module")
            raise UserInputError(f"the {self.name} runtime measures {wanted}")
        return model if is_module else Path(model)

    def context(self, threads: int) -> contextlib.AbstractContextManager[None]:
        """Process-wide settings that must hold while the prepared callable runs (default none)."""
        return contextlib.nullcontext()


def example_batch(input_shape: tuple[int, ...], batch_size: int) -> np.ndarray:
    """The fixed random batch a runtime times: float32 (batch_size, *input_shape), seed 0."""
    import numpy as np

    return np.random.default_rng(0).standard_normal((batch_size, *input_shape),
                                                    dtype=np.float32)
