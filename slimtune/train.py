"""Training loops: the baseline from scratch, and a compressed model's short fine-tune."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from slimtune.objective import CLASSIFICATION, Objective
from slimtune.split import Split, shuffled_batches

if TYPE_CHECKING:
    from slimtune.hints import FeatureHints
    from slimtune.teacher_outputs import TeacherOutputs


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      labels: torch.Tensor, *, temperature: float, alpha: float) -> torch.Tensor:
    """Hinton et al.: ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE``."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1),
                  reduction="batchmean") * (t * t)
    return alpha * kl + (1 - alpha) * F.cross_entropy(student_logits, labels)


def train(model: nn.Module, split: Split, *, steps: int, batch_size: int, lr: float,
          weight_decay: float = 5e-4, seed: int = 0, teacher: nn.Module | None = None,
          temperature: float = 4.0, alpha: float = 0.7,
          hints: FeatureHints | None = None,
          device: torch.device | str = "cpu",
          objective: Objective = CLASSIFICATION,
          teacher_outputs: TeacherOutputs | None = None) -> nn.Module:
    """SGD with momentum and a cosine schedule for ``steps`` steps, in place.

    With a ``teacher``, the loss is knowledge distillation from it; otherwise plain
    cross-entropy (``objective``: the spec's ``loss`` instead, and MSE distillation on
    outputs that are not class logits, :mod:`slimtune.objective`). ``hints`` (FitNets,
    :mod:`slimtune.hints`; needs the teacher) adds its feature-matching term, and its
    regressors train with the model. ``teacher_outputs`` (the teacher's outputs on
    ``split``, :mod:`slimtune.teacher_outputs`) stand in for its forward pass when there
    are no hints, which need its features. The loop runs on
    ``device`` (``train.device``, :mod:`slimtune.device`); the model, the teacher and the
    regressors are back on the CPU when it returns.
    """
    if hints is not None and teacher is None:
        raise ValueError("hints match a teacher's features: give the teacher")
    if steps <= 0:
        return model.eval()
    if teacher is None or hints is not None or (
            teacher_outputs is not None and len(teacher_outputs) != len(split)):
        teacher_outputs = None
    device = torch.device(device)
    if device.type == "cpu":
        return _train(model, split, steps=steps, batch_size=batch_size, lr=lr,
                      weight_decay=weight_decay, seed=seed, teacher=teacher,
                      temperature=temperature, alpha=alpha, hints=hints, device=device,
                      objective=objective, teacher_outputs=teacher_outputs)
    movable = [m for m in (model, teacher, hints.regressors if hints else None) if m is not None]
    try:
        for module in movable:
            module.to(device)
        return _train(model, split, steps=steps, batch_size=batch_size, lr=lr,
                      weight_decay=weight_decay, seed=seed, teacher=teacher,
                      temperature=temperature, alpha=alpha, hints=hints, device=device,
                      objective=objective, teacher_outputs=teacher_outputs)
    finally:
        for module in movable:
            module.to("cpu")


def _train(model: nn.Module, split: Split, *, steps: int, batch_size: int, lr: float,
           weight_decay: float, seed: int, teacher: nn.Module | None, temperature: float,
           alpha: float, hints: FeatureHints | None, device: torch.device,
           objective: Objective, teacher_outputs: TeacherOutputs | None) -> nn.Module:
    torch.manual_seed(seed)
    params = [*model.parameters(), *(hints.parameters() if hints is not None else [])]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay,
                          nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    if teacher is not None:
        teacher.eval()
    model.train()
    # seeded epochs of full shuffled batches (slimtune.split.shuffled_batches)
    pin = device.type == "cuda"
    batches = shuffled_batches(len(split), batch_size, seed=seed, steps=steps)
    # the same seeded index batches the loader draws: where the teacher's outputs are
    # looked up rather than computed
    for (x, y), indices in zip(split.batched(batches, pin_memory=pin), batches, strict=True):
        if device.type != "cpu":
            x, y = x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)
        outputs = model(x)
        target = None
        if teacher_outputs is not None:
            target = teacher_outputs.of(indices).to(device)
        elif teacher is not None:
            with torch.no_grad():
                target = teacher(x)
        loss = objective.training_loss(outputs, y, target, temperature=temperature, alpha=alpha)
        if hints is not None:
            loss = loss + hints.loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor | Split, batch_size: int = 512) -> torch.Tensor:
    """Logits of an eval-mode torch model over a whole split (streamed in its batches) or
    a tensor of inputs (in batches of ``batch_size``)."""
    model.eval()
    if isinstance(x, Split):
        return torch.cat([model(batch.x) for batch in x.loader()])
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def accuracy(logits: torch.Tensor | object, labels: torch.Tensor) -> float:
    """Top-1 accuracy of logits (a tensor or a numpy array) against labels."""
    pred = torch.as_tensor(logits).argmax(dim=1)
    return float((pred == labels).float().mean())
