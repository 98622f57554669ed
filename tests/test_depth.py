"""Elastic depth: droppable blocks found on the zoo, dropped for real, and the masked
supernet with blocks dropped equals the extracted sub-network."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from slimtune.compress import PolicyError, packed_size_bytes
from slimtune.data import Split
from slimtune.depth import droppable_blocks
from slimtune.evaluators.bn import recalibrate_bn
from slimtune.evaluators.supernet import MaskedSupernet, channel_order
from slimtune.evaluators.supernet.sandwich import random_policy, smallest_policy
from slimtune.layers import build_layer_table
from slimtune.methods.apply import check_policy, compressed_structure
from slimtune.models import BUILTIN_ARCHS
from slimtune.policy import Policy
from slimtune.spaces import SearchSpace
from slimtune.spec import SpaceSpec
from tests.test_supernet import FAMILIES, SHAPE

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DROPPABLE = {"mobilenetv2_small", "shufflenet_tiny", "vit_tiny"}  # mobilenet_se: not residual


def _resnet20():
    torch.manual_seed(0)
    model = BUILTIN_ARCHS["resnet20"]().eval()
    return model, build_layer_table(model, SHAPE)


def test_resnet20_may_drop_every_block_but_the_first_of_each_stage():
    model, table = _resnet20()
    assert droppable_blocks(model, table) == ("layer1.1", "layer1.2", "layer2.1", "layer2.2",
                                              "layer3.1", "layer3.2")


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_only_shape_preserving_blocks_are_droppable(name):
    model = FAMILIES[name]().eval()
    table = build_layer_table(model, SHAPE, round_to=4 if name == "resnext_tiny" else 1)
    blocks = droppable_blocks(model, table)
    assert bool(blocks) == (name in DROPPABLE)
    modules = dict(model.named_modules())
    for b in blocks:
        assert not isinstance(modules[b], (nn.Conv2d, nn.Linear))


def test_a_policy_that_skips_blocks_builds_a_shallower_model_that_runs():
    model, table = _resnet20()
    space = SearchSpace.for_spec(SpaceSpec(skip_blocks=True, round_to=8), table, model)
    params = space.params_from_policy(space.uniform(0.5, 8))
    params.update({"skip.layer1.1": 1, "skip.layer2.2": 1})
    policy = space.policy_from_params(params)
    assert policy.skip == ("layer1.1", "layer2.2")
    # the dropped blocks' own choices go with them: equal models, equal keys
    assert not any(k.startswith(("layer1.1.", "layer2.2.")) for k in [*policy.prune,
                                                                       *policy.bits])
    assert Policy.from_json(policy.to_json()) == policy
    built = compressed_structure(model, table, policy, round_to=8)
    assert isinstance(built.layer1[1], nn.Identity) and isinstance(built.layer2[2], nn.Identity)
    assert built(torch.randn(2, *SHAPE)).shape == (2, 10)
    plain = compressed_structure(model, table, space.uniform(0.5, 8), round_to=8)
    assert packed_size_bytes(built, table, policy) < packed_size_bytes(
        plain, table, space.uniform(0.5, 8))
    assert all(set(p.skip) == set(space.skip) for p in space.most_aggressive())
    assert not space.uniform(0.5, 8).skip


def test_depth_is_off_unless_asked_and_old_policies_key_as_before():
    model, table = _resnet20()
    assert SearchSpace.for_spec(SpaceSpec(), table, model).skip == ()
    policy = Policy(prune={"conv1": 0.5})
    assert "skip" not in policy.to_dict() and "skip" not in policy.key()


def test_skipping_a_block_the_model_does_not_have_is_one_clear_error():
    model, table = _resnet20()
    with pytest.raises(PolicyError, match="skips blocks holding no layer: layer9.1"):
        check_policy(table, Policy(skip=("layer9.1",)))


@pytest.mark.parametrize("name", sorted(DROPPABLE | {"resnet20"}))
def test_masked_supernet_with_blocks_dropped_equals_the_extracted_subnetwork(name):
    torch.manual_seed(0)
    model = (FAMILIES.get(name) or BUILTIN_ARCHS[name])().eval()
    table = build_layer_table(model, SHAPE)
    space = SearchSpace.from_table(table, (0.0, 0.25, 0.5), (32,),
                                   blocks=droppable_blocks(model, table))
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randn(64, *SHAPE, generator=g), torch.randint(0, 10, (64,), generator=g))
    supernet = MaskedSupernet(model, table, channel_order(model, table))
    rng = random.Random(name)
    policies = [smallest_policy(space, quantize=False),
                *(random_policy(space, rng, quantize=False) for _ in range(2))]
    for policy in policies:
        supernet.set_policy(policy)
        assert supernet.skipped == policy.skip
        recalibrate_bn(supernet, split, batches=2, batch_size=32)
        sub = supernet.extract()
        with torch.no_grad():
            torch.testing.assert_close(supernet(split.x[:16]), sub(split.x[:16]),
                                       rtol=0, atol=1e-4)
    assert set(policies[0].skip) == set(space.skip)
    supernet.largest()
    assert supernet.skipped == ()
    with torch.no_grad():
        largest = supernet(split.x[:16])
        with supernet.detached() as plain:  # no block left dropped, no mask left set
            torch.testing.assert_close(largest, plain(split.x[:16]))
