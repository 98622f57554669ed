"""Models whose forward returns a dict, a tuple or a ModelOutput-like object: wrapped once
in LogitsOf where they are built, then pruned, exported and run like any other."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from slimtune.baseline import build_model
from slimtune.export import export_onnx, onnx_predict, onnx_session, quantize_onnx
from slimtune.layers import build_layer_table
from slimtune.methods.apply import apply_policy
from slimtune.methods.quantization import int8_layers
from slimtune.models import LogitsOf, ModelError, load_weights, output_note
from slimtune.models.logits import adapt_output
from slimtune.policy import Policy
from slimtune.spec import ModelSpec

SHAPE = (3, 12, 12)
HERE = "tests.test_model_outputs"


class _Body(nn.Module):
    def __init__(self, num_classes: int = 4, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return x.mean(dim=(2, 3))


class DictNet(_Body):
    def forward(self, x):
        f = self.features(x)
        return {"features": f, "logits": self.fc(f)}


class TupleNet(_Body):
    def forward(self, x):
        f = self.features(x)
        return self.fc(f), f


@dataclass
class ClassifierOutput:  # what a Hugging Face ModelOutput looks like to slimtune
    loss: torch.Tensor | None
    logits: torch.Tensor


class OutputNet(_Body):
    def forward(self, x):
        return ClassifierOutput(loss=None, logits=self.fc(self.features(x)))


class KeyedNet(_Body):
    def forward(self, x):
        f = self.features(x)
        return {"aux": f, "scores": self.fc(f)}


class NoTensorNet(_Body):
    def forward(self, x):
        return {"n": 3}


def dict_net(num_classes: int, in_channels: int) -> nn.Module:
    return DictNet(num_classes, in_channels)


def tuple_net(num_classes: int, in_channels: int) -> nn.Module:
    return TupleNet(num_classes, in_channels)


def output_net(num_classes: int, in_channels: int) -> nn.Module:
    return OutputNet(num_classes, in_channels)


def keyed_net(num_classes: int, in_channels: int) -> nn.Module:
    return KeyedNet(num_classes, in_channels)


def build(name: str, **spec) -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelSpec(**{"import": f"{HERE}:{name}", **spec}), num_classes=4,
                       in_channels=3, input_shape=SHAPE)


X = torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("name", "key", "returned"), [
    ("dict_net", "logits", "dict"), ("tuple_net", 0, "tuple"),
    ("output_net", "logits", "ClassifierOutput")])
def test_wrapped_where_built_and_says_which(name: str, key: object, returned: str) -> None:
    model = build(name).eval()
    assert isinstance(model, LogitsOf) and model.key == key
    with torch.no_grad():
        logits = model(X)
    assert isinstance(logits, torch.Tensor) and logits.shape == (5, 4)
    note = output_note(model)
    where = f"[{key}]" if isinstance(key, int) else repr(key)
    assert note and "\n" not in note and returned in note and f"takes {where}" in note


def test_output_key_from_the_spec_and_plain_models_untouched() -> None:
    keyed = build("keyed_net", output_key="scores")
    assert isinstance(keyed, LogitsOf) and keyed(X).shape == (5, 4)
    # without output_key the first tensor ("aux", 16 features) would be taken
    assert build("keyed_net").key == "aux"
    plain = build_model(ModelSpec(arch="tiny_resnet"), num_classes=4, in_channels=3,
                        input_shape=SHAPE)
    assert not isinstance(plain, LogitsOf) and output_note(plain) is None
    with pytest.raises(ModelError, match="no such part .*'aux', 'scores'"):
        build("keyed_net", output_key="logitz")
    with pytest.raises(ModelError, match="returns a tensor: remove model.output_key"):
        adapt_output(nn.Linear(3, 2), torch.zeros(2, 3), "logits")
    with pytest.raises(ModelError, match="no tensor in it"):
        adapt_output(NoTensorNet(), torch.zeros(2, *SHAPE))
    with pytest.raises(ModelError, match=r"forward failed on a batch of shape \[2, 3, 12, 12\]"):
        adapt_output(nn.Linear(5, 2), torch.zeros(2, *SHAPE))


@pytest.mark.parametrize("name", ["dict_net", "tuple_net"])
def test_pruning_and_onnx_export_see_the_logits(name: str, tmp_path) -> None:
    model = build(name).eval()
    table = build_layer_table(model, SHAPE, round_to=1)
    assert {g.name for g in table.groups} == {"model.conv1", "model.conv2"}
    policy = Policy(prune={g.name: 0.5 for g in table.groups},
                    bits={li.name: 8 for li in table.layers})
    pruned = apply_policy(model, table, policy).eval()
    assert isinstance(pruned, LogitsOf)
    assert pruned.model.conv2.out_channels == 8 and pruned.model.fc.in_features == 8
    with torch.no_grad():
        expected = pruned(X)
    assert expected.shape == (5, 4)
    path = export_onnx(pruned, SHAPE, tmp_path / "m.onnx")
    got = onnx_predict(onnx_session(path, threads=1), X)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4, rtol=1e-4)
    int8 = quantize_onnx(path, tmp_path / "m.int8.onnx", calibration=X,
                         int8_layers=int8_layers(policy, pruned))
    quantized = onnx.load(str(int8))
    assert sum(n.op_type == "QuantizeLinear" for n in quantized.graph.node) >= 3
    assert onnx_predict(onnx_session(int8, threads=1), X).shape == (5, 4)


def test_users_own_weights_load_into_the_wrapper(tmp_path) -> None:
    torch.manual_seed(3)
    theirs = DictNet(4, 3)
    torch.save(theirs.state_dict(), tmp_path / "theirs.pt")
    model = build("dict_net")
    load_weights(model, tmp_path / "theirs.pt")
    with torch.no_grad():
        assert torch.equal(model.eval()(X), theirs.eval()(X)["logits"])
    torch.save(model.state_dict(), tmp_path / "wrapped.pt")  # a cached baseline
    again = build("dict_net")
    load_weights(again, tmp_path / "wrapped.pt")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                 model.state_dict().values(), strict=True))


def no_tensor_net(num_classes: int, in_channels: int) -> nn.Module:
    return NoTensorNet(num_classes, in_channels)


def test_validate_says_which_part_it_takes(tmp_path, capsys) -> None:
    import yaml

    from slimtune.cli import main
    from tests.jobs import tiny_job

    job = {**tiny_job(tmp_path), "model": {"import": f"{HERE}:tuple_net"}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    assert main(["validate", str(tmp_path / "job.yaml")]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("ok: ") and "2 channel groups" in out
    assert err.splitlines() == [line for line in err.splitlines() if "takes [0]" in line]
    assert len(err.splitlines()) == 1
