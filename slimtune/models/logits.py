"""Models whose forward returns a dict, a tuple or a ``ModelOutput`` instead of logits.

A Hugging Face classifier returns ``ImageClassifierOutput(logits=...)``, many research
models return ``(logits, features)`` or ``{"logits": ..., "aux": ...}``. slimtune wraps
such a model once, where it is built, in :class:`LogitsOf`, whose forward returns the
logits tensor alone; so torch-pruning's dependency graph, ONNX export, training and
evaluation all see a plain ``N x classes`` tensor. The user's layers are then named
``model.<name>`` (the wrapper's one child), and the user's own weights files still load
(see :func:`slimtune.models.load_weights`).

Which part is the logits: ``model.output_key`` from the spec (a key, attribute or tuple
index), else a ``logits`` key or attribute, else the first tensor in the output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

OutputKey = str | int


class LogitsOf(nn.Module):
    """``model`` with its forward's output reduced to ``output[key]`` (or ``.key``)."""

    def __init__(self, model: nn.Module, key: OutputKey, returned: str = "") -> None:
        super().__init__()
        self.model = model
        self.key = key
        self.returned = returned  # the type the forward returned, for messages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one named input, as slimtune feeds models: torch.export maps dynamic shapes to it
        return pick(self.model(x), self.key)

    def extra_repr(self) -> str:
        return f"key={self.key!r}"


def pick(output: object, key: OutputKey) -> torch.Tensor:
    """``output[key]`` for a mapping or sequence (an int key), else ``output.key``."""
    if isinstance(key, int) or isinstance(output, Mapping):
        return output[key]  # type: ignore[index]
    return getattr(output, key)


def _error(message: str) -> Exception:
    from slimtune.models import ModelError  # the package imports this module

    return ModelError(message)


def _items(output: object) -> list[tuple[OutputKey, object]]:
    """The named or numbered parts of a forward's output, in order."""
    if isinstance(output, Mapping):
        return list(output.items())
    if isinstance(output, Sequence) and not isinstance(output, str | bytes):
        return list(enumerate(output))
    return list(getattr(output, "__dict__", {}).items())


def logits_key(output: object, output_key: OutputKey | None = None) -> OutputKey | None:
    """Where the logits are in ``output``: None if it is a tensor; ModelError if nowhere."""
    kind = type(output).__name__
    if output_key is not None and isinstance(output, torch.Tensor):
        raise _error(f"model.output_key {output_key!r} is set, but the model's forward "
                     "returns a tensor: remove model.output_key")
    if output_key is not None:
        try:
            found = pick(output, output_key)
        except (KeyError, IndexError, AttributeError, TypeError):
            parts = ", ".join(repr(k) for k, _ in _items(output)) or "none"
            raise _error(f"model.output_key {output_key!r}: the model's output ({kind}) has "
                         f"no such part (its parts: {parts})") from None
        if not isinstance(found, torch.Tensor):
            raise _error(f"model.output_key {output_key!r}: that part of the model's output "
                         f"is a {type(found).__name__}, not a tensor")
        return output_key
    if isinstance(output, torch.Tensor):
        return None
    items = _items(output)
    logits = getattr(output, "logits", None) if not isinstance(output, Mapping) else None
    if isinstance(logits, torch.Tensor) or isinstance(dict(items).get("logits"), torch.Tensor):
        return "logits"
    for key, value in items:
        if isinstance(value, torch.Tensor):
            return key
    raise _error(f"the model's forward returned a {kind} with no tensor in it: return the "
                 "logits (or a dict, tuple or ModelOutput holding them)")


def adapt_output(model: nn.Module, example: torch.Tensor,
                 output_key: OutputKey | None = None) -> nn.Module:
    """``model`` itself if its forward on ``example`` returns a tensor (and no
    ``output_key`` is given), else :class:`LogitsOf` around it; ModelError (one line) if
    the forward fails or returns no tensor."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(example)
    except Exception as e:
        from slimtune.imports import one_line

        raise _error(f"the model's forward failed on a batch of shape "
                     f"{list(example.shape)}: {type(e).__name__}: {one_line(e)}") from e
    finally:
        model.train(was_training)
    key = logits_key(output, output_key)
    if key is None:
        return model
    return LogitsOf(model, key, returned=type(output).__name__).train(was_training)


def output_note(model: nn.Module) -> str | None:
    """One line saying which part of the output slimtune takes, for a wrapped model."""
    if not isinstance(model, LogitsOf):
        return None
    where = f"[{model.key}]" if isinstance(model.key, int) else f"{model.key!r}"
    return (f"model: its forward returns a {model.returned}; slimtune takes {where} as the "
            "logits (set model.output_key to choose another part); layers are named model.*")
