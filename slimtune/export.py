"""ONNX export, per-layer mixed int8 quantization and ONNX Runtime inference.

The int8 path is ONNX Runtime static QDQ quantization: on x86 CPUs it is the one that is
actually faster than fp32 (torch eager int8 is not). Layers are named by their torch module
name ("layer1.0.conv1") everywhere; `onnx_node_for_layer` translates to ONNX node names.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from torch import nn

from slimtune.split import Split

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
#: ONNX ops that implement a torch conv / linear layer and carry its weight.
WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
#: Single-input ops that may sit between a weight initializer and its Conv/Gemm/MatMul.
_WEIGHT_PASSTHROUGH_OPS = ("Identity", "Transpose", "Reshape", "Cast", "DequantizeLinear")
#: ORT graph optimizers every slimtune session disables. WeightBiasQuantization (level 1, on by
#: default) silently turns an fp32 Conv/Gemm into a per-tensor int8 one whenever its input comes
#: from a DequantizeLinear and its output leads to a QuantizeLinear, i.e. any layer left fp32
#: between quantized neighbours; `nodes_to_exclude` alone therefore does not keep it fp32.
#: Disabling it is harmless otherwise: `quantize_onnx` already quantizes int8 layers' weights.
ORT_DISABLED_OPTIMIZERS = frozenset({"WeightBiasQuantization"})
_CALIBRATION_BATCH = 32
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnxruntime")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence exporter/quantizer chatter (Python warnings, library loggers) for a moment.

    The root logger gets a NullHandler meanwhile because ORT's quantizer logs through
    `logging.warning`, which would otherwise install a permanent stderr handler on root.
    """
    root = logging.getLogger()
    loggers = [root, *(logging.getLogger(name) for name in _NOISY_LOGGERS)]
    levels = [lg.level for lg in loggers]
    null = logging.NullHandler()
    root.addHandler(null)
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeHandler(null)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx(
    model: nn.Module, input_shape: tuple[int, ...], path: Path, *, opset: int = 18
) -> Path:
    """Export `model` in eval mode to a self-contained ONNX file with a dynamic batch dim.

    `input_shape` excludes the batch dimension, e.g. (1, 28, 28). Uses the torch.export
    ("dynamo") exporter, whose onnxscript optimizer folds eval BatchNorm into the preceding
    Conv while keeping the conv's weight initializer name ("layer1.0.conv1.weight"), which is
    what `onnx_node_for_layer` relies on. Opset 18 is the lowest the exporter implements
    natively; lower opsets need a version conversion that fails on ReduceMean.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    example = torch.randn(
        2,
        *input_shape,
        device=param.device if param is not None else None,
        dtype=param.dtype if param is not None else None,
    )
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
            )
    finally:
        model.train(was_training)
    return path


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _weight_source(producers: dict[str, onnx.NodeProto], tensor: str) -> str:
    """Follow `tensor` back through weight pass-through ops (Transpose, DequantizeLinear...)."""
    node = producers.get(tensor)
    while node is not None and node.op_type in _WEIGHT_PASSTHROUGH_OPS:
        tensor = node.input[0]
        node = producers.get(tensor)
    return tensor


def _name_scope(node: onnx.NodeProto) -> str | None:
    """Innermost torch module recorded by the dynamo exporter, e.g. "layer1.0.conv1".

    None for nodes the exporter's optimizer fused a BatchNorm into: their scope is the BN's.
    """
    props = {p.key: p.value for p in node.metadata_props}
    if "BatchNorm" in props.get("pkg.onnxscript.rewriter.rule_name", ""):
        return None
    scopes = ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))  # [..., op]
    return str(scopes[-2]) if len(scopes) >= 2 else None


def onnx_node_for_layer(onnx_model: onnx.ModelProto, layer_name: str) -> str | None:
    """Name of the Conv/Gemm/MatMul node implementing torch module `layer_name`, else None.

    Primary key: the weight initializer "<layer_name>.weight" (or its "_quantized" form in a
    QDQ model) feeding the node; it survives BatchNorm folding, whereas the node's name-scope
    metadata then points at the BatchNorm. The name-scope metadata is the fallback for
    BN-free nodes whose weight is computed (e.g. a parametrization), which the exporter
    constant-folds into an anonymous initializer. A BN-fused conv with a computed weight (e.g.
    an unremoved `torch.nn.utils.prune` mask) cannot be identified and gives None.
    """
    graph = onnx_model.graph
    producers = _producers(graph)
    weight = f"{layer_name}.weight"
    candidates = [n for n in graph.node if n.op_type in WEIGHT_OPS and len(n.input) >= 2]
    for node in candidates:
        if _weight_source(producers, node.input[1]) in (weight, f"{weight}_quantized"):
            return node.name
    for node in candidates:
        if _name_scope(node) == layer_name:
            return node.name
    return None


class _BatchReader(CalibrationDataReader):
    """Feeds the calibration examples to ORT's calibrator in mini-batches: slices of an
    array, or a split's loader (read as the calibrator asks, a batch at a time)."""

    def __init__(self, examples: np.ndarray | Split, batch_size: int = _CALIBRATION_BATCH) -> None:
        if isinstance(examples, Split):
            self._batches = (_as_float32(b.x) for b in examples.loader(batch_size))
        else:
            n = len(examples)
            self._batches = (examples[i : i + batch_size] for i in range(0, n, batch_size))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def _as_float32(x: np.ndarray | torch.Tensor) -> np.ndarray:
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return np.ascontiguousarray(array, dtype=np.float32)


def quantize_onnx(
    fp32_path: Path,
    out_path: Path,
    *,
    int8_layers: Sequence[str],
    calibration: np.ndarray | torch.Tensor | Split,
    per_channel: bool = True,
) -> Path:
    """Statically quantize the Conv/Gemm/MatMul nodes of `int8_layers` to int8, the rest fp32.

    `int8_layers` are torch module names; a factorised layer is its two factors
    (`name.0`, `name.1`), as `slimtune.methods.quantization.int8_layers(policy, model)` lists them.

    ORT QDQ format with QUInt8 activations, QInt8 weights and `reduce_range=True` (7-bit
    weights: no accumulator saturation on x86 CPUs without VNNI), calibrated with MinMax on
    `calibration` (a batch of training inputs, batch dim first). Glue ops (Add, Relu, pooling)
    are quantized too, so an all-int8 model runs as QLinearConv/QLinearAdd chains; the weight
    nodes of every other layer are excluded. Run the result with `onnx_session`: a default ORT
    session re-quantizes excluded layers that sit between quantized tensors (see
    `ORT_DISABLED_OPTIMIZERS`).
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if not int8_layers:
        shutil.copyfile(fp32_path, out_path)
        return out_path
    model = onnx.load(str(fp32_path))
    int8_nodes = set()
    for layer in int8_layers:
        node = onnx_node_for_layer(model, layer)
        if node is None:
            raise ValueError(f"no Conv/Gemm/MatMul node for layer {layer!r} in {fp32_path}")
        int8_nodes.add(node)
    fp32_nodes = {
        n.name for n in model.graph.node if n.op_type in WEIGHT_OPS and n.name not in int8_nodes
    }
    examples = calibration if isinstance(calibration, Split) else _as_float32(calibration)
    with _quiet():
        quantize_static(
            str(fp32_path),
            str(out_path),
            _BatchReader(examples),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=sorted(fp32_nodes),
            calibrate_method=CalibrationMethod.MinMax,
        )
    return out_path


def onnx_session(path: Path, *, threads: int) -> ort.InferenceSession:
    """A CPU session pinned to `threads` intra-op threads, sequential, fully optimized, quiet.

    Also disables `ORT_DISABLED_OPTIMIZERS`, so fp32 layers of a mixed model stay fp32.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(
        str(path),
        options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=set(ORT_DISABLED_OPTIMIZERS),
    )


def onnx_predict(
    session: ort.InferenceSession, x: np.ndarray | torch.Tensor | Split, batch_size: int = 256
) -> np.ndarray:
    """Logits for all of `x` (a tensor in batches of `batch_size`, or a split streamed in
    its own batches)."""
    if isinstance(x, Split):
        return np.concatenate(
            [session.run([OUTPUT_NAME], {INPUT_NAME: _as_float32(b.x)})[0] for b in x.loader()]
        )
    data = _as_float32(x)
    return np.concatenate(
        [
            session.run([OUTPUT_NAME], {INPUT_NAME: data[i : i + batch_size]})[0]
            for i in range(0, len(data), batch_size)
        ]
    )
