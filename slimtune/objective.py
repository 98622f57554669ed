"""The user's objective: ``task``, ``metric`` and ``loss`` (top-level spec keys).

- ``task: classification`` (default): the model's outputs are class logits; the loss is
  cross-entropy, distillation is Hinton's KL on the logits, the score is top-1 accuracy.
  ``metric`` and ``loss`` may replace the score and the loss (e.g. top-5, label smoothing).
- ``task: custom``: the outputs are whatever the model returns (boxes, masks, a
  regression); ``metric`` and ``loss`` are required, distillation is the MSE between the
  student's and the teacher's outputs, and the behaviour metrics (all of which read class
  logits) are skipped with one line. Targets are what the data's items carry: class
  indices, or tensors (``data: {import: ...}``).

Signatures (``"pkg.module:fn"``):

- ``metric(outputs, targets) -> number | 1-D tensor``, higher is better, called once per
  batch (``data.batch_size`` examples). A number is the batch's mean; a tensor holds one
  score per example. The split's score is the mean over its examples, accumulated batch by
  batch (memory: one batch of outputs). Exact for any metric that is a mean over examples
  (top-k accuracy, per-image IoU, negative error); a metric that is not (F1, mAP) is the
  mean of its per-batch values, so give ``data.batch_size`` >= the split's size for it.
- ``loss(outputs, targets) -> scalar tensor`` (differentiable), lower is better.

Both are probed on a batch of two training examples in ``slimtune validate`` and before a
run: an import that fails, or a metric that does not return a finite number (or a loss that
is not a finite scalar tensor), is one line and exit 2, before any compute.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from slimtune.errors import UserInputError
from slimtune.imports import import_object, one_line

TASKS = ("classification", "custom")


class ObjectiveError(UserInputError):
    """A metric or loss that cannot be imported, or does not return what it must."""


@functools.cache
def _imported(target: str, what: str) -> Callable[..., Any]:
    try:
        fn = import_object(target, what=what, error=ObjectiveError)
    except ObjectiveError as e:
        if target in str(e):
            raise
        raise ObjectiveError(f"{what} {target!r}: {e}") from None
    if not callable(fn):
        raise ObjectiveError(f"{what} {target!r} is a {type(fn).__name__}, not a callable")
    return fn  # type: ignore[return-value]


def top1(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example top-1 correctness (1.0 or 0.0) of class logits."""
    return (outputs.argmax(dim=1) == targets).float()


@dataclass(frozen=True)
class Objective:
    """What a model is trained for and scored by; pickles as names (imports per process)."""

    task: str = "classification"
    metric: str | None = None
    loss: str | None = None

    @classmethod
    def of(cls, spec: Any) -> Objective:
        return cls(spec.task, spec.metric, spec.loss)

    @property
    def logits(self) -> bool:
        """The outputs are class logits (classification)."""
        return self.task == "classification"

    @property
    def top1(self) -> bool:
        """The score is top-1 accuracy: a proportion of the examples scored."""
        return self.logits and self.metric is None

    @property
    def default(self) -> bool:
        """Cross-entropy and top-1: the paths that held every split's logits before."""
        return self.logits and self.metric is None and self.loss is None

    def imports(self) -> None:
        """Import the metric and the loss now; ObjectiveError with one line if one fails."""
        for target, what in ((self.metric, "metric"), (self.loss, "loss")):
            if target is not None:
                _imported(target, what)

    def loss_value(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.loss is None:
            return F.cross_entropy(outputs, targets)
        return _imported(self.loss, "loss")(outputs, targets)

    def training_loss(self, outputs: torch.Tensor, targets: torch.Tensor,
                      teacher: torch.Tensor | None, *, temperature: float,
                      alpha: float) -> torch.Tensor:
        """The loss, or with a teacher's outputs ``alpha * distillation + (1 - alpha) *
        loss``: KL at ``temperature`` on logits (Hinton), MSE on other outputs."""
        if teacher is None:
            return self.loss_value(outputs, targets)
        if self.logits:
            t = temperature
            kd = F.kl_div(F.log_softmax(outputs / t, dim=1), F.softmax(teacher / t, dim=1),
                          reduction="batchmean") * (t * t)
        else:
            kd = F.mse_loss(outputs, teacher)
        return alpha * kd + (1 - alpha) * self.loss_value(outputs, targets)

    def batch_scores(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
        """(sum of the batch's scores, examples) for the split's mean."""
        n = len(outputs)
        if self.metric is None:
            return float(top1(outputs, targets).sum()), n
        value = _imported(self.metric, "metric")(outputs, targets)
        value = _as_number(value, n, self.metric)
        return (value * n, n) if isinstance(value, float) else (float(value.sum()), n)

    def score(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """The mean score over ``(outputs, targets)`` batches."""
        total, count = 0.0, 0
        for outputs, targets in batches:
            s, n = self.batch_scores(torch.as_tensor(outputs), targets)
            total, count = total + s, count + n
        return total / max(count, 1)

    def check(self, model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor) -> None:
        """Probe the metric and the loss on one small batch; ObjectiveError if they fail."""
        if self.metric is None and self.loss is None:
            return
        with torch.no_grad():
            outputs = model.eval()(x)
        if self.metric is not None:
            fn = _imported(self.metric, "metric")
            try:
                value = fn(outputs, targets)
            except Exception as e:
                raise ObjectiveError(f"metric {self.metric!r} failed on a batch of the data: "
                                     f"{type(e).__name__}: {one_line(e)}") from e
            _as_number(value, len(outputs), self.metric)
        if self.loss is not None:
            fn = _imported(self.loss, "loss")
            model.train()
            try:
                value = fn(model(x), targets)
            except Exception as e:
                raise ObjectiveError(f"loss {self.loss!r} failed on a batch of the data: "
                                     f"{type(e).__name__}: {one_line(e)}") from e
            finally:
                model.eval()
            if not (isinstance(value, torch.Tensor) and value.numel() == 1
                    and value.is_floating_point() and bool(torch.isfinite(value))):
                raise ObjectiveError(f"loss {self.loss!r} returned {_describe(value)}; it must "
                                     "return a finite scalar tensor")


CLASSIFICATION = Objective()  # cross-entropy, KD on logits, top-1


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)}"
    return f"a {type(value).__name__}" + (f" ({value!r})" if isinstance(value, float) else "")


def _as_number(value: object, n: int, target: str) -> float | torch.Tensor:
    """A metric's value as a float (batch mean) or a length-``n`` tensor (per example)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dim() <= 1:
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float | torch.Tensor):
        raise ObjectiveError(f"metric {target!r} returned {_describe(value)}; it must return "
                             "a number (the batch's mean) or one score per example")
    if isinstance(value, torch.Tensor):
        if value.dim() != 1 or len(value) != n or not value.is_floating_point() \
                and value.dtype != torch.bool:
            raise ObjectiveError(f"metric {target!r} returned {_describe(value)}; a tensor must "
                                 f"hold one score per example ({n})")
        value = value.float()
        if not bool(torch.isfinite(value).all()):
            raise ObjectiveError(f"metric {target!r} returned a non-finite score")
        return value
    value = float(value)
    if not math.isfinite(value):
        raise ObjectiveError(f"metric {target!r} returned {value}, not a finite number")
    return value


def evaluate_split(objective: Objective, run: Callable[[torch.Tensor], torch.Tensor],
                   split: Any) -> tuple[float, torch.Tensor | None]:
    """The score of ``run`` (a model's forward, or a deployed model's) on ``split``, read
    batch by batch, and for classification the logits of the whole split (what the
    behaviour metrics read; N x classes, the inputs are never held); None otherwise."""
    if not objective.logits:
        return objective.score((run(b.x), b.y) for b in split.loader()), None
    logits = torch.cat([torch.as_tensor(run(b.x)) for b in split.loader()])
    labels = split.y
    if objective.metric is None:  # top-1 as one mean, the figure as before
        return float((logits.argmax(dim=1) == labels).float().mean()), logits
    size = split.batch_size
    return objective.score(zip(logits.split(size), labels.split(size), strict=True)), logits
