"""LeNet-300-100 and LeNet-5 (Deep Compression's MNIST nets) through the pipeline:
layer table, channel pruning, ONNX export (fp32 matches torch), int8 QDQ, the Deep
Compression container, and a clear error on inputs that are not 28x28."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from slimtune.compress import count_macs_params
from slimtune.compressed_file import read_compressed, write_compressed
from slimtune.deep_compression import compress_weights
from slimtune.errors import UserInputError
from slimtune.export import export_onnx, onnx_predict, onnx_session, quantize_onnx
from slimtune.layers import build_layer_table
from slimtune.methods.apply import apply_policy
from slimtune.models import build_builtin
from slimtune.policy import Policy

SHAPE = (1, 28, 28)
LAYERS = {"lenet300": ["fc1", "fc2", "fc3"], "lenet5": ["conv1", "conv2", "fc1", "fc2"]}


@pytest.mark.parametrize("arch", sorted(LAYERS))
def test_lenet_prunes_exports_and_matches_ort(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_builtin(arch, 10, 1).eval()
    table = build_layer_table(model, SHAPE, round_to=4)
    assert [li.name for li in table.layers] == LAYERS[arch]
    batch = torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        ref = model(batch).numpy()
    dense = export_onnx(model, SHAPE, tmp_path / "m.onnx")
    out = onnx_predict(onnx_session(dense, threads=1), batch)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)

    policy = Policy(prune={g.name: 0.5 for g in table.groups},
                    bits={li.name: 8 for li in table.layers}, model_signature=table.signature())
    pruned = apply_policy(model, table, policy).eval()
    macs, params = count_macs_params(pruned, SHAPE)
    assert macs < 0.6 * table.macs and params < 0.6 * table.params
    with torch.no_grad():
        ref = pruned(batch).numpy()
    fp32 = export_onnx(pruned, SHAPE, tmp_path / "p.onnx")
    np.testing.assert_allclose(onnx_predict(onnx_session(fp32, threads=1), batch), ref,
                               rtol=1e-4, atol=1e-5)
    int8 = quantize_onnx(fp32, tmp_path / "q.onnx", int8_layers=policy.quantized_layers,
                         calibration=torch.randn(64, *SHAPE))
    q = onnx_predict(onnx_session(int8, threads=1), batch)
    assert np.abs(q - ref).max() <= 0.1 * np.abs(ref).max()


@pytest.mark.parametrize("arch", sorted(LAYERS))
def test_lenet_deep_compression_round_trip(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_builtin(arch, 10, 1).eval()
    table = build_layer_table(model, SHAPE)
    names = [li.name for li in table.layers]
    policy = Policy(sparsity=dict.fromkeys(names, 0.9), clusters=dict.fromkeys(names, 32))
    size = write_compressed(model, table, policy, tmp_path / "m.stdc")
    dense = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    assert size < dense / 10
    expected = compress_weights(copy.deepcopy(model), table, policy).state_dict()
    state = read_compressed(tmp_path / "m.stdc")
    assert set(state) == set(expected)
    assert all(state[k].numpy().tobytes() == expected[k].numpy().tobytes() for k in state)


@pytest.mark.parametrize("arch", sorted(LAYERS))
def test_lenet_rejects_other_input_sizes(arch: str) -> None:
    model = build_builtin(arch, 10, 1)
    with pytest.raises(UserInputError, match=rf"{arch} takes 28x28 inputs .* got 16x16"):
        build_layer_table(model, (1, 16, 16))
