"""The checks before compute: spec, tracking store, dataset, model, weights, one forward,
one ONNX export run in ONNX Runtime; ``slimtune validate`` also probes every channel group
of the space (:mod:`slimtune.probe`: each pruned at its largest ratio, run forward,
exported to ONNX and run on the target)."""

from __future__ import annotations

import contextlib
import io
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from slimtune.baseline import build_model
from slimtune.data import Dataset
from slimtune.device import training_device
from slimtune.errors import UserInputError
from slimtune.imports import one_line
from slimtune.layers import LayerTable, build_layer_table
from slimtune.models import ModelError, load_weights, output_note
from slimtune.objective import Objective
from slimtune.probe import probed_space
from slimtune.results.tracking import check_tracking_uri
from slimtune.spec import JobSpec
from slimtune.userdata import load_data


@dataclass(frozen=True)
class CheckedInputs:
    """A spec's data, model (with the user's weights if any) and layer table."""

    data: Dataset
    model: nn.Module
    table: LayerTable


def check_inputs(spec: JobSpec) -> CheckedInputs:
    """Load and check what the spec names; raises UserInputError with one line."""
    check_tracking_uri(spec.tracking_uri)
    if spec.target.is_local:  # a remote target's cores are checked once Ray is up
        from slimtune.measurement.targets import check_local_threads

        check_local_threads(spec.target.threads)
        spec.target.backend.versions()  # its library is installed here, else one line
    training_device(spec.train.device)  # cuda without CUDA: one line, before the data
    objective = Objective.of(spec)
    objective.imports()  # a metric or loss that does not import: one line, before the data
    data = load_data(spec.data, seed=spec.baseline.seed, task=spec.task)
    model = build_model(spec.model, num_classes=data.num_classes,
                        in_channels=data.input_shape[0], input_shape=data.input_shape)
    if spec.model.weights is not None:
        load_weights(model, spec.model.weights)
    if objective.logits:
        check_logits(model, data, spec.model.describe())
        check_onnx(model, data, spec.model.describe())
    probe = data.train.first(2).loader().__iter__().__next__()
    objective.check(model, probe.x, probe.y)  # the metric returns a number, the loss a scalar
    skipped = "" if objective.logits or not spec.evaluate else (
        f"task custom: the behaviour metrics ({', '.join(spec.evaluate)}) need class logits; "
        "skipped")
    table = build_layer_table(model, data.input_shape, round_to=spec.space.round_to)
    if not table.groups and len(spec.space.bits) < 2:  # bit-widths alone may be searched
        raise UserInputError(f"model {spec.model.describe()}: no prunable layer found")
    if spec.finetune.hint_layers:
        from slimtune.hints import hint_layer_names

        hint_layer_names(table, spec.finetune.hint_layers)  # HintLayerError: one line
    for note in (*data.notes, output_note(model), skipped):  # only once every check has passed
        if note:
            print(f"slimtune: {note}", file=sys.stderr, flush=True)
    return CheckedInputs(data, model, table)


def check_logits(model: nn.Module, data: Dataset, what: str) -> None:
    """The model maps a batch of the data to N x classes logits, one per class at least."""
    was_training = model.training
    try:
        with torch.no_grad():
            logits = model.eval()(data.train.head(2).x)
    except Exception as e:
        raise ModelError(f"model {what}: its forward failed on a batch of the data "
                         f"(shape {[2, *data.train.example_shape]}): {type(e).__name__}: "
                         f"{one_line(e)}") from e
    finally:
        model.train(was_training)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ModelError(f"model {what}: its output on a batch of 2 is {shape}, not "
                         "N x classes logits")
    if logits.shape[1] < data.num_classes:
        raise ModelError(f"model {what} outputs {logits.shape[1]} logits per example but "
                         f"the data has {data.num_classes} classes (labels 0 .. "
                         f"{data.num_classes - 1}): build it with num_classes")


def _classes(spec: JobSpec, data: Dataset) -> str:
    if spec.task == "classification":
        return f"{data.num_classes} classes"
    if data.class_names:
        return f"task custom on {data.num_classes} classes"
    return f"task custom, targets of {data.num_classes} values"


def _error_text(err: BaseException, limit: int = 240) -> str:
    """``err`` (or the error that caused it, which names the problem better: torch.export
    wraps its own) as one short line without terminal colours."""
    cause = err.__cause__ if isinstance(err.__cause__, Exception) else err
    text = re.sub(r"\x1b\[[0-9;]*m", "", one_line(cause))
    return f"{type(cause).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def check_onnx(model: nn.Module, data: Dataset, what: str) -> None:
    """The model exports to ONNX as every trial deploys it, ONNX Runtime runs the file on a
    batch of the data, and its logits are torch's (a forward may take another path while
    exported, or read state the trace turns into a constant)."""
    from slimtune.export import export_onnx, onnx_predict, onnx_session

    x = data.train.head(2).x
    with tempfile.TemporaryDirectory(prefix="slimtune-validate-") as tmp:
        try:  # a failing torch.export prints its traced graph on stderr; the error says it
            with contextlib.redirect_stderr(io.StringIO()):
                path = export_onnx(model, data.input_shape, Path(tmp) / "model.onnx")
        except Exception as e:
            raise ModelError(f"model {what}: ONNX export (torch.onnx.export, dynamo) failed, "
                             f"so no trial could be deployed: {_error_text(e)}") from e
        try:
            got = onnx_predict(onnx_session(path, threads=1), x)
        except Exception as e:
            raise ModelError(f"model {what}: ONNX Runtime cannot run the exported model: "
                             f"{_error_text(e)}") from e
    was_training = model.training
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    model.train(was_training)
    diff = float(abs(got - expected).max()) if got.shape == expected.shape else float("inf")
    if not diff <= 1e-3 + 1e-3 * float(abs(expected).max()):
        raise ModelError(f"model {what}: ONNX Runtime's logits differ from torch's on a batch "
                         f"of the data (largest difference {diff:.3g}): its forward takes "
                         "another path when exported, or reads state the trace turns into a "
                         "constant, so the deployed model would compute other logits")


def validate_job(spec: JobSpec) -> str:
    """``slimtune validate``: check the inputs and summarise the job in one line."""
    checked = check_inputs(spec)
    data, table = checked.data, checked.table
    space, probe = probed_space(spec, checked.model, table, _say)
    searched = sum(len(rs) > 1 for rs in space.ratios.values())
    budget = (f"{spec.budget.latency_ms} ms" if spec.budget.latency_ms is not None
              else f"{spec.budget.latency_fraction:g} x baseline latency")
    return (f"ok: {spec.name}: {spec.model.describe()} ({table.params / 1e3:.1f}k params, "
            f"{table.macs / 1e6:.2f}M MACs, {searched} of {len(table.groups)} channel groups "
            f"searched, probed in {probe.seconds:.1f} s, "
            f"{len(table.layers)} layers) on {spec.data.describe()} ({len(data.train)}/"
            f"{len(data.val)}/{len(data.test)} train/val/test, "
            f"{_classes(spec, data)}, "
            f"input {'x'.join(map(str, data.input_shape))}), budget {budget} on "
            f"{spec.target.runtime}, {_search(spec)}")


def _say(message: str) -> None:
    print(f"slimtune: {message}", file=sys.stderr, flush=True)


def _search(spec: JobSpec) -> str:
    s = spec.search
    if s.evaluator == "finetune":
        return f"{s.trials} trials of {s.searcher}"
    return (f"{s.candidates} candidates of {s.searcher} scored by {s.evaluator}, the best "
            f"{s.trials} timed, the top {spec.finalize.top_k} fine-tuned")
