"""One weight stage for every path: a trial's weights equal apply_policy's, and every row
of a policy counts its size the same way (issue 13's two inconsistencies)."""

from __future__ import annotations

from dataclasses import replace

import torch

from slimtune.compressed_file import encode_state
from slimtune.deep_compression import compress_weights
from slimtune.finetune import finetune
from slimtune.methods.apply import (
    apply_policy,
    compressed_structure,
    policy_size_bytes,
    weights_as_deployed,
)
from slimtune.policy import Policy
from slimtune.trial import deployed_size_bytes, run_trial
from tests.jobs import tiny_trial_context


def _policy(ctx) -> Policy:
    conv = next(li.name for li in ctx.table.layers if li.kind == "conv")
    return Policy(prune={g.name: 0.25 for g in ctx.table.groups}, bits={conv: 4},
                  sparsity={conv: 0.5}, clusters={conv: 4})


def test_a_trial_and_apply_policy_give_a_layer_with_clusters_and_bits_the_same_weights(
        tmp_path):
    ctx = tiny_trial_context(tmp_path)
    spec = ctx.spec.with_sections(finetune={"steps": 0})
    policy = _policy(ctx)
    teacher = ctx.baseline_model()
    applied = apply_policy(teacher, ctx.table, policy, round_to=1)
    # a trial: structure, its fine-tune (zeros held, weights shared at the end), then the
    # deployed weights (as evaluate_deployed makes them for an int8 runtime)
    trial = compressed_structure(teacher, ctx.table, policy, round_to=1)
    finetune(trial, teacher, ctx.table, policy, spec, ctx.data.train, seed=0)
    weights_as_deployed(trial, ctx.table, policy, include_8bit=False)
    name = next(iter(policy.bits))
    a = dict(applied.named_parameters())[f"{name}.weight"]
    t = dict(trial.named_parameters())[f"{name}.weight"]
    assert torch.equal(a, t)
    for channel in a.detach().flatten(1):  # per-channel rounding keeps <= 4 values a channel
        assert len(torch.unique(channel[channel != 0])) <= 4
    # the old order (round to 4 bits, then cluster) gives other weights: the test bites
    other = compressed_structure(teacher, ctx.table, policy, round_to=1)
    from slimtune.compress import quantize_weights

    quantize_weights(other, ctx.table, policy)
    compress_weights(other, ctx.table, policy)
    assert not torch.equal(dict(other.named_parameters())[f"{name}.weight"], a)


def test_a_row_that_fails_the_gate_counts_its_size_as_a_finished_row_does(tmp_path):
    ctx = tiny_trial_context(tmp_path)
    policy = _policy(ctx)
    structure = compressed_structure(ctx.baseline_model(), ctx.table, policy, round_to=1)
    done = weights_as_deployed(compress_weights(structure, ctx.table, policy), ctx.table,
                               policy)
    container = len(encode_state(done, ctx.table, policy))
    fresh = compressed_structure(ctx.baseline_model(), ctx.table, policy, round_to=1)
    assert deployed_size_bytes(ctx, fresh, policy) == container
    assert policy_size_bytes(done, ctx.table, policy) == container
    # a real gate failure: the infeasible row carries the container's size
    row = run_trial(replace(ctx, budget_ms=1e-9), 0, policy, "test")
    assert row.state == "infeasible" and row.stage == "measured"
    assert row.size_bytes == container
