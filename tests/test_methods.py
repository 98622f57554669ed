"""The compression-method interface: the registry's order, and a toy method added from
the tests alone running through a real trial (deploy, measure, evaluate, save)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from slimtune.errors import PolicyError
from slimtune.layers import LayerTable
from slimtune.methods import CompressionMethod, methods, register_method, unregister_method
from slimtune.policy import Policy
from slimtune.trial import run_trial
from tests.jobs import tiny_trial_context


class ZeroBias(CompressionMethod):
    """Toy weight method: the listed layers' biases become zero in the deployed model."""

    name = "zero_bias"
    policy_keys = ("zero_bias",)
    stage = "weights"

    def transform_weights(self, model: nn.Module, table: LayerTable, policy: Policy, *,
                          include_8bit: bool = False) -> nn.Module:
        modules = dict(model.named_modules())
        with torch.no_grad():
            for name in policy.choices("zero_bias"):
                modules[name].bias.zero_()
        return model

    def size_bytes(self, model: nn.Module, table: LayerTable, policy: Policy) -> int | None:
        return None


@pytest.fixture
def zero_bias():
    register_method(ZeroBias(), after="deep_compression")
    yield
    unregister_method("zero_bias")


def test_the_order_is_declared_once():
    assert [m.name for m in methods()] == ["channels", "depth", "lowrank", "deep_compression",
                                           "quantization"]
    assert [m.name for m in methods("structure")] == ["channels", "depth", "lowrank"]
    with pytest.raises(ValueError, match="clashes"):
        register_method(ZeroBias.__new__(type("Bits", (ZeroBias,), {"name": "b",
                                                                     "policy_keys": ("bits",)})))


def test_a_toy_method_from_the_tests_runs_through_a_trial(tmp_path, zero_bias):
    assert [m.name for m in methods("weights")] == ["deep_compression", "zero_bias",
                                                    "quantization"]
    ctx = tiny_trial_context(tmp_path)
    policy = Policy(prune={g.name: 0.25 for g in ctx.table.groups}, extra={"zero_bias": {"fc": 1}},
                    model_signature=ctx.table.signature())
    assert policy.to_dict()["zero_bias"] == {"fc": 1}
    assert Policy.from_json(policy.to_json()) == policy  # the plug-in's key round-trips
    row = run_trial(ctx, 0, policy, "test")
    assert row.state in ("ok", "infeasible") and row.stage == "final", row.error
    saved = torch.load(tmp_path / "trials" / "0" / "model.pt", weights_only=True)
    assert torch.count_nonzero(saved["state_dict"]["fc.bias"]) == 0
    assert json.loads((tmp_path / "trials" / "0" / "policy.json").read_text())["zero_bias"]
    with pytest.raises(PolicyError, match="zero_bias of unknown layers: nope"):
        run_trial_policy = Policy(extra={"zero_bias": {"nope": 1}})
        from slimtune.methods.apply import check_policy

        check_policy(ctx.table, run_trial_policy)


def test_an_unregistered_key_is_refused():
    with pytest.raises(ValueError, match="unknown policy keys"):
        Policy.from_dict({"zero_bias": {"fc": 1}})
