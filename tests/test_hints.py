"""FitNets hints: the term trains the student, regressors never leak, bad names stop early."""

from __future__ import annotations

import copy

import pytest
import torch

from slimtune.cli import main
from slimtune.data import load_dataset
from slimtune.errors import SpecError
from slimtune.hints import HintLayerError, feature_hints, hint_layer_names
from slimtune.layers import build_layer_table
from slimtune.methods.apply import compressed_structure, prune_structure
from slimtune.models import build_builtin
from slimtune.policy import Policy
from slimtune.spec import parse_spec
from slimtune.train import train
from tests.jobs import tiny_job, write_job


@pytest.fixture(scope="module")
def parts():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on the shared 2-core machine: several times slower
    data = load_dataset("synthetic", train_size=None, val_size=None, test_size=None, seed=0)
    torch.manual_seed(0)
    teacher = build_builtin("tiny_resnet", data.num_classes, data.input_shape[0]).eval()
    table = build_layer_table(teacher, data.input_shape, round_to=1)
    yield data, teacher, table
    torch.set_num_threads(threads)


def _student(teacher, table):
    return prune_structure(teacher, table, Policy(prune={g.name: 0.5 for g in table.groups}))


def test_default_and_named_hint_layers(parts):
    _, _, table = parts
    assert hint_layer_names(table) == ("layer2.conv2",)  # the last conv layer
    assert hint_layer_names(table, ("conv1", "fc", "conv1")) == ("conv1", "fc")
    with pytest.raises(HintLayerError, match="'layer9'.*its layers: conv1"):
        hint_layer_names(table, ("layer9",))


def test_hint_term_trains_the_student_and_leaves_no_trace(parts):
    data, teacher, table = parts
    base = _student(teacher, table)
    plain, hinted = copy.deepcopy(base), copy.deepcopy(base)
    kwargs = dict(steps=4, batch_size=32, lr=0.05, seed=0, teacher=teacher)
    train(plain, data.train, **kwargs)
    layers = ("layer1.conv2", "fc")  # a pruned conv (1x1 conv regressor) and a linear
    with feature_hints(hinted, teacher, table, layers, weight=5.0,
                       example=data.train.x[:32]) as hints:
        assert [type(r).__name__ for r in hints.regressors] == ["Conv2d", "Linear"]
        assert hints.regressors[0].in_channels == 4 and hints.regressors[0].out_channels == 8
        regressor_before = copy.deepcopy(hints.regressors.state_dict())
        train(hinted, data.train, hints=hints, **kwargs)
        assert any(not torch.equal(regressor_before[k], v)
                   for k, v in hints.regressors.state_dict().items())  # trained too
    changed = [k for k, v in hinted.state_dict().items()
               if v.is_floating_point() and not torch.equal(plain.state_dict()[k], v)]
    assert changed  # same seed, same batches: only the hint term differs
    assert set(hinted.state_dict()) == set(base.state_dict())  # no regressor in the model
    for model in (hinted, teacher):
        assert not any(m._forward_hooks for m in model.modules())


def test_hints_need_a_teacher(parts, tmp_path):
    data, teacher, table = parts
    student = _student(teacher, table)
    with feature_hints(student, teacher, table, ("fc",), weight=1.0,
                       example=data.train.x[:8]) as hints:
        with pytest.raises(ValueError, match="teacher"):
            train(student, data.train, steps=1, batch_size=8, lr=0.01, hints=hints)
    with pytest.raises(SpecError, match="finetune.hint_weight needs a teacher"):
        parse_spec(tiny_job(tmp_path, finetune={"hint_weight": 1.0, "distill": False}))
    spec = parse_spec(tiny_job(tmp_path, finetune={"hint_weight": 1.0, "distill": False},
                               space={"distill": [True, False]}))
    assert spec.space.distill == (True, False)  # searched: trials that distil use hints


def test_unknown_hint_layer_is_one_line_exit_2_from_validate(capsys, tmp_path):
    job = write_job(tmp_path, finetune={"hint_weight": 1.0, "hint_layers": ["conv1", "nope"]})
    assert main(["validate", str(job)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "finetune.hint_layers" in lines[0] and "'nope'" in lines[0]


def test_hints_on_a_factorised_layer_stay_finite(parts):
    data, teacher, table = parts
    policy = Policy(rank={"layer2.conv2": 0.25})  # rank-deficient student features
    student = compressed_structure(teacher, table, policy, round_to=1)
    assert isinstance(student.get_submodule("layer2.conv2"), torch.nn.Sequential)
    with feature_hints(student, teacher, table, hint_layer_names(table), weight=1.0,
                       example=data.train.x[:16]) as hints:
        train(student, data.train, steps=3, batch_size=16, lr=0.01, teacher=teacher,
              hints=hints)
    assert all(torch.isfinite(p).all() for p in student.parameters())
