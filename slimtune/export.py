"""ONNX export, per-layer mixed int8 quantization and ONNX Runtime inference.

The int8 path is ONNX Runtime static QDQ quantization: on x86 CPUs it is the one that is
actually faster than fp32 (torch eager int8 is not). Layers are named by their torch module
name ("layer1.0.conv1") everywhere; `onnx_node_for_layer` translates to ONNX node names.
"""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import shutil
import tempfile
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
    quant_pre_process,
    quantize_static,
)
from torch import nn

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
#: ONNX ops that implement a torch conv / linear layer and carry its weight.
WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
#: Single-input ops that may sit between a weight initializer and its Conv/Gemm/MatMul.
_WEIGHT_PASSTHROUGH_OPS = ("Identity", "Transpose", "Reshape", "Cast", "DequantizeLinear")
_CALIBRATION_BATCH = 32
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnxruntime", "root")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence exporter/quantizer chatter: Python warnings, prints and library loggers."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: Path, *, opset: int = 18) -> Path:
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


def _weight_source(graph: onnx.GraphProto, tensor: str) -> str:
    """Follow `tensor` back through weight pass-through ops (Transpose, DequantizeLinear...)."""
    producers = {out: node for node in graph.node for out in node.output}
    node = producers.get(tensor)
    while node is not None and node.op_type in _WEIGHT_PASSTHROUGH_OPS:
        tensor = node.input[0]
        node = producers.get(tensor)
    return tensor


def _name_scope(node: onnx.NodeProto) -> str | None:
    """Innermost torch module name recorded by the dynamo exporter, e.g. "layer1.0.conv1"."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = ast.literal_eval(prop.value)  # repr of a list of str; [-1] is the op
            return str(scopes[-2]) if isinstance(scopes, list) and len(scopes) >= 2 else None
    return None


def onnx_node_for_layer(onnx_model: onnx.ModelProto, layer_name: str) -> str | None:
    """Name of the Conv/Gemm/MatMul node implementing torch module `layer_name`, else None.

    Primary key: the weight initializer "<layer_name>.weight" (or its "_quantized" form in a
    QDQ model) feeding the node; it survives BatchNorm folding, whereas the node's name-scope
    metadata then points at the BatchNorm. The name-scope metadata is the fallback for nodes
    whose weight is not a named initializer.
    """
    graph = onnx_model.graph
    weight = f"{layer_name}.weight"
    candidates = [n for n in graph.node if n.op_type in WEIGHT_OPS and len(n.input) >= 2]
    for node in candidates:
        source = _weight_source(graph, node.input[1])
        if source in (weight, f"{weight}_quantized"):
            return node.name
    for node in candidates:
        if _name_scope(node) == layer_name:
            return node.name
    return None
