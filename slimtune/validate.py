"""The checks that need no compute: spec, tracking store, dataset, model, weights."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from torch import nn

from slimtune.baseline import build_model
from slimtune.data import Dataset, check_dataset, load_dataset
from slimtune.errors import UserInputError
from slimtune.layers import LayerTable, build_layer_table
from slimtune.models import load_weights, output_note
from slimtune.spec import JobSpec
from slimtune.tracking import check_tracking_uri


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
        from slimtune.targets import check_local_threads

        check_local_threads(spec.target.threads)
    check_dataset(spec.data.dataset)
    d = spec.data
    data = load_dataset(d.dataset, train_size=d.train_size, val_size=d.val_size,
                        test_size=d.test_size, seed=spec.baseline.seed)
    model = build_model(spec.model, num_classes=data.num_classes,
                        in_channels=data.input_shape[0], input_shape=data.input_shape)
    if spec.model.weights is not None:
        load_weights(model, spec.model.weights)
    table = build_layer_table(model, data.input_shape, round_to=spec.space.round_to)
    if not table.groups:
        raise UserInputError(f"model {spec.model.describe()}: no prunable layer found")
    if spec.finetune.hint_layers:
        from slimtune.hints import hint_layer_names

        hint_layer_names(table, spec.finetune.hint_layers)  # HintLayerError: one line
    note = output_note(model)
    if note:  # only once every check has passed
        print(f"slimtune: {note}", file=sys.stderr, flush=True)
    return CheckedInputs(data, model, table)


def validate_job(spec: JobSpec) -> str:
    """``slimtune validate``: check the inputs and summarise the job in one line."""
    checked = check_inputs(spec)
    data, table = checked.data, checked.table
    budget = (f"{spec.budget.latency_ms} ms" if spec.budget.latency_ms is not None
              else f"{spec.budget.latency_fraction:g} x baseline latency")
    return (f"ok: {spec.name}: {spec.model.describe()} ({table.params / 1e3:.1f}k params, "
            f"{table.macs / 1e6:.2f}M MACs, {len(table.groups)} channel groups, "
            f"{len(table.layers)} layers) on {spec.data.dataset} ({len(data.train)}/"
            f"{len(data.val)}/{len(data.test)} train/val/test), budget {budget} on "
            f"{spec.target.runtime}, {spec.search.trials} trials of {spec.search.searcher}")
