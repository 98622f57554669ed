"""Sandwich training, checkpoint/resume, the supernet cache and the evaluator's scores,
on tiny nets and synthetic data (seconds)."""

from __future__ import annotations

import copy
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from slimtune.compress import PolicyError, quantize_weights
from slimtune.data import Split, load_dataset
from slimtune.errors import UserInputError
from slimtune.evaluators.supernet import (
    MaskedSupernet,
    SandwichRecipe,
    SupernetCacheError,
    SupernetEvaluator,
    channel_order,
    smallest_policy,
    train_supernet,
)
from slimtune.layers import build_layer_table
from slimtune.models import BUILTIN_ARCHS
from slimtune.policy import Policy
from slimtune.spaces import SearchSpace
from slimtune.train import accuracy, predict

RATIOS = (0.0, 0.5, 0.75)
RECIPE = SandwichRecipe(steps=6, batch_size=32, lr=0.05, n_random=2, seed=3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", train_size=128, val_size=64, test_size=16, seed=0)


def setup(arch: str = "tiny_resnet"):
    torch.manual_seed(0)
    model = BUILTIN_ARCHS[arch]().eval()
    table = build_layer_table(model, (1, 16, 16))
    space = SearchSpace.from_table(table, RATIOS, (32, 8, 4))
    return model, table, space


def fresh(model, table) -> MaskedSupernet:
    return MaskedSupernet(copy.deepcopy(model), table, channel_order(model, table))


def test_sandwich_step_trains_largest_smallest_and_random(data) -> None:
    model, table, space = setup()
    supernet = fresh(model, table)
    seen: list[dict[str, int]] = []
    supernet.register_forward_hook(lambda *_: seen.append(supernet.kept))
    levels: list[int] = []  # distinct weight values of one output channel, per forward
    supernet.model.layer2.conv2.register_forward_pre_hook(  # 16 x 3 x 3 weights a row
        lambda m, _x: levels.append(len(torch.unique(m.weight[0]))))
    before = copy.deepcopy(supernet.model.state_dict())
    train_supernet(supernet, space, data.train, SandwichRecipe(steps=1, n_random=2),
                   key="k", teacher=model)
    full = {g.name: g.channels for g in table.groups}
    assert len(seen) == 4  # largest, smallest, 2 random: one batch, one optimizer step
    assert seen[0] == full
    assert seen[1] == supernet.kept_of(smallest_policy(space)) != full
    assert all(len(s) == len(full) for s in seen[2:])
    assert levels[0] > 100 and levels[1] <= 15  # the largest in float, the smallest at 4 bits
    after = supernet.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert supernet.kept == full and not supernet.training  # left at the largest, eval


def test_resume_continues_from_the_last_checkpoint(data, tmp_path: Path) -> None:
    model, table, space = setup()
    reference = fresh(model, table)
    train_supernet(reference, space, data.train, RECIPE, key="k", teacher=model)

    class Killed(Exception):
        pass

    def kill_after_5(step: int, _policies) -> None:
        if step == 5:
            raise Killed

    ckpt = tmp_path / "k.ckpt"
    first = fresh(model, table)
    with pytest.raises(Killed):
        train_supernet(first, space, data.train, RECIPE, key="k", teacher=model,
                       checkpoint=ckpt, checkpoint_every=2, on_step=kill_after_5)
    steps: list[int] = []
    resumed = fresh(model, table)
    start = train_supernet(resumed, space, data.train, RECIPE, key="k", teacher=model,
                           checkpoint=ckpt, checkpoint_every=2,
                           on_step=lambda s, _p: steps.append(s))
    assert start == 4 and steps == [5, 6]
    for name, tensor in reference.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], tensor, rtol=0,
                                   atol=1e-6)


def test_score_is_memoised_deterministic_and_matches_the_extracted_model(data,
                                                                          tmp_path: Path) -> None:
    model, table, space = setup()
    build = dict(recipe=RECIPE, val_size=48, recal_batches=2, cache=tmp_path)
    evaluator = SupernetEvaluator.build(model, table, space, data.train, data.val, **build)
    assert evaluator.path is not None and evaluator.path.is_file()
    policy = space.uniform(0.5, 32)
    first = evaluator.score(policy)
    assert evaluator.score(policy) == first and len(evaluator.cache) == 1
    evaluator.score(space.uniform(0.75, 32))
    evaluator.cache.clear()
    assert evaluator.score(policy) == first  # recomputed after another policy: the same
    sub = evaluator.model(policy)
    assert sum(p.numel() for p in sub.parameters()) < sum(p.numel() for p in model.parameters())
    assert accuracy(predict(sub, data.val.x[:48]), data.val.y[:48]) == first
    steps: list[int] = []  # a second build loads the cached supernet: no training
    again = SupernetEvaluator.build(model, table, space, data.train, data.val, **build,
                                    on_step=lambda s, _p: steps.append(s))
    assert steps == [] and again.score(policy) == first


def test_mismatched_or_corrupt_cache_is_refused(data, tmp_path: Path) -> None:
    model, table, space = setup()
    recipe = SandwichRecipe(steps=1, batch_size=32)
    a = SupernetEvaluator.build(model, table, space, data.train, data.val, recipe=recipe,
                                cache=tmp_path)
    other, other_table, other_space = setup("tiny_concat")
    probe = SupernetEvaluator.build(other, other_table, other_space, data.train, data.val,
                                    recipe=SandwichRecipe(steps=0), cache=False)
    assert a.path is not None
    shutil.copy(a.path, tmp_path / f"{probe.key}.pt")
    with pytest.raises(SupernetCacheError, match="was made for model") as err:
        SupernetEvaluator.build(other, other_table, other_space, data.train, data.val,
                                recipe=SandwichRecipe(steps=0), cache=tmp_path)
    assert isinstance(err.value, UserInputError) and "\n" not in str(err.value)
    a.path.write_bytes(b"not a torch file")
    with pytest.raises(SupernetCacheError, match="unreadable"):
        SupernetEvaluator.build(model, table, space, data.train, data.val, recipe=recipe,
                                cache=tmp_path)


def test_quantized_supernet_equals_the_quantized_extracted_model(data) -> None:
    model, table, space = setup()
    supernet = fresh(model, table)
    policy = Policy(prune={g.name: 0.5 for g in table.groups},
                    bits={li.name: 4 for li in table.layers}, model_signature=table.signature())
    sub = quantize_weights(supernet.extract(policy), table, policy, include_8bit=True)
    x = data.val.x[:16]
    with torch.no_grad(), supernet.quantized(policy):
        masked = supernet.eval()(x)
    torch.testing.assert_close(masked, sub(x), rtol=0, atol=1e-4)
    with torch.no_grad():  # weights restored after the block
        for name, t in supernet.model.state_dict().items():
            assert torch.equal(t, model.state_dict()[name]) or "running" in name \
                or "num_batches" in name


def test_copies_and_pickles_keep_their_own_masks(data) -> None:
    model, table, space = setup()
    supernet = fresh(model, table).eval()
    supernet.set_policy(space.uniform(0.5, 32))
    x = data.val.x[:8]
    with torch.no_grad():
        half = supernet(x)
        for clone in (copy.deepcopy(supernet), pickle.loads(pickle.dumps(supernet))):
            torch.testing.assert_close(clone(x), half)
            clone.largest()
            torch.testing.assert_close(supernet(x), half)  # the original kept its masks
            assert not torch.allclose(clone(x), half)



def test_dimensions_a_supernet_cannot_score_are_refused(data) -> None:
    model, table, space = setup()
    low_rank = SearchSpace.from_table(table, RATIOS, (32,), rank=(0.5,))
    with pytest.raises(PolicyError, match="rank"):
        SupernetEvaluator.build(model, table, low_rank, data.train, data.val,
                                recipe=SandwichRecipe(steps=0), cache=False)
    evaluator = SupernetEvaluator.build(model, table, space, data.train, data.val,
                                        recipe=SandwichRecipe(steps=0), cache=False)
    layer = next(li.name for li in table.layers if li.kind == "conv")
    with pytest.raises(PolicyError, match="sparsity"):
        evaluator.score(Policy(sparsity={layer: 0.5}))


def test_cache_key_follows_training_data_and_recipe(data) -> None:
    model, table, space = setup()

    def key(train, recipe: SandwichRecipe) -> str:
        return SupernetEvaluator.build(model, table, space, train, data.val, recipe=recipe,
                                       cache=False).key

    base = key(data.train, SandwichRecipe(steps=0))
    assert base == key(data.train, SandwichRecipe(steps=0))
    assert base != key(Split(data.train.x[:64], data.train.y[:64]), SandwichRecipe(steps=0))
    assert base != key(data.train, SandwichRecipe(steps=0, lr=0.5))


CHILD = """
import sys, time, torch
from pathlib import Path
torch.set_num_threads(1)
from tests.test_supernet_training import RECIPE, fresh, setup
from slimtune.data import load_dataset
from slimtune.evaluators.supernet import train_supernet
data = load_dataset("synthetic", train_size=128, val_size=64, test_size=16, seed=0)
model, table, space = setup()
def report(step, _policies):
    print(step, flush=True)
    time.sleep(0.3)
train_supernet(fresh(model, table), space, data.train, RECIPE, key="k", teacher=model,
               checkpoint=Path(sys.argv[1]), checkpoint_every=1, on_step=report)
"""


def test_sigkill_mid_training_resumes_from_the_last_checkpoint(data, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    ckpt = tmp_path / "k.ckpt"
    root = Path(__file__).resolve().parents[1]
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(ckpt)], cwd=root,
                             stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert child.stdout is not None
    for line in child.stdout:
        if int(line) == 2:
            child.send_signal(signal.SIGKILL)
            break
    child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    model, table, space = setup()
    steps: list[int] = []
    start = train_supernet(fresh(model, table), space, data.train, RECIPE, key="k",
                           teacher=model, checkpoint=ckpt, checkpoint_every=1,
                           on_step=lambda s, _p: steps.append(s))
    assert start in (2, 3) and steps == list(range(start + 1, RECIPE.steps + 1))
