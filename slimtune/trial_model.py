"""A trial's saved compressed model read back: ``model.pt`` rebuilt into a module."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from slimtune.errors import UserInputError
from slimtune.layers import LayerTable

__all__ = ["load_trial"]


def load_trial(model_pt: str | os.PathLike[str]) -> tuple[nn.Module, LayerTable, object]:
    """A trial's ``model.pt``: the compressed model, the original's layer table, the policy.

    The architecture is rebuilt from the original model by ``compressed_structure``
    (channels removed, rank layers factorised), then the saved weights are loaded into it.
    UserInputError (one line) when the file is not a trial's ``model.pt``.
    """
    from slimtune.baseline import build_model
    from slimtune.layers import build_layer_table
    from slimtune.methods.apply import compressed_structure
    from slimtune.policy import Policy
    from slimtune.spec import ModelSpec

    path = Path(model_pt)
    if not path.is_file():
        raise UserInputError(f"model file not found: {path}")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        spec = ModelSpec.model_validate(saved["model"])
        shape = tuple(saved["input_shape"])
        policy = Policy.from_dict(saved["policy"])
        round_to, num_classes = int(saved["round_to"]), int(saved["num_classes"])
        state = saved["state_dict"]
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's input
        raise UserInputError(f"{path}: not a trial's model.pt written by slimtune "
                             f"({type(err).__name__})") from None
    model = build_model(spec, num_classes=num_classes, in_channels=shape[0], input_shape=shape)
    table = build_layer_table(model, shape, round_to=round_to)
    model = compressed_structure(model, table, policy, round_to=round_to)
    model.load_state_dict(state)
    return model.eval(), table, policy
