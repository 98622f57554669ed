"""Low-rank factorisation through apply_policy: real smaller layers, exact when rank allows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from slimtune.compress import PolicyError, apply_policy, count_macs_params
from slimtune.export import export_onnx, onnx_predict, onnx_session
from slimtune.layers import build_layer_table
from slimtune.lowrank import factorize, worthwhile_rank
from slimtune.models import build_builtin
from slimtune.models.zoo import ZOO
from slimtune.policy import Policy

SHAPE = (1, 16, 16)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw(torch.relu(self.conv2(torch.relu(self.conv(x)))))
        return self.fc(x.mean(dim=(2, 3)))


def test_factorisation_is_exact_for_low_rank_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():  # conv2's (32, 16*9) unfolding has rank 4, fc's rank 3
        net.conv2.weight.copy_((torch.randn(32, 4) @ torch.randn(4, 144)).reshape(32, 16, 3, 3))
        net.fc.weight.copy_(torch.randn(10, 3) @ torch.randn(3, 32))
    table = build_layer_table(net, SHAPE)
    policy = Policy(rank={"conv2": 4 / 32, "fc": 0.3})  # full ranks 32 and 10
    out = apply_policy(net, table, policy).eval()
    assert isinstance(out.conv2, nn.Sequential) and out.conv2[0].out_channels == 4
    assert out.conv2[0].kernel_size == (3, 3) and out.conv2[0].stride == (2, 2)
    assert out.conv2[1].kernel_size == (1, 1) and out.conv2[1].bias is not None
    assert out.fc[0].out_features == 3
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(out(x), net(x), rtol=1e-4, atol=1e-4)
    macs_before, params_before = count_macs_params(net, SHAPE)
    macs_after, params_after = count_macs_params(out, SHAPE)
    assert macs_after < 0.75 * macs_before and params_after < params_before
    path = export_onnx(out, SHAPE, tmp_path / "m.onnx")
    with torch.no_grad():
        np.testing.assert_allclose(onnx_predict(onnx_session(path, threads=1), x),
                                   out(x).numpy(), rtol=1e-4, atol=1e-4)


def test_truncation_error_is_the_dropped_singular_values() -> None:
    torch.manual_seed(1)
    lin = nn.Linear(20, 12, bias=False)
    model = nn.Sequential(lin)
    table = build_layer_table(model, (20,))
    s = torch.linalg.svdvals(lin.weight.detach().double())
    factorize(model, table, {"0": 0.5})  # rank 6 of 12
    w = (model[0][1].weight @ model[0][0].weight).detach().double()
    err = torch.linalg.matrix_norm(w - lin.weight.detach().double())
    torch.testing.assert_close(err, s[6:].square().sum().sqrt(), rtol=1e-5, atol=1e-6)


def test_rank_errors() -> None:
    net = Net().eval()
    table = build_layer_table(net, SHAPE)
    with pytest.raises(PolicyError, match="'dw' is a grouped/depthwise conv"):
        apply_policy(net, table, Policy(rank={"dw": 0.5}))
    with pytest.raises(PolicyError, match="rank of unknown layers: nope"):
        apply_policy(net, table, Policy(rank={"nope": 0.5}))
    with pytest.raises(PolicyError, match="not combined"):
        apply_policy(net, table, Policy(rank={"fc": 0.5}, bits={"fc": 8}))
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="rank fraction"):
            Policy(rank={"fc": bad})
    assert Policy(rank={"fc": 1.0}).rank == {}  # full rank: nothing to do
    assert Policy.from_json(Policy(rank={"fc": 0.25}).to_json()).rank == {"fc": 0.25}
    assert worthwhile_rank(net.conv2) == (32 * 144 - 1) // (32 + 144)


@pytest.mark.parametrize("arch", ["tiny_resnet", "mlp", "vit_tiny"])
def test_prune_and_factorise_together(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    shape = (1, 28, 28)
    model = (ZOO[arch]() if arch in ZOO else build_builtin(arch, 10, 1)).eval()
    table = build_layer_table(model, shape)
    factorable = [li.name for li in table.layers if li.kind != "depthwise"
                  and li.group is not None][:3]
    policy = Policy(prune={table.groups[0].name: 0.5}, rank=dict.fromkeys(factorable, 0.25))
    out = apply_policy(model, table, policy).eval()
    assert all(isinstance(dict(out.named_modules())[n], nn.Sequential) for n in factorable)
    assert count_macs_params(out, shape)[0] < count_macs_params(model, shape)[0]
    x = torch.randn(4, *shape)
    path = export_onnx(out, shape, tmp_path / "m.onnx")
    with torch.no_grad():
        np.testing.assert_allclose(onnx_predict(onnx_session(path, threads=1), x),
                                   out(x).numpy(), rtol=1e-4, atol=1e-4)
