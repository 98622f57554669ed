"""Where a model comes from: a built-in name, a user's ``module:callable``, a weights file.

Every failure a user can fix (a typo in a name, a module that does not import, weights
saved from another model) is a :class:`ModelError` with a one-line message, raised
before any compute starts.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from slimtune.errors import UserInputError
from slimtune.imports import import_object, one_line
from slimtune.models.lenet import lenet5, lenet300
from slimtune.models.logits import LogitsOf, adapt_output, output_note
from slimtune.models.mobilenet import mobilenetv2_small
from slimtune.models.resnet import resnet20, resnet32, resnet56
from slimtune.models.testnets import tiny_concat, tiny_resnet
from slimtune.models.vgg import vgg_small

BUILTIN_ARCHS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "vgg_small": vgg_small,
    "mobilenetv2_small": mobilenetv2_small,
    "lenet300": lenet300,
    "lenet5": lenet5,
    "tiny_resnet": tiny_resnet,
    "tiny_concat": tiny_concat,
}

__all__ = ["BUILTIN_ARCHS", "LogitsOf", "ModelError", "adapt_output", "build_builtin",
           "import_model", "load_weights", "output_note"]

_BUILD_KWARGS = ("num_classes", "in_channels")
# How torch.load(weights_only=True) names a class it refused to unpickle.
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


class ModelError(UserInputError):
    """The model cannot be built or its weights cannot be loaded; the message is one line."""


def build_builtin(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    """Build a built-in architecture by name, freshly initialised."""
    try:
        builder = BUILTIN_ARCHS[arch]
    except KeyError:
        raise ModelError(
            f"unknown model arch {arch!r}; choose one of: {', '.join(BUILTIN_ARCHS)}"
        ) from None
    return builder(num_classes=num_classes, in_channels=in_channels)


def _accepted_kwargs(fn: Callable[..., object]) -> set[str]:
    """Which of num_classes/in_channels ``fn`` takes by keyword (all if it has **kwargs)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return set()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return set(_BUILD_KWARGS)
    keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in params if p.name in _BUILD_KWARGS and p.kind in keyword_kinds}


def import_model(target: str, num_classes: int, in_channels: int) -> nn.Module:
    """Build a user model from ``"package.module:callable"``.

    The callable gets ``num_classes``/``in_channels`` as keywords when its signature
    takes them, and no arguments otherwise; it must return an ``nn.Module``.
    """
    obj = import_object(target, what="model", error=ModelError)
    accepted = _accepted_kwargs(obj)
    kwargs = {"num_classes": num_classes, "in_channels": in_channels}
    try:
        model = obj(**{k: v for k, v in kwargs.items() if k in accepted})
    except Exception as e:
        raise ModelError(f"calling {target!r} failed: {type(e).__name__}: {one_line(e)}") from e
    if not isinstance(model, nn.Module):
        raise ModelError(f"{target!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _state_dict_of(loaded: object, path: Path) -> Mapping[str, torch.Tensor]:
    """The state dict inside a loaded file: the object itself or its "state_dict" entry."""
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise ModelError(
            f"weights file {path} holds no state dict (expected a dict of tensors, "
            "or a dict with a 'state_dict' entry)"
        )
    return loaded


def _fit_problems(state: Mapping[str, torch.Tensor], model: nn.Module) -> list[str]:
    """Why ``state`` does not fit ``model``: missing/unexpected keys, first shape mismatch."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if missing:
        problems.append(f"{len(missing)} keys missing from the file (first: {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys in the file (first: {unexpected[0]})")
    for key, want in expected.items():
        if key in state and state[key].shape != want.shape:
            problems.append(
                f"{key} has shape {list(state[key].shape)} in the file, "
                f"{list(want.shape)} in the model"
            )
            break
    return problems


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a ``torch.save``'d state dict into ``model`` (strict), tensors only, on CPU."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        unsafe = _UNSAFE_GLOBAL.search(str(e))
        if unsafe:
            raise ModelError(
                f"weights file {path} holds a {unsafe.group(1)} object, which is not loaded "
                "for safety (tensors and plain containers only); save model.state_dict()"
            ) from e
        raise ModelError(
            f"cannot read weights file {path}: not a file written by torch.save "
            f"({type(e).__name__})"
        ) from e
    state = _state_dict_of(loaded, path)
    if isinstance(model, LogitsOf) and set(state) != set(model.state_dict()):
        model = model.model  # the user's own weights, saved from the model unwrapped
    problems = _fit_problems(state, model)
    if problems:
        raise ModelError(f"weights do not fit model: {'; '.join(problems)}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"weights do not fit model: {one_line(e)}") from e
