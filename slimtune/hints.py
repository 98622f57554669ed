"""FitNets hints (Romero et al. 2015): the student also matches the teacher's features.

For each hint layer (a table layer, by name) the fine-tune adds
``hint_weight * MSE(regressor(student_output), teacher_output)`` to its loss, where the
outputs are the layer's output in the compressed student and in the baseline teacher
(captured by forward hooks), and the regressor is a trainable ``1 x 1`` conv (a linear
layer for a linear layer's output) from the student's channel count, possibly pruned, to
the teacher's. Regressors train with the student and are dropped after the fine-tune:
they are never part of the student, its ``state_dict`` or its exported files.

A regressor starts as the least-squares map from student to teacher features on one
probe batch, so an unchanged layer starts at zero loss and a pruned one at the part of
the teacher's features its kept channels cannot express linearly, instead of at a random
projection's large, noisy gradient.

Default hint layer (``finetune.hint_layers`` empty): the table's last conv layer, the
deepest feature map, whose channels pruning removes and whose spatial size it keeps;
for a model without convs, the input side of the classifier: the last linear layer but
one (the last, if there is only one).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from slimtune.errors import UserInputError
from slimtune.layers import LayerTable, eval_mode

__all__ = ["FeatureHints", "feature_hints", "hint_layer_names"]


class HintLayerError(UserInputError):
    """A ``finetune.hint_layers`` name that is not a conv/linear layer of the model."""


def hint_layer_names(table: LayerTable, requested: Sequence[str] = ()) -> tuple[str, ...]:
    """The layers whose outputs are matched: ``requested`` checked against the table, or
    the default (see the module docstring). HintLayerError names an unknown layer."""
    names = [li.name for li in table.layers]
    unknown = [n for n in requested if n not in names]
    if unknown:
        shown = ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")
        raise HintLayerError(f"finetune.hint_layers: no conv/linear layer named "
                             f"{unknown[0]!r} in the model (its layers: {shown})")
    if requested:
        return tuple(dict.fromkeys(requested))
    convs = [li for li in table.layers if li.kind != "linear"]
    if convs:
        return (max(convs, key=lambda li: li.index).name,)
    linears = sorted(table.layers, key=lambda li: li.index)
    return (linears[-2].name if len(linears) > 1 else linears[-1].name,)


class FeatureHints:
    """The hint loss of one fine-tune: hooks on both models, and the regressors.

    Made by :func:`feature_hints`. After a training step's forward passes through the
    student and (without gradients) the teacher, :meth:`loss` is the weighted sum over
    hint layers of the MSE between regressed student and teacher features.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, table: LayerTable,
                 layers: Sequence[str], *, weight: float) -> None:
        self.weight = weight
        self.layers = tuple(layers)
        self._channel_last = {n: table.layer(n).kind == "linear" for n in self.layers}
        self._student: dict[str, torch.Tensor] = {}
        self._teacher: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.regressors = nn.ModuleList()
        for model, store in ((student, self._student), (teacher, self._teacher)):
            modules = dict(model.named_modules())
            for name in self.layers:
                if name not in modules:
                    raise HintLayerError(f"finetune.hint_layers: the model has no module "
                                         f"named {name!r}")
                self._handles.append(modules[name].register_forward_hook(
                    lambda _m, _i, out, name=name, store=store: store.__setitem__(name, out)))

    def fit_regressors(self, student: nn.Module, teacher: nn.Module,
                       example: torch.Tensor) -> None:
        """One regressor per hint layer, least-squares fitted on ``example`` (a batch)."""
        with torch.no_grad(), eval_mode(student), eval_mode(teacher):
            student(example)
            teacher(example)
        self.regressors = nn.ModuleList(
            _fitted_regressor(name, self._flat(name, self._student[name]),
                              self._flat(name, self._teacher[name]),
                              conv=not self._channel_last[name])
            for name in self.layers)
        self._student.clear()
        self._teacher.clear()

    def _flat(self, name: str, feature: torch.Tensor) -> torch.Tensor:
        """(positions, channels): channels are dim 1 of a conv output, last of a linear's."""
        if not self._channel_last[name]:
            feature = feature.movedim(1, -1)
        return feature.reshape(-1, feature.shape[-1])

    def parameters(self) -> list[nn.Parameter]:
        """The regressors' parameters, trained with the student's."""
        return list(self.regressors.parameters())

    def loss(self) -> torch.Tensor:
        """The hint term of the last forward passes through student and teacher."""
        total = torch.zeros(())
        for name, regressor in zip(self.layers, self.regressors, strict=True):
            student, teacher = self._student.pop(name), self._teacher.pop(name)
            if student.shape[0] != teacher.shape[0] or \
                    (not self._channel_last[name] and student.shape[2:] != teacher.shape[2:]):
                raise ValueError(f"hint layer {name!r}: student output {tuple(student.shape)} "
                                 f"does not match the teacher's {tuple(teacher.shape)}")
            total = total + F.mse_loss(regressor(student), teacher.detach())
        return self.weight * total

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._student.clear()
        self._teacher.clear()


def _fitted_regressor(name: str, student: torch.Tensor, teacher: torch.Tensor, *,
                      conv: bool) -> nn.Module:
    """A 1x1 conv (``conv``) or linear layer mapping ``student`` to ``teacher`` channels,
    initialised to their (ridge) least-squares fit, with bias, on the given positions."""
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"hint layer {name!r}: student and teacher outputs differ in size "
                         f"({student.shape[0]} vs {teacher.shape[0]} positions)")
    cs, ct = student.shape[1], teacher.shape[1]
    design = torch.cat([student, torch.ones(len(student), 1, dtype=student.dtype)],
                       dim=1).double()
    # ridge, not plain least squares: a factorised or dead-channel student's features are
    # rank-deficient, and float32 noise in the null directions would get huge weights
    gram = design.T @ design
    ridge = 1e-4 * gram.diagonal().mean() + 1e-12
    solution = torch.linalg.solve(gram + ridge * torch.eye(len(gram), dtype=gram.dtype),
                                  design.T @ teacher.double()).float()
    weight, bias = solution[:cs].T.contiguous(), solution[cs]
    regressor: nn.Module = nn.Conv2d(cs, ct, 1) if conv else nn.Linear(cs, ct)
    with torch.no_grad():
        regressor.weight.copy_(weight.reshape(regressor.weight.shape))
        regressor.bias.copy_(bias)
    return regressor


@contextlib.contextmanager
def feature_hints(student: nn.Module, teacher: nn.Module, table: LayerTable,
                  layers: Sequence[str], *, weight: float,
                  example: torch.Tensor) -> Iterator[FeatureHints]:
    """Hooks on ``layers`` of both models and fitted regressors while the block runs
    (give the result to ``train(hints=...)``); hooks removed and regressors dropped after."""
    hints = FeatureHints(student, teacher, table, layers, weight=weight)
    try:
        hints.fit_regressors(student, teacher, example)
        yield hints
    finally:
        hints.close()
