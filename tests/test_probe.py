"""Every choice the space offers works: the group probe, space.exclude, grouped convs,
ShuffleNet-style tracing, and carried policies that never pick a removed group."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_pruning as tp
from torch import nn

from slimtune.agents.transfer import carry_policy, warm_start_policy
from slimtune.cli import main
from slimtune.errors import SpecError
from slimtune.export import export_onnx, onnx_predict, onnx_session
from slimtune.layers import build_layer_table, untraced_groups
from slimtune.methods.apply import apply_policy, prune_structure
from slimtune.models import build_builtin
from slimtune.models.unseen import resnext_g8, shufflenet_v2
from slimtune.policy import Policy
from slimtune.probe import probe_groups
from slimtune.runtimes import get_runtime
from slimtune.spaces import SearchSpace
from slimtune.spec import SpaceSpec
from tests.jobs import write_job

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (1, 28, 28)
ORT = get_runtime("onnxruntime")


class Flipped(nn.Module):
    """``flip``'s channels are reversed before ``mix``: torch-pruning does not know flip,
    so pruning ``flip`` removes the wrong input channels of ``mix`` and the pruned model
    runs but computes something else. ``stem`` is an ordinary group."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.flip = nn.Conv2d(8, 8, 3, padding=1)
        self.mix = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 10)
        with torch.no_grad():  # channels 0-3 the weakest: pruned, and flip moves them to 4-7
            self.flip.weight[:4] *= 0.01
            self.flip.bias[:4] *= 0.01
            self.mix.weight[:, :4] *= 0.01

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.flip(torch.relu(self.stem(x))).flip(1)
        return self.fc(self.mix(y).mean(dim=(2, 3)))


def _space(model: nn.Module, **spec) -> SearchSpace:
    table = build_layer_table(model, SHAPE, round_to=spec.get("round_to", 4))
    return SearchSpace.for_spec(SpaceSpec(**spec), table, model)


def test_probe_removes_a_broken_group_with_one_line() -> None:
    torch.manual_seed(0)
    model = Flipped().eval()
    space = _space(model)
    assert {"stem", "flip", "mix"} <= set(space.ratios)
    report = probe_groups(model, space.table, space.ratios, ORT, round_to=4)
    assert [f.group for f in report.failed] == ["flip"]
    assert report.failed[0].step == "masked reference"
    lines = report.lines()
    assert len(lines) == 1 and "'flip'" in lines[0] and "left out of the space" in lines[0]
    assert "\n" not in lines[0]
    assert "2 of 3 channel groups" in report.summary()
    again = probe_groups(model, space.table, space.ratios, ORT, round_to=4)  # kept per
    assert again.cached and again.failed == report.failed  # architecture in the process
    pruned = space.without(groups=report.removed)
    assert pruned.ratios["flip"] == (0.0,) and len(pruned.ratios["stem"]) > 1
    assert "prune.flip" in pruned.left_out
    # nothing the pruned space proposes prunes it
    assert all("flip" not in p.prune for p in pruned.most_aggressive())
    assert "flip" not in pruned.uniform(0.75, 8).prune


def test_probe_catches_a_model_that_no_longer_runs() -> None:
    """A reshape into a fixed count of 4: pruning ``stem`` leaves a model that fails."""

    class FixedReshape(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 8, 3, padding=1)
            self.mix = nn.Conv2d(8, 8, 1)
            self.fc = nn.Linear(8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.stem(x)
            y = y.reshape(y.shape[0], 4, 2, 28, 28).mean(2).repeat_interleave(2, 1)
            return self.fc(self.mix(y).mean(dim=(2, 3)))

    model = FixedReshape().eval()
    space = _space(model)
    report = probe_groups(model, space.table, space.ratios, ORT, round_to=4)
    assert "stem" in {f.group for f in report.failed}
    assert "mix" not in {f.group for f in report.failed}


def test_exclude_globs_leave_layers_as_they_are() -> None:
    model = build_builtin("tiny_resnet", 10, 1).eval()
    full = _space(model, round_to=1)
    space = _space(model, round_to=1, exclude=["layer1.*", "conv1"])
    excluded = [li for li in space.table.layers
                if li.name.startswith("layer1.") or li.name == "conv1"]
    assert excluded
    for li in excluded:
        assert space.bits[li.name] == (32,)
        assert space.ratios[li.group] == (0.0,) if li.group else True
        assert f"bits.{li.name}" in space.left_out
    others = [li for li in space.table.layers if li not in excluded]
    assert all(space.bits[li.name] == full.bits[li.name] for li in others)
    untouched = {li.group for li in others if li.group} - {li.group for li in excluded}
    assert untouched and all(space.ratios[g] == full.ratios[g] for g in untouched)
    policy = space.uniform(0.5, 8)  # uniform and the fastest models keep them fp32
    assert not set(policy.bits) & {li.name for li in excluded}
    assert all(li.name not in p.bits for p in space.most_aggressive() for li in excluded)


def test_exclude_matching_nothing_is_a_one_line_spec_error(tmp_path, capsys) -> None:
    model = build_builtin("tiny_resnet", 10, 1).eval()
    with pytest.raises(SpecError, match="'nope.*' matches no layer"):
        _space(model, exclude=["conv1", "nope.*"])
    job = write_job(tmp_path, space={"exclude": ["layer9.*"]})
    assert main(["validate", str(job)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("slimtune: error: space.exclude: 'layer9.*' matches no layer")
    assert not (tmp_path / "mlruns.db").exists()


def test_carried_policy_never_chooses_a_removed_group(tmp_path) -> None:
    source_model = build_builtin("tiny_resnet", 10, 1).eval()
    source = _space(source_model, round_to=1)
    everything = Policy(prune={g: 0.5 for g in source.ratios},
                        bits={n: 8 for n in source.bits},
                        model_signature=source.table.signature())
    torch.manual_seed(0)
    model = Flipped().eval()
    space = _space(model, round_to=1)
    report = probe_groups(model, space.table, space.ratios, ORT, round_to=1)
    space = space.without(groups=report.removed)
    carried, _ = carry_policy(everything, source.table, space)
    assert "flip" not in carried.prune and carried.prune  # the others are carried
    # a policy made for this very model, saved before the probe ran: set back, said so
    mine = Policy(prune={"flip": 0.5, "stem": 0.5}, model_signature=space.table.signature())
    path = tmp_path / "policy.json"
    mine.save(path)
    warm, lines = warm_start_policy(path, space, problem_factory=lambda: None)
    assert warm.prune == {"stem": 0.5}
    assert any("prune.flip" in line and "not in this job's space" in line for line in lines)


def test_agent_steps_never_choose_what_the_space_leaves_out(tmp_path) -> None:
    """The AMC env (what agents act in) offers a removed group ratio 0 only and an
    excluded layer 32 bits only, whatever the agent proposes."""
    from dataclasses import replace

    from slimtune.envs.episode import Choice, PolicyBuilder
    from tests.envs_helpers import make_problem

    problem = make_problem(tmp_path, budget_fraction=10.0)
    removed = problem.table.groups[0].name
    excluded = problem.table.layers[-1].name
    space = problem.space.without(groups={removed: "probe"}, layers={excluded: "exclude"})
    builder = PolicyBuilder(replace(problem, space=space))
    while not builder.done:
        builder.decide(Choice(0.75, 8))
    policy = builder.policy()
    assert removed not in policy.prune and policy.prune
    assert excluded not in policy.bits and policy.bits


@pytest.fixture(scope="module")
def resnext() -> tuple[nn.Module, SearchSpace]:
    torch.manual_seed(0)
    model = resnext_g8().eval()
    return model, _space(model)


def test_resnext_grouped_convs_prune_group_wise(resnext) -> None:
    model, space = resnext
    grouped = [li for li in space.table.layers if li.kind == "conv" and li.groups == 8]
    assert len(grouped) == 3
    for li in grouped:  # both the group feeding it and its own keep multiples of 8
        assert space.table.group(li.group).conv_groups == 8
    feeding = space.table.group("features.2.body.0.0")  # the group of the issue
    assert feeding.conv_groups == 8 and len(space.ratios[feeding.name]) > 1
    for ratio in space.ratios[feeding.name]:
        pruned = prune_structure(model, space.table, Policy(prune={feeding.name: ratio}),
                                 round_to=4)
        conv = pruned.features[2].body[1][0]
        assert conv.groups == 8 and conv.in_channels % 8 == 0
        with torch.no_grad():
            assert pruned(torch.randn(2, *SHAPE)).shape == (2, 10)


def test_resnext_probe_passes_every_group_and_matches_ort(resnext, tmp_path) -> None:
    model, space = resnext
    report = probe_groups(model, space.table, space.ratios, ORT, round_to=4)
    assert report.failed == () and len(report.probed) == len(space.table.groups)
    policy = space.most_aggressive()[0]
    pruned = apply_policy(model, space.table, policy, round_to=4).eval()
    assert all(m.in_channels % 8 == 0 for m in pruned.modules()
               if isinstance(m, nn.Conv2d) and m.groups == 8)
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        ref = pruned(x).numpy()
    out = onnx_predict(onnx_session(export_onnx(pruned, SHAPE, tmp_path / "m.onnx"),
                                    threads=1), x)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_shufflenet_traces_what_it_can_and_searches_bits_everywhere() -> None:
    """torch-pruning's graph build raises ZeroDivisionError on this model's shuffle: the
    groups through it are left out with a line, the rest prune, every layer gets bits."""
    from torch_pruning.dependency import index_mapping

    original = index_mapping.update_reshape_index_mapping
    torch.manual_seed(0)
    model = shufflenet_v2().eval()
    with pytest.raises(ZeroDivisionError):  # what the user saw
        tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, *SHAPE))
    space = _space(model)
    assert index_mapping.update_reshape_index_mapping is original  # patched only meanwhile
    untraced = untraced_groups(model, SHAPE)
    left = {n for u in untraced for n in u.layers}
    assert {"stage.0.left.1.0", "stage.1.branch.2.0"} <= left
    assert all("reshape" in u.reason for u in untraced)
    assert not left & set(space.ratios)
    assert {"stem.0", "stage.1.branch.0.0", "last.0"} <= set(space.ratios)
    assert set(space.bits) == {li.name for li in space.table.layers}  # bits for every layer
    report = probe_groups(model, space.table, space.ratios, ORT, round_to=4)
    assert report.failed == ()
    lines = report.lines()
    assert any("stage.0.left.1.0" in line and "bit-widths are still searched" in line
               for line in lines)


def test_validate_probes_the_groups(tmp_path, capsys) -> None:
    job = write_job(tmp_path, space={"exclude": ["fc"]})
    assert main(["validate", str(job)]) == 0
    captured = capsys.readouterr()
    assert "channel groups searched, probed in" in captured.out
    assert not captured.err  # every group works: nothing to say


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnext_g8", "shufflenet_v2"])
def test_run_uniform_on_unseen_models(tmp_path, capsys, arch) -> None:
    """The issue's jobs: ``slimtune run``, uniform, on the unseen models. The budget is
    loose: ShuffleNetV2's pruned model measured 0.80x of its baseline once, and a loaded
    machine's noise put it over a 0.9x budget in another run. Three trials, not the
    issue's two: two take the grid's ends (the baseline itself, and ratio 0.75 all int8,
    which grouped int8 convs can run slower than fp32 here), so whether either met the
    budget was timing noise (ResNeXt failed so once in a whole-suite run); the middle
    point is fp32 at ratio 0.5. Batch 64, not 16: at 16 ShuffleNetV2 runs in about 0.5 ms,
    where fixed per-call costs hide the pruning (0.81x here, over 0.97x in a CI run); at 64
    the pruned trials measured 0.63x and 0.61x."""
    from slimtune.results.outputs import read_trials

    job = write_job(tmp_path, model={"import": f"slimtune.models.unseen:{arch}"},
                    data={"dataset": "synthetic", "train_size": 256, "val_size": 128,
                          "test_size": 128},
                    budget={"latency_fraction": 0.97}, target={"batch_size": 64},
                    search={"searcher": "uniform", "trials": 3, "evaluator": "finetune"},
                    space={"prune_ratios": [0.0, 0.25, 0.5, 0.75], "bits": [32, 8],
                           "round_to": 4})
    out = tmp_path / "out"
    assert main(["run", str(job), "--out", str(out)]) == 0
    said = capsys.readouterr().err
    assert "probe:" in said
    trials = read_trials(out)
    assert len(trials) == 3 and not [t for t in trials if t.state == "failed"]
    # the pruned trials run faster than the unpruned one, timed in the same job; and each
    # trial is timed paired with the baseline, so the budget holds for a pruned one (when a
    # finetune job checked it against one baseline timing at its start, a fast timing in
    # a whole-suite CI run put both pruned trials, 0.83x and 0.67x alone, over 0.97x)
    by_id = {t.trial_id: t for t in trials}
    assert min(by_id[1].latency_ms, by_id[2].latency_ms) < by_id[0].latency_ms
    assert all(t.latency_ratio is not None for t in trials)
    assert any(t.feasible for t in trials if t.trial_id > 0)
