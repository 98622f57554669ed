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
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir
import onnxruntime as ort
import onnxscript
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
#: Model metadata key naming the exporter that wrote a file (see `export_onnx`).
EXPORTER_KEY = "slimtune.exporter"
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
#: Ops of a static graph, which the TorchScript tracer and the dynamo exporter write alike.
#: No shape arithmetic (Shape, Gather, Concat of sizes), no Pad, Slice, Transpose or MatMul:
#: where those appear the two graphs differ (HF MobileNetV2's dynamic pads run int8 2x slower).
_STATIC_OPS = frozenset({
    "Add", "AveragePool", "BatchNormalization", "Clip", "Concat", "Conv", "Flatten", "Gemm",
    "GlobalAveragePool", "HardSigmoid", "HardSwish", "MaxPool", "Mul", "ReduceMean", "Relu",
    "Reshape", "Sigmoid",
})
#: The module classes of models `_export_traced` gave up on in this process.
_NOT_TRACED: set[frozenset[type]] = set()
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

    `input_shape` excludes the batch dimension, e.g. (1, 28, 28). Two exporters, one graph:
    the TorchScript tracer (a tenth of a second for ResNet-20) is kept when its optimized
    graph is a static one of `_STATIC_OPS` in which every conv/linear layer keeps its weight
    initializer's name, which is then the graph the torch.export ("dynamo") exporter makes
    (same ops, same counts; `benchmarks/latency/exporter_ab.py`). Anything else, or a tracer error,
    goes through the dynamo exporter (2-7 s), whose symbolic shapes keep reshapes, pads and
    attention free of shape arithmetic. Both run the onnxscript optimizer, which folds eval
    BatchNorm into the preceding Conv while keeping the conv's weight initializer name
    ("layer1.0.conv1.weight"), what `onnx_node_for_layer` relies on. Opset 18 is the lowest
    the dynamo exporter implements natively.
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
            if not _export_traced(model, example, path, opset=opset):
                _export_dynamo(model, example, path, opset=opset)
                proto = onnx.load(str(path))
                onnx.helper.set_model_props(proto, {EXPORTER_KEY: "dynamo"})
                onnx.save(proto, str(path))
    finally:
        model.train(was_training)
    return path


def exporter_of(path: Path) -> str | None:
    """Which exporter wrote the slimtune ONNX file `path`: "traced" or "dynamo"."""
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return props.get(EXPORTER_KEY)


def _export_dynamo(model: nn.Module, example: torch.Tensor, path: Path, *, opset: int) -> None:
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


def _export_traced(model: nn.Module, example: torch.Tensor, path: Path, *, opset: int) -> bool:
    """Export with the TorchScript tracer and the onnxscript optimizer; True when the graph
    is a static one (see `export_onnx`) and was written to `path`, False otherwise.

    A model made of the same module classes as one whose graph was not kept is not traced
    again in this process: its pruned variants have the same ops, and tracing an HF
    MobileViT costs 5 s. (A parametrized layer is a class of its own.)
    """
    kinds = frozenset(type(m) for m in model.modules())
    if kinds in _NOT_TRACED:
        return False
    if not _try_traced(model, example, path, opset=opset):
        _NOT_TRACED.add(kinds)
        return False
    return True


def _try_traced(model: nn.Module, example: torch.Tensor, path: Path, *, opset: int) -> bool:
    try:
        buffer = io.BytesIO()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.onnx.export(
                model,
                (example,),
                buffer,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=False,
                do_constant_folding=False,
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
        if any(issubclass(w.category, torch.jit.TracerWarning) for w in caught):
            return False  # e.g. Python control flow on a tensor's value: one path recorded
        traced = onnx_ir.from_proto(onnx.load_from_string(buffer.getvalue()))
        onnxscript.optimizer.optimize(traced)
        traced = onnxscript.rewriter.rewrite(traced)
        onnxscript.optimizer.optimize(traced)
        _global_pool_as_reduce_mean(traced.graph)
        proto = onnx_ir.to_proto(traced)
    except Exception:  # noqa: BLE001 - any tracer failure: the dynamo exporter decides
        return False
    if not {n.op_type for n in proto.graph.node} <= _STATIC_OPS:
        return False
    weights = {f"{name}.weight" for name, _ in model.named_modules()}
    producers = _producers(proto.graph)
    if any(
        _weight_source(producers, node.input[1]) not in weights
        for node in proto.graph.node
        if node.op_type in WEIGHT_OPS
    ):
        return False  # a weight folded into an anonymous initializer: not found by name
    onnx.helper.set_model_props(proto, {EXPORTER_KEY: "traced"})
    onnx.save(proto, str(path))
    return True


def _global_pool_as_reduce_mean(graph: onnx_ir.Graph) -> None:
    """GlobalAveragePool over 4-d tensors as the ReduceMean(axes=[-1, -2]) the dynamo
    exporter writes for the same `mean`/`adaptive_avg_pool2d`, so both graphs are equal."""
    for node in list(graph):
        shape = node.inputs[0].shape if node.op_type == "GlobalAveragePool" else None
        if shape is None or len(shape) != 4 or node.outputs[0].is_graph_output():
            continue
        axes = onnx_ir.Value(
            name=f"{node.name}_axes",
            const_value=onnx_ir.tensor(np.array([-1, -2], dtype=np.int64)),
        )
        graph.register_initializer(axes)
        mean = onnx_ir.node("ReduceMean", [node.inputs[0], axes], {"keepdims": 1}, name=node.name)
        graph.insert_before(node, mean)
        node.outputs[0].replace_all_uses_with(mean.outputs[0])
        graph.remove(node, safe=True)


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
