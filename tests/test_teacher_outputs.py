"""The teacher's outputs looked up by example index train the same model as the teacher."""

from __future__ import annotations

import copy

import torch
from torch.utils.data import Dataset

from slimtune.models import build_builtin
from slimtune.split import Split
from slimtune.teacher_outputs import teacher_outputs
from slimtune.train import train


def _split(n: int = 96) -> Split:
    g = torch.Generator().manual_seed(0)
    return Split(torch.randn(n, 1, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g))


def test_a_lookup_of_the_teachers_outputs_trains_the_same_weights_as_the_teacher():
    split = _split()
    torch.manual_seed(1)
    teacher = build_builtin("tiny_resnet", 10, 1).eval()
    torch.manual_seed(2)
    student = build_builtin("tiny_resnet", 10, 1)
    twin, initial = copy.deepcopy(student), copy.deepcopy(student)
    outputs = teacher_outputs(teacher, split, examples_drawn=10 * 16)
    assert outputs is None  # under two passes over the split drawn: one up front won't pay
    outputs = teacher_outputs(teacher, split, examples_drawn=12 * 16)
    assert outputs is not None and outputs.outputs.shape == (96, 10)
    assert not outputs.outputs.requires_grad

    train(student, split, steps=10, batch_size=16, lr=0.05, seed=3, teacher=teacher)
    train(twin, split, steps=10, batch_size=16, lr=0.05, seed=3, teacher=teacher,
          teacher_outputs=outputs)
    for (name, a), b in zip(student.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-4), name
    moved = max(float((a.float() - b.float()).abs().max()) for a, b in
                zip(student.state_dict().values(), initial.state_dict().values(), strict=True))
    assert moved > 1e-3  # the weights trained at all


class _Items(Dataset):
    """Streamed items (a user's dataset may transform them at random)."""

    def __init__(self, split: Split) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return self.split.x[i], int(self.split.y[i])


def test_a_streamed_split_or_a_non_tensor_output_runs_the_teacher_at_each_step():
    split = _split(32)
    streamed = Split(_Items(split), split.y)
    teacher = build_builtin("tiny_resnet", 10, 1)
    assert teacher_outputs(teacher, streamed, examples_drawn=10_000) is None

    class DictOut(torch.nn.Module):
        def forward(self, x):
            return {"logits": x.flatten(1)[:, :10]}

    assert teacher_outputs(DictOut(), split, examples_drawn=10_000) is None
    assert teacher_outputs(teacher, split.first(0), examples_drawn=10_000) is None
