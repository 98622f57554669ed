"""The teacher's outputs on the training split, computed once for a job's final fine-tunes.

An eval-mode teacher gives an in-memory example (no transform, so no augmentation) the
same output at every step of every fine-tune. The final stage's fine-tunes each draw
about an epoch, so running the teacher at each step (a fifth of a final's time on
ResNet-20: 34 s -> 26 s on the quickstart's recipe) repeats one pass over the split per
final; looking its outputs up by example index gives the same distillation targets for
the cost of one pass in all (7-9 s there). One pass costs about what one final saves,
so the table is made only where the fine-tunes draw the split ``PASSES`` times or more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from slimtune.split import Split

#: the largest table of outputs kept (float32); above it the teacher runs at each step
MAX_BYTES = 256 * 2**20
#: passes over the split the fine-tunes must draw in all for one pass up front to pay
PASSES = 2


@dataclass(frozen=True)
class TeacherOutputs:
    """Row ``i`` of ``outputs`` is the teacher's output for example ``i`` of its split."""

    outputs: torch.Tensor

    def __len__(self) -> int:
        return len(self.outputs)

    def of(self, indices: Sequence[int]) -> torch.Tensor:
        return self.outputs[torch.as_tensor(indices, dtype=torch.int64)]


def teacher_outputs(teacher: nn.Module, split: Split, *, examples_drawn: int,
                    batch_size: int = 128) -> TeacherOutputs | None:
    """The teacher's outputs on every example of ``split`` (in passes of ``batch_size``,
    on the CPU faster than larger ones), or None where a lookup would not pay or not be
    exact: the fine-tunes draw fewer than ``PASSES`` passes over the split in all, a
    streamed split (its items may transform at random), outputs that are not one tensor,
    or a table over ``MAX_BYTES``."""
    n = len(split)
    if not split.in_memory or n == 0 or examples_drawn < PASSES * n:
        return None
    teacher.eval()
    with torch.inference_mode():
        probe = teacher(split.head(1).x)
    if not isinstance(probe, torch.Tensor) or probe.numel() * 4 * n > MAX_BYTES:
        return None
    with torch.inference_mode():
        outputs = torch.cat([teacher(batch.x) for batch in split.loader(batch_size)]).float()
    return TeacherOutputs(outputs.clone())
