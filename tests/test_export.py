"""ONNX export, layer-to-node mapping, mixed int8 quantization and ORT inference."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from slimtune.export import (
    ORT_DISABLED_OPTIMIZERS,
    WEIGHT_OPS,
    _export_dynamo,
    _quiet,
    export_onnx,
    exporter_of,
    onnx_node_for_layer,
    onnx_predict,
    onnx_session,
    quantize_onnx,
)

INPUT_SHAPE = (1, 16, 16)


class TinyNet(nn.Module):
    """Conv-BN stem, a residual conv, a strided conv and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(x + self.bn2(self.conv2(x)))
        x = torch.relu(self.conv3(x))
        return self.fc(x.mean(dim=(2, 3)))


LAYERS = ("conv1", "conv2", "conv3", "fc")


def _tiny_net() -> TinyNet:
    torch.manual_seed(0)
    net = TinyNet().eval()
    for bn in (net.bn1, net.bn2):  # non-trivial statistics, so BN folding is really tested
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    return net


@pytest.fixture(scope="module")
def net() -> TinyNet:
    return _tiny_net()


@pytest.fixture(scope="module")
def fp32_path(net: TinyNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(net, INPUT_SHAPE, tmp_path_factory.mktemp("onnx") / "net.onnx")


@pytest.fixture(scope="module")
def calibration() -> torch.Tensor:
    return torch.randn(64, *INPUT_SHAPE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    return np.random.default_rng(2).standard_normal((100, *INPUT_SHAPE), dtype=np.float32)


def _weight_is_dequantized(model: onnx.ModelProto, node_name: str) -> bool:
    producers = {out: n for n in model.graph.node for out in n.output}
    node = next(n for n in model.graph.node if n.name == node_name)
    producer = producers.get(node.input[1])
    return producer is not None and producer.op_type == "DequantizeLinear"


def _int8_kernels(path: Path, tmp_path: Path) -> Counter[str]:
    """Op counts of the graph ORT actually runs (optimized like `onnx_session`)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(
        str(path),
        options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=set(ORT_DISABLED_OPTIMIZERS),
    )
    return Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def test_export_matches_torch_with_dynamic_batch(net: TinyNet, fp32_path: Path) -> None:
    model = onnx.load(str(fp32_path))
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert "BatchNormalization" not in {n.op_type for n in model.graph.node}  # folded
    session = onnx_session(fp32_path, threads=1)
    for batch in (1, 7):
        x = torch.randn(batch, *INPUT_SHAPE)
        with torch.no_grad():
            expected = net(x).numpy()
        got = session.run(["logits"], {"input": x.numpy()})[0]
        assert got.shape == (batch, 10)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_export_and_quantize_are_quiet(
    tmp_path: Path, calibration: torch.Tensor, capfd: pytest.CaptureFixture[str]
) -> None:
    net = _tiny_net().train()
    path = export_onnx(net, INPUT_SHAPE, tmp_path / "again.onnx")
    assert net.training  # restored after the eval-mode export
    q_path = quantize_onnx(path, tmp_path / "q.onnx", int8_layers=LAYERS, calibration=calibration)
    onnx_predict(onnx_session(q_path, threads=1), calibration)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_onnx_node_for_layer_finds_each_layer(fp32_path: Path) -> None:
    model = onnx.load(str(fp32_path))
    nodes = {layer: onnx_node_for_layer(model, layer) for layer in LAYERS}
    assert None not in nodes.values()
    assert len(set(nodes.values())) == len(LAYERS)
    by_name = {n.name: n for n in model.graph.node}
    assert all(by_name[name].op_type in WEIGHT_OPS for name in nodes.values())
    assert by_name[nodes["fc"]].op_type in ("Gemm", "MatMul")
    assert onnx_node_for_layer(model, "bn1") is None
    assert onnx_node_for_layer(model, "nope") is None


class _Halve(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * 0.5


class Shuffled(nn.Module):
    """A channel shuffle: reshapes computed from the input's size (shape arithmetic)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(x.mean(dim=(2, 3)))


def test_a_static_graph_is_traced_and_is_the_dynamo_graph(
    net: TinyNet, fp32_path: Path, tmp_path: Path
) -> None:
    assert exporter_of(fp32_path) == "traced"
    with _quiet(), torch.no_grad():
        _export_dynamo(net, torch.randn(2, *INPUT_SHAPE), tmp_path / "dynamo.onnx", opset=18)
    ops = [Counter(n.op_type for n in onnx.load(str(p)).graph.node)
           for p in (fp32_path, tmp_path / "dynamo.onnx")]
    assert ops[0] == ops[1] and "BatchNormalization" not in ops[0]


def test_shape_arithmetic_goes_through_the_dynamo_exporter(tmp_path: Path) -> None:
    net = Shuffled().eval()
    path = export_onnx(net, INPUT_SHAPE, tmp_path / "shuffled.onnx")
    assert exporter_of(path) == "dynamo"
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not ops & {"Shape", "Gather"}
    x = torch.randn(5, *INPUT_SHAPE)
    got = onnx_predict(onnx_session(path, threads=1), x)
    np.testing.assert_allclose(got, net(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_onnx_node_for_layer_falls_back_to_name_scope(tmp_path: Path) -> None:
    # A computed weight is folded into an anonymous initializer; the BN-free conv3 and fc are
    # still found via the exporter's name-scope metadata.
    net = _tiny_net()
    for layer in (net.conv3, net.fc):
        parametrize.register_parametrization(layer, "weight", _Halve())
    path = export_onnx(net, INPUT_SHAPE, tmp_path / "param.onnx")
    assert exporter_of(path) == "dynamo"  # the traced graph names no weight of theirs
    model = onnx.load(str(path))
    initializers = {i.name for i in model.graph.initializer}
    assert "fc.weight" not in initializers and "conv3.weight" not in initializers
    conv3, fc = onnx_node_for_layer(model, "conv3"), onnx_node_for_layer(model, "fc")
    by_name = {n.name: n for n in model.graph.node}
    assert conv3 is not None and by_name[conv3].op_type == "Conv"
    assert fc is not None and by_name[fc].op_type in ("Gemm", "MatMul")
    assert onnx_node_for_layer(model, "conv1") not in (None, conv3)


def test_onnx_node_for_layer_in_quantized_model(
    fp32_path: Path, calibration: torch.Tensor, tmp_path: Path
) -> None:
    fp32 = onnx.load(str(fp32_path))
    q_path = quantize_onnx(
        fp32_path, tmp_path / "q.onnx", int8_layers=LAYERS, calibration=calibration
    )
    quantized = onnx.load(str(q_path))
    for layer in LAYERS:
        assert onnx_node_for_layer(quantized, layer) == onnx_node_for_layer(fp32, layer)


def test_quantize_all_layers(
    fp32_path: Path, calibration: torch.Tensor, inputs: np.ndarray, tmp_path: Path
) -> None:
    q_path = quantize_onnx(
        fp32_path, tmp_path / "all.onnx", int8_layers=LAYERS, calibration=calibration
    )
    model = onnx.load(str(q_path))
    for node in model.graph.node:
        if node.op_type in WEIGHT_OPS:
            assert _weight_is_dequantized(model, node.name), node.name
    kernels = _int8_kernels(q_path, tmp_path)
    assert kernels["QLinearConv"] == 3 and kernels["Conv"] == 0

    fp32 = onnx_predict(onnx_session(fp32_path, threads=1), inputs)
    int8 = onnx_predict(onnx_session(q_path, threads=1), inputs)
    assert int8.shape == fp32.shape == (100, 10)
    assert np.abs(int8 - fp32).max() <= 0.1 * np.abs(fp32).max()
    assert (int8.argmax(1) == fp32.argmax(1)).mean() >= 0.9


def test_quantize_subset_keeps_other_layers_fp32(
    net: TinyNet, fp32_path: Path, calibration: torch.Tensor, tmp_path: Path
) -> None:
    # conv2 sits between quantized tensors: the case ORT would silently re-quantize.
    int8_layers = ["conv1", "conv3"]
    q_path = quantize_onnx(
        fp32_path, tmp_path / "mixed.onnx", int8_layers=int8_layers, calibration=calibration
    )
    model = onnx.load(str(q_path))
    for layer in LAYERS:
        node = onnx_node_for_layer(model, layer)
        assert node is not None
        assert _weight_is_dequantized(model, node) == (layer in int8_layers), layer
    kernels = _int8_kernels(q_path, tmp_path)
    assert kernels["QLinearConv"] == 2
    assert kernels["QGemm"] == 0
    assert kernels["Conv"] + kernels["FusedConv"] == 1

    session = onnx_session(q_path, threads=1)
    for batch in (1, 7):
        x = torch.randn(batch, *INPUT_SHAPE)
        with torch.no_grad():
            expected = net(x).numpy()
        got = onnx_predict(session, x, batch_size=4)
        assert got.shape == (batch, 10)
        assert np.abs(got - expected).max() <= 0.1 * np.abs(expected).max()


def test_quantize_nothing_copies_fp32(fp32_path: Path, tmp_path: Path) -> None:
    out = quantize_onnx(
        fp32_path, tmp_path / "copy.onnx", int8_layers=[], calibration=np.zeros((1, 1, 16, 16))
    )
    assert out.read_bytes() == fp32_path.read_bytes()


def test_quantize_unknown_layer_is_an_error(
    fp32_path: Path, calibration: torch.Tensor, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="nope"):
        quantize_onnx(fp32_path, tmp_path / "x.onnx", int8_layers=["nope"], calibration=calibration)


def test_onnx_predict_batches_a_whole_split(fp32_path: Path, inputs: np.ndarray) -> None:
    session = onnx_session(fp32_path, threads=1)
    whole = session.run(["logits"], {"input": inputs})[0]
    np.testing.assert_allclose(onnx_predict(session, inputs, batch_size=32), whole, atol=1e-5)
