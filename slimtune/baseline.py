"""The baseline: the user's weights, or a model trained by the project and cached.

Trained baselines are cached under ``$SLIMTUNE_CACHE`` (default ``~/.cache/slimtune``)
by a hash of (model, data, recipe), so every job on the same setup reuses them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from slimtune.data import Dataset
from slimtune.models import adapt_output, build_builtin, import_model, load_weights
from slimtune.spec import JobSpec, ModelSpec

RECIPE_VERSION = 1  # bump when the training code changes what a recipe produces


def cache_dir() -> Path:
    return Path(os.environ.get("SLIMTUNE_CACHE", Path.home() / ".cache" / "slimtune"))


def build_model(model: ModelSpec, *, num_classes: int, in_channels: int,
                input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """The architecture named by the spec, with random initial weights.

    A user's model whose forward returns a dict, tuple or ``ModelOutput`` comes back
    wrapped in :class:`~slimtune.models.LogitsOf` (decided by one forward on a batch of
    ``input_shape``, one example's shape), so everything downstream sees logits. Every
    caller that rebuilds a job's model passes the same ``input_shape``, so the wrapped
    model and its state dict keys are the same everywhere.
    """
    if model.arch is not None:
        return build_builtin(model.arch, num_classes, in_channels)
    assert model.import_ is not None
    user_model = import_model(model.import_, num_classes, in_channels)
    if input_shape is None:
        return user_model
    example = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    return adapt_output(user_model, example, model.output_key)


@dataclass(frozen=True)
class Baseline:
    """The uncompressed model every trial starts from and is compared with."""

    model: nn.Module
    source: str  # "weights", "cache" or "trained"
    cache_key: str
    train_seconds: float


# Spec keys added after baselines were first cached: left out of the key while unset, so
# the jobs that do not use them keep their cached baselines.
_LATER_KEYS = {"model": ("output_key",),
               "data": ("import_", "folder", "npz", "size", "mean", "std", "channels")}


# How the data is loaded, not what it is: never part of the key.
_LOADING_KEYS = {"model": set(), "data": {"workers", "batch_size"}}


def _dump(section: BaseModel, name: str, **kwargs: Any) -> dict[str, Any]:
    exclude = set(kwargs.pop("exclude", set())) | _LOADING_KEYS[name]
    data = section.model_dump(mode="json", exclude=exclude, **kwargs)
    return {k: v for k, v in data.items() if v is not None or k not in _LATER_KEYS[name]}


def baseline_key(spec: JobSpec, data: Dataset | None = None) -> str:
    """Hash of everything that determines the trained baseline's weights.

    For a user's data (``data.fingerprint``: a hash of the training split's tensors), a
    changed file under the same path is a new key, not a stale cached baseline.
    """
    recipe = {"model": _dump(spec.model, "model", by_alias=True, exclude={"weights"}),
              "data": _dump(spec.data, "data"),
              "baseline": spec.baseline.model_dump(exclude={"allow_chance"}),
              "version": RECIPE_VERSION}
    if data is not None and data.fingerprint:
        recipe["data_fingerprint"] = data.fingerprint
    if spec.task != "classification" or spec.loss is not None:  # trains on another loss
        recipe["objective"] = {"task": spec.task, "loss": spec.loss}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def prepare_baseline(spec: JobSpec, data: Dataset) -> Baseline:
    """Load the user's weights, or the cached baseline, or train one and cache it."""
    in_channels = data.input_shape[0]
    model = build_model(spec.model, num_classes=data.num_classes, in_channels=in_channels,
                        input_shape=data.input_shape)
    key = baseline_key(spec, data)
    if spec.model.weights is not None:
        load_weights(model, spec.model.weights)
        return Baseline(model.eval(), "weights", key, 0.0)
    path = cache_dir() / "baselines" / f"{key}.pt"
    if path.is_file():
        load_weights(model, path)
        return Baseline(model.eval(), "cache", key, 0.0)
    start = time.perf_counter()
    recipe = spec.baseline
    steps = math.ceil(recipe.epochs * len(data.train) / recipe.batch_size)
    from slimtune.device import training_device
    from slimtune.objective import Objective
    from slimtune.train import train

    train(model, data.train, steps=steps, batch_size=recipe.batch_size, lr=recipe.lr,
          weight_decay=recipe.weight_decay, seed=recipe.seed,
          device=training_device(spec.train.device), objective=Objective.of(spec))
    seconds = time.perf_counter() - start
    _save_atomic(model.state_dict(), path)
    return Baseline(model.eval(), "trained", key, seconds)


def _save_atomic(state: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
