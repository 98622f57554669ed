"""Low-rank factorisation: real smaller layers (exact when rank allows), a search dimension,
combined with bits, in trials, saved and reloaded."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from slimtune.cli import main
from slimtune.compress import PolicyError, count_macs_params, packed_size_bytes
from slimtune.compressed_file import read_compressed
from slimtune.data import load_dataset
from slimtune.errors import SpecError
from slimtune.export import (
    export_onnx,
    onnx_node_for_layer,
    onnx_predict,
    onnx_session,
    quantize_onnx,
)
from slimtune.layers import build_layer_table
from slimtune.lowrank import factorize, layer_modules, worthwhile_rank
from slimtune.measurement.latency import MeasureProtocol
from slimtune.measurement.shapes import ChannelMap
from slimtune.methods.apply import apply_policy, compressed_structure, prune_structure
from slimtune.methods.quantization import int8_layers
from slimtune.models import build_builtin
from slimtune.models.zoo import ZOO
from slimtune.policy import Policy
from slimtune.results.outputs import append_trial, load_compressed
from slimtune.search.uniform import UniformSearcher
from slimtune.spaces import SearchSpace
from slimtune.spec import parse_spec
from slimtune.trial import TrialContext, run_trial
from slimtune.trial_model import load_trial
from tests.jobs import tiny_job, write_job

SHAPE = (1, 16, 16)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw(torch.relu(self.conv2(torch.relu(self.conv(x)))))
        return self.fc(x.mean(dim=(2, 3)))


def test_factorisation_is_exact_for_low_rank_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():  # conv2's (32, 16*9) unfolding has rank 4, fc's rank 3
        net.conv2.weight.copy_((torch.randn(32, 4) @ torch.randn(4, 144)).reshape(32, 16, 3, 3))
        net.fc.weight.copy_(torch.randn(10, 3) @ torch.randn(3, 32))
    table = build_layer_table(net, SHAPE)
    policy = Policy(rank={"conv2": 4 / 32, "fc": 0.3})  # full ranks 32 and 10
    out = apply_policy(net, table, policy).eval()
    assert isinstance(out.conv2, nn.Sequential) and out.conv2[0].out_channels == 4
    assert out.conv2[0].kernel_size == (3, 3) and out.conv2[0].stride == (2, 2)
    assert out.conv2[1].kernel_size == (1, 1) and out.conv2[1].bias is not None
    assert out.fc[0].out_features == 3
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(out(x), net(x), rtol=1e-4, atol=1e-4)
    macs_before, params_before = count_macs_params(net, SHAPE)
    macs_after, params_after = count_macs_params(out, SHAPE)
    assert macs_after < 0.75 * macs_before and params_after < params_before
    path = export_onnx(out, SHAPE, tmp_path / "m.onnx")
    with torch.no_grad():
        np.testing.assert_allclose(onnx_predict(onnx_session(path, threads=1), x),
                                   out(x).numpy(), rtol=1e-4, atol=1e-4)


def test_truncation_error_is_the_dropped_singular_values() -> None:
    torch.manual_seed(1)
    lin = nn.Linear(20, 12, bias=False)
    model = nn.Sequential(lin)
    table = build_layer_table(model, (20,))
    s = torch.linalg.svdvals(lin.weight.detach().double())
    factorize(model, table, {"0": 0.5})  # rank 6 of 12
    w = (model[0][1].weight @ model[0][0].weight).detach().double()
    err = torch.linalg.matrix_norm(w - lin.weight.detach().double())
    torch.testing.assert_close(err, s[6:].square().sum().sqrt(), rtol=1e-5, atol=1e-6)


def test_rank_errors() -> None:
    net = Net().eval()
    table = build_layer_table(net, SHAPE)
    with pytest.raises(PolicyError, match="'dw' is a grouped/depthwise conv"):
        apply_policy(net, table, Policy(rank={"dw": 0.5}))
    with pytest.raises(PolicyError, match="rank of unknown layers: nope"):
        apply_policy(net, table, Policy(rank={"nope": 0.5}))
    with pytest.raises(PolicyError, match="not combined with sparsity or clusters"):
        apply_policy(net, table, Policy(rank={"fc": 0.5}, sparsity={"fc": 0.5}))
    with pytest.raises(PolicyError, match="not combined with sparsity or clusters"):
        apply_policy(net, table, Policy(rank={"fc": 0.5}, clusters={"fc": 4}))
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="rank fraction"):
            Policy(rank={"fc": bad})
    assert Policy(rank={"fc": 1.0}).rank == {}  # full rank: nothing to do
    assert Policy.from_json(Policy(rank={"fc": 0.25}).to_json()).rank == {"fc": 0.25}
    assert worthwhile_rank(net.conv2) == (32 * 144 - 1) // (32 + 144)


@pytest.mark.parametrize("arch", ["tiny_resnet", "mlp", "vit_tiny"])
def test_prune_and_factorise_together(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    shape = (1, 28, 28)
    model = (ZOO[arch]() if arch in ZOO else build_builtin(arch, 10, 1)).eval()
    table = build_layer_table(model, shape)
    factorable = [li.name for li in table.layers if li.kind != "depthwise"
                  and li.group is not None][:3]
    policy = Policy(prune={table.groups[0].name: 0.5}, rank=dict.fromkeys(factorable, 0.25))
    out = apply_policy(model, table, policy).eval()
    assert all(isinstance(dict(out.named_modules())[n], nn.Sequential) for n in factorable)
    assert count_macs_params(out, shape)[0] < count_macs_params(model, shape)[0]
    x = torch.randn(4, *shape)
    path = export_onnx(out, shape, tmp_path / "m.onnx")
    with torch.no_grad():
        np.testing.assert_allclose(onnx_predict(onnx_session(path, threads=1), x),
                                   out(x).numpy(), rtol=1e-4, atol=1e-4)


# --- a search dimension: space, spec, searchers ---------------------------------------------

def test_space_has_rank_dims_only_where_they_save_macs() -> None:
    table = build_layer_table(Net().eval(), SHAPE)
    # full ranks / break-even ranks: conv 9/5, conv2 32/26, fc 10/7; dw cannot be factorised
    space = SearchSpace.from_table(table, (0.0, 0.5), (32, 8), rank=(0.2, 0.25, 0.9))
    # conv, fc: 0.2 and 0.25 both give rank 2 (one choice); 0.9 never saves MACs
    assert dict(space.rank) == {"conv": (0.2, 1.0), "conv2": (0.2, 0.25, 1.0),
                                "fc": (0.2, 1.0)}
    assert space.dimensions == len(space.ratios) + len(space.bits) + 3
    dists = space.distributions()
    assert dists["rank.conv2"].choices == (0.2, 0.25, 1.0) and "rank.dw" not in dists
    assert SearchSpace.from_table(table, (0.0,), (32,), rank=(0.9,)).rank == {}
    assert SearchSpace.from_table(table, (0.0,), (32,)).rank == {}

    params = {k: d.choices[0] for k, d in dists.items()}
    policy = space.policy_from_params(params)
    assert policy.rank == {"conv": 0.2, "conv2": 0.2, "fc": 0.2}
    assert space.params_from_policy(policy) == params and space.contains(policy)
    unfactorised = space.policy_from_params({**params, "rank.conv2": 1.0})
    assert "conv2" not in unfactorised.rank
    assert space.params_from_policy(unfactorised)["rank.conv2"] == 1.0
    assert not space.contains(Policy(rank={"conv2": 0.5}))
    assert all(p.rank == {"conv": 0.2, "conv2": 0.2, "fc": 0.2}
               for p in space.most_aggressive())
    # each layer at the nearest fraction it allows that keeps at least a quarter of its rank
    assert space.uniform(0.0, 32, 0.25).rank == {"conv2": 0.25}
    assert space.uniform(0.0, 32).rank == {}


def test_uniform_searcher_walks_rank_too() -> None:
    table = build_layer_table(Net().eval(), SHAPE)
    space = SearchSpace.from_table(table, (0.0, 0.5), (32,), rank=(0.25,))
    searcher = UniformSearcher(space, trials=4)
    ranks = [searcher.ask().rank for _ in range(4)]
    assert ranks == [{}, {"conv": 0.25, "conv2": 0.25, "fc": 0.25}] * 2


def test_spec_rank_key(tmp_path: Path) -> None:
    spec = parse_spec(tiny_job(tmp_path, space={"rank": [0.5, 0.25, 0.5, 1.0]}))
    assert spec.space.rank == (0.25, 0.5, 1.0)
    assert parse_spec(tiny_job(tmp_path)).space.rank == ()
    for bad in ([0.0], [1.5], [-0.1]):
        with pytest.raises(SpecError, match=r"^space\.rank: rank must be a list of fractions"):
            parse_spec(tiny_job(tmp_path, space={"rank": bad}))
    with pytest.raises(SpecError, match="not by ppo"):
        parse_spec(tiny_job(tmp_path, space={"rank": [0.5]}, search={"searcher": "ppo"}))
    with pytest.raises(SpecError, match="not by ppo"):  # what ``slimtune apply`` does
        spec.with_overrides(searcher="ppo")
    with pytest.raises(SpecError, match="rank cannot be searched together with sparsity"):
        parse_spec(tiny_job(tmp_path, space={"rank": [0.5], "sparsity": [0.5]}))


def test_channel_map_refuses_rank_instead_of_ignoring_it() -> None:
    model = build_builtin("tiny_resnet", 10, 1).eval()
    table = build_layer_table(model, SHAPE, round_to=1)
    cmap = ChannelMap.probe(model, table, round_to=1)
    assert cmap.macs(Policy()) == sum(li.macs for li in table.layers)  # works without rank
    with pytest.raises(ValueError, match="not low-rank factorisation"):
        cmap.macs(Policy(rank={"layer1.conv1": 0.5}))


def _refused(capsys, code: int, expected: str) -> None:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("slimtune: error: ") and expected in lines[0], lines[0]


def test_bad_rank_input_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    bad = write_job(tmp_path, "bad.yaml", space={"rank": [0.5, 1.5]})
    _refused(capsys, main(["validate", str(bad)]), "space.rank: rank must be")
    _refused(capsys, main(["run", str(bad), "--out", str(out)]), "space.rank: rank must be")
    ppo = write_job(tmp_path, "ppo.yaml", space={"rank": [0.5]}, search={"searcher": "ppo"})
    _refused(capsys, main(["run", str(ppo), "--out", str(out)]), "not by ppo")
    rank = write_job(tmp_path, "rank.yaml", space={"rank": [0.5]})
    _refused(capsys, main(["agent", "train", str(rank), "--out", str(tmp_path / "a.zip")]),
             "an agent decides channels and bits only")
    good = write_job(tmp_path, "good.yaml")
    (tmp_path / "p.json").write_text(json.dumps({"rank": {"fc": 1.5}}))
    _refused(capsys, main(["latency", str(good), "--policy", str(tmp_path / "p.json")]),
             "rank fraction of 'fc' must be in (0, 1], got 1.5")
    assert not out.exists()


# --- combined with bits ---------------------------------------------------------------------

def test_rank_with_4_bits_quantises_both_factors_and_packs_them() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 12), nn.ReLU(), nn.Linear(12, 4)).eval()
    table = build_layer_table(model, (20,))
    policy = Policy(rank={"0": 0.5}, bits={"0": 4})  # full rank 12 -> 6
    out = apply_policy(model, table, policy)
    first, second = out[0]
    assert first.weight.shape == (6, 20) and second.weight.shape == (12, 6)
    for w in (first.weight, second.weight):  # 4 bits: at most 15 values per output row
        assert max(len(torch.unique(row)) for row in w.detach()) <= 15
    # factor weights at 4 bits: ceil(numel / 2) + one f32 scale per output channel;
    # biases and the fp32 layer at 4 bytes per element
    expected = (60 + 4 * 6) + (36 + 4 * 12) + 4 * 12 + 4 * (48 + 4)
    assert packed_size_bytes(out, table, policy) == expected == 424
    assert packed_size_bytes(out, table, Policy(rank={"0": 0.5})) == 4 * (120 + 72 + 12 + 52)
    assert list(layer_modules(out, "0")) == ["0.0", "0.1"]
    assert list(layer_modules(out, "2")) == ["2"]
    with pytest.raises(PolicyError, match="no conv/linear layer '1'"):
        layer_modules(out, "1")


def test_rank_with_8_bits_runs_both_factors_int8(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_builtin("tiny_resnet", 10, 1).eval()
    table = build_layer_table(model, SHAPE, round_to=1)
    policy = Policy(rank={"layer1.conv2": 0.5}, bits={"layer1.conv2": 8, "layer2.conv2": 8})
    out = apply_policy(model, table, policy).eval()
    names = int8_layers(policy, out)
    assert names == ["layer1.conv2.0", "layer1.conv2.1", "layer2.conv2"]
    assert int8_layers(policy) == ["layer1.conv2", "layer2.conv2"]
    fp32 = export_onnx(out, SHAPE, tmp_path / "m.fp32.onnx")
    x = torch.randn(64, *SHAPE)
    q = quantize_onnx(fp32, tmp_path / "m.onnx", int8_layers=names, calibration=x)
    graph = onnx.load(str(q))
    for name in names:
        assert _weight_is_dequantized(graph, onnx_node_for_layer(graph, name)), name
    for name in ("conv1", "layer1.conv1", "layer2.conv1", "fc"):
        assert not _weight_is_dequantized(graph, onnx_node_for_layer(graph, name)), name
    with torch.no_grad():
        want = out(x).numpy()
    got = onnx_predict(onnx_session(q, threads=1), x)
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9


def _weight_is_dequantized(graph: onnx.ModelProto, node_name: str | None) -> bool:
    assert node_name is not None
    producers = {o: n for n in graph.graph.node for o in n.output}
    node = next(n for n in graph.graph.node if n.name == node_name)
    producer = producers.get(node.input[1])
    return producer is not None and producer.op_type == "DequantizeLinear"


# --- in trials -------------------------------------------------------------------------------

FAST = MeasureProtocol(warmup=5, rounds=3, repeats=20)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> TrialContext:
    tmp = tmp_path_factory.mktemp("lowrank-trial")
    spec = parse_spec(tiny_job(tmp, space={"rank": [0.25, 0.5]}))
    data = load_dataset("synthetic", train_size=None, val_size=None, test_size=None, seed=0)
    model = build_builtin("tiny_resnet", 10, 1)
    table = build_layer_table(model, data.input_shape, round_to=1)
    return TrialContext(spec=spec, table=table, baseline_state=model.state_dict(), data=data,
                        budget_ms=100.0, trials_dir=tmp / "job" / "trials", protocol=FAST)


def test_rank_trial_is_factorised_measured_saved_and_reloaded(ctx: TrialContext,
                                                              capsys) -> None:
    policy = Policy(prune={"layer1.conv1": 0.5},
                    rank={"layer1.conv1": 0.5, "layer2.conv2": 0.25})
    result = run_trial(ctx, 1, policy, "test")
    assert result.state == "ok", result.error
    teacher = ctx.baseline_model()
    pruned = prune_structure(teacher, ctx.table, policy, round_to=1)
    shape = ctx.data.input_shape
    assert (result.macs, result.params) == count_macs_params(
        compressed_structure(teacher, ctx.table, policy, round_to=1), shape)
    assert result.macs < count_macs_params(pruned, shape)[0]
    assert result.params < count_macs_params(pruned, shape)[1]

    saved = ctx.trials_dir / "1"
    model = load_compressed(saved / "model.pt")
    assert model.layer1.conv1[0].out_channels == 2  # 4 channels kept, half the rank
    assert model.layer2.conv2[0].out_channels == 4 and model.layer2.conv2[1].out_channels == 16
    assert result.size_bytes == packed_size_bytes(model, ctx.table, policy) \
        == 4 * sum(t.numel() for t in model.state_dict().values())
    assert result.size_bytes < packed_size_bytes(pruned, ctx.table, Policy())
    x = ctx.data.test.x[:32]
    with torch.no_grad():
        logits = model(x)
    np.testing.assert_allclose(onnx_predict(onnx_session(saved / "model.onnx", threads=1), x),
                               logits.numpy(), rtol=1e-4, atol=1e-4)
    again, table, loaded = load_trial(saved / "model.pt")
    assert loaded == policy and table.signature() == ctx.table.signature()
    with torch.no_grad():
        assert torch.equal(again(x), logits)

    # slimtune export: the files, and a compressed container (factors stay dense)
    job = ctx.trials_dir.parent
    append_trial(job, result)
    assert main(["export", str(job), "--trial", "1", "--out", str(job / "exp")]) == 0
    assert (job / "exp" / "model.pt").is_file() and (job / "exp" / "model.onnx").is_file()
    stdc = job / "m.stdc"
    assert main(["export", str(job), "--trial", "1", "--format", "compressed",
                 "--sparsity", "0.5", "--out", str(stdc)]) == 0
    state = read_compressed(stdc)
    assert torch.equal(state["layer2.conv2.0.weight"], model.layer2.conv2[0].weight)
    assert (state["layer2.conv1.weight"] == 0).float().mean() == 0.5
    assert main(["load", str(stdc), "--quiet", "--check", str(saved / "model.pt"),
                 "--sparsity", "0.5"]) == 0
    capsys.readouterr()


def test_rank_trial_with_8_and_4_bits(ctx: TrialContext) -> None:
    policy = Policy(rank={"layer1.conv2": 0.5, "layer2.conv2": 0.5},
                    bits={"layer1.conv2": 8, "layer2.conv2": 4})
    result = run_trial(ctx, 2, policy, "test")
    assert result.state == "ok", result.error
    saved = ctx.trials_dir / "2"
    model = load_compressed(saved / "model.pt")
    graph = onnx.load(str(saved / "model.onnx"))
    for name in ("layer1.conv2.0", "layer1.conv2.1", "layer2.conv2.0", "layer2.conv2.1"):
        assert _weight_is_dequantized(graph, onnx_node_for_layer(graph, name)), name
    assert not _weight_is_dequantized(graph, onnx_node_for_layer(graph, "layer2.conv1"))
    # the 4-bit factors were fake-quantised before saving: at most 15 values per row
    for factor in model.layer2.conv2:
        w = factor.weight.detach().flatten(1)
        assert max(len(torch.unique(row)) for row in w) <= 15
    bits = {"layer1.conv2.0.weight": 8, "layer1.conv2.1.weight": 8,
            "layer2.conv2.0.weight": 4, "layer2.conv2.1.weight": 4}
    expected = sum(math.ceil(t.numel() * bits[k] / 8) + 4 * t.shape[0] if k in bits
                   else 4 * t.numel() for k, t in model.state_dict().items())
    assert result.size_bytes == expected
    x = ctx.data.test.x[:64]
    with torch.no_grad():
        want = model(x).numpy()
    got = onnx_predict(onnx_session(saved / "model.onnx", threads=1), x)
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()


def test_preflight_searches_rank_and_measures_the_factorised_floor(tmp_path: Path) -> None:
    from slimtune.job import preflight

    spec = parse_spec(tiny_job(tmp_path, space={"rank": [0.25]}))
    prep = preflight(spec, FAST)
    assert set(prep.space.rank) == {li.name for li in prep.table.layers}  # all worth it here
    assert prep.fastest_policy.rank == dict.fromkeys(prep.space.rank, 0.25)
    assert prep.fastest_ms > 0
