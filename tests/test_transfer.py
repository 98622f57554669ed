"""Carrying a policy to another model by layer features, and warm-start files."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from slimtune.agents.transfer import carry_policy, check_warm_start, read_policy_file
from slimtune.errors import UserInputError
from slimtune.layers import build_layer_table
from slimtune.models import build_builtin
from slimtune.policy import Policy
from slimtune.spaces import SearchSpace

RATIOS, BITS = (0.0, 0.25, 0.5, 0.75), (32, 8)


def _space(arch: str) -> SearchSpace:
    model = build_builtin(arch, num_classes=10, in_channels=1).eval()
    return SearchSpace.from_table(build_layer_table(model, (1, 28, 28)), RATIOS, BITS)


@pytest.fixture(scope="module")
def r20():
    return _space("resnet20")


@pytest.fixture(scope="module")
def r32():
    return _space("resnet32")


def _depth_policy(space: SearchSpace) -> Policy:
    """Prune deep groups hard and shallow ones not at all; int8 in the second half."""
    t = space.table
    depth = {li.name: li.depth for li in t.layers}
    prune = {g.name: (0.75 if depth[g.name] > 0.5 else 0.0) for g in t.groups}
    bits = {li.name: 8 for li in t.layers if li.depth > 0.5}
    return Policy(prune={g: r for g, r in prune.items() if r}, bits=bits,
                  model_signature=t.signature())


def test_carried_policy_keeps_the_depth_profile(r20, r32):
    carried, matches = carry_policy(_depth_policy(r20), r20.table, r32)
    assert carried.model_signature == r32.table.signature()
    assert r32.contains(carried)
    assert len(matches) == len(r32.table.layers)
    for m in matches:
        assert m.kind == r32.table.layer(m.target).kind
        assert abs(m.target_depth - m.source_depth) < 0.1
    for li in r32.table.layers:
        if li.depth > 0.55:
            assert carried.bits_of(li.name) == 8
        if li.depth < 0.45:
            assert carried.bits_of(li.name) == 32
            if li.group == li.name:
                assert carried.ratio(li.group) == 0.0
    assert any(r == 0.75 for r in carried.prune.values())
    assert "<-" in matches[0].describe()


def test_same_model_policy_is_used_as_is(r20, tmp_path):
    policy = _depth_policy(r20)
    policy.save(tmp_path / "policy.json")
    got, source = read_policy_file(tmp_path / "policy.json", r20.table)
    assert got == policy and source is r20.table


def test_other_model_policy_needs_its_layer_table(r20, r32, tmp_path):
    _depth_policy(r20).save(tmp_path / "policy.json")
    with pytest.raises(UserInputError, match="layers.json"):
        check_warm_start(tmp_path / "policy.json", r32.table)
    (tmp_path / "layers.json").write_text(json.dumps(r20.table.to_dict()))
    policy, source = read_policy_file(tmp_path / "policy.json", r32.table)
    assert source.signature() == r20.table.signature()


def test_bad_warm_start_files(r20, tmp_path):
    (tmp_path / "bad.json").write_text("{\"prune\": {\"x\": 3}}")
    for path in (tmp_path / "missing.json", tmp_path / "bad.json", tmp_path / "missing.zip"):
        with pytest.raises(UserInputError) as err:
            check_warm_start(path, r20.table)
        assert "\n" not in str(err.value)


def test_rank_sparsity_and_recipe_are_carried_where_the_space_has_them(r20):
    from slimtune.agents.transfer import dropped_dimensions

    r32 = SearchSpace.from_table(_space("resnet32").table, (0.0, 0.5), (32, 8),
                                 round_to=4, rank=(0.25, 0.5), sparsity=(0.5,))
    deep = [li.name for li in r20.table.layers if li.depth > 0.5]
    policy = replace(_depth_policy(r20), rank=dict.fromkeys(deep, 0.3),
                     sparsity=dict.fromkeys(deep, 0.6), clusters=dict.fromkeys(deep, 16),
                     recipe={"distill": False})
    carried, _ = carry_policy(policy, r20.table, r32)
    assert carried.rank and set(carried.rank.values()) == {0.25}  # snapped to the choices
    assert carried.rank.keys() <= r32.rank.keys()
    assert set(carried.sparsity.values()) == {0.5} and not carried.clusters
    assert carried.recipe == {"distill": False}
    assert r32.contains(replace(carried, recipe={}))
    assert dropped_dimensions(policy, r32) == ["clusters", "recipe"]
