"""The job spec's inputs: the model, its data, the budget and the target it must meet.

Parts of :class:`slimtune.spec.JobSpec`; their keys are a contract (see slimtune.spec).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from slimtune.runtimes import RUNTIMES, Runtime, get_runtime
from slimtune.spec_base import Strict as _Strict


class ModelSpec(_Strict):
    """A built-in architecture, or a user model by import path with optional weights."""

    arch: str | None = None
    import_: str | None = Field(default=None, alias="import")
    weights: Path | None = None
    # which part of a forward's non-tensor output (dict, tuple, ModelOutput) holds the
    # logits: a key or attribute name, or a tuple index; None: ``logits``, else the first
    # tensor (see slimtune.models.logits)
    output_key: str | int | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.arch is None) == (self.import_ is None):
            raise ValueError("give exactly one of 'arch' or 'import'")
        return self

    def describe(self) -> str:
        return self.arch or f"import:{self.import_}"


DATA_SOURCES = ("dataset", "import", "folder", "npz")
FOLDER_OPTIONS = ("size", "mean", "std", "channels")


class DataSpec(_Strict):
    """Where the data comes from, and how many examples of each split (None: all).

    Exactly one source: ``dataset`` (built-in), ``import`` (``"pkg.module:callable"``
    returning train/val/test ``torch.utils.data.Dataset``s), ``folder`` (an ImageFolder
    tree: ``DIR/train/<class>/*.png``, ``val/``, ``test/``) or ``npz`` (``x_train``,
    ``y_train``, ``x_val``, ``y_val``, ``x_test``, ``y_test``). ``size``, ``mean``,
    ``std`` and ``channels`` apply to ``folder`` only. See slimtune.userdata. ``workers``
    and ``batch_size`` say how the splits are streamed (slimtune.split); they change no
    result and are not part of the baseline's cache key.
    """

    dataset: Literal["fashion-mnist", "digits", "synthetic"] | None = None
    import_: str | None = Field(default=None, alias="import")
    folder: Path | None = None
    npz: Path | None = None
    train_size: int | None = Field(default=None, gt=0, le=100_000_000)
    val_size: int | None = Field(default=None, gt=0, le=100_000_000)
    test_size: int | None = Field(default=None, gt=0, le=100_000_000)
    # folder only: resize to size x size (or [height, width]); per-channel (or one) mean and
    # std after scaling pixels to [0, 1] (default: the train split's); 1 (grey) or 3 (RGB)
    size: int | tuple[int, int] | None = None
    mean: float | tuple[float, ...] | None = None
    std: float | tuple[float, ...] | None = None
    channels: Literal[1, 3] | None = None
    # how every pass reads the data (slimtune.split): DataLoader worker processes, and the
    # batch of evaluation and statistics passes (training batches are the recipes' own)
    workers: int = Field(default=0, ge=0, le=256)
    batch_size: int = Field(default=512, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        given = [name for name, value in zip(DATA_SOURCES, self._sources(), strict=True)
                 if value is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(map(repr, DATA_SOURCES))}"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.folder is None:
            options = [k for k in FOLDER_OPTIONS if getattr(self, k) is not None]
            if options:
                raise ValueError(f"{', '.join(options)}: options of 'folder' data only")
        sizes = (self.size,) if isinstance(self.size, int) else self.size or ()
        if any(not 1 <= s <= 65_536 for s in sizes):
            raise ValueError("size must be a number of pixels in [1, 65536] "
                             "(or [height, width])")
        stds = (self.std,) if isinstance(self.std, float | int) else self.std or ()
        if any(not s > 0 for s in stds):
            raise ValueError("std must be > 0")
        lengths = {1, self.channels} if self.channels else {1, 3}
        for key in ("mean", "std"):
            value = getattr(self, key)
            if isinstance(value, tuple) and len(value) not in lengths:
                raise ValueError(f"{key} must be one value or one per channel")
        return self

    def _sources(self) -> tuple[object, ...]:
        return (self.dataset, self.import_, self.folder, self.npz)

    def describe(self) -> str:
        """The source in a few words: ``synthetic``, ``import:pkg.mod:fn``, ``folder:DIR``."""
        if self.dataset is not None:
            return self.dataset
        name, value = next((n, v) for n, v in zip(DATA_SOURCES, self._sources(), strict=True)
                           if v is not None)
        return f"{name}:{value}"


class BudgetSpec(_Strict):
    """The latency budget: a fraction of the baseline's measured latency, or milliseconds."""

    latency_fraction: float | None = Field(default=None, gt=0, le=1)
    latency_ms: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_budget(self) -> BudgetSpec:
        if (self.latency_fraction is None) == (self.latency_ms is None):
            raise ValueError("give exactly one of 'latency_fraction' or 'latency_ms'")
        return self


class TargetSpec(_Strict):
    """Where and how latency is measured."""

    name: str = "local"
    runtime: str = "onnxruntime"  # a name in slimtune.runtimes.RUNTIMES
    threads: int = Field(default=2, ge=1, le=1024)
    batch_size: int = Field(default=1, ge=1, le=65_536)

    @field_validator("runtime")
    @classmethod
    def _runtime(cls, v: str) -> str:
        if v not in RUNTIMES:
            raise ValueError(f"unknown runtime {v!r}; valid: {', '.join(sorted(RUNTIMES))}")
        return v

    @field_validator("name")
    @classmethod
    def _target_name(cls, v: str) -> str:
        # 'local' measures here; any other name is the Ray node carrying 'target:<name>'
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
            raise ValueError("a target name is letters, digits, '_', '.' and '-' "
                             "('local', or the Ray resource 'target:<name>' of a node)")
        return v

    @property
    def is_local(self) -> bool:
        return self.name == "local"

    @property
    def backend(self) -> Runtime:
        """The registered runtime ``runtime`` names: what deploy hands it, how it times."""
        return get_runtime(self.runtime)
