"""Deep Compression: sparsity, shared weights, the Huffman container, export and load."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from slimtune.cli import main
from slimtune.compress import PolicyError
from slimtune.compressed_file import (
    MAGIC,
    CompressedFileError,
    _huffman_decode,
    _huffman_encode,
    _Reader,
    read_compressed,
    write_compressed,
)
from slimtune.deep_compression import compress_weights, keep_sparsity, sparsity_masks
from slimtune.export import export_onnx, onnx_predict, onnx_session
from slimtune.layers import build_layer_table
from slimtune.methods.apply import apply_policy
from slimtune.models import build_builtin
from slimtune.policy import Policy

SHAPE = (1, 16, 16)


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = build_builtin("tiny_resnet", 10, 1).eval()
    table = build_layer_table(model, SHAPE)
    return model, table


def dc_policy(table, sparsity=0.7, clusters=8, prune=None) -> Policy:
    return Policy(prune=prune or {}, sparsity={li.name: sparsity for li in table.layers},
                  clusters={li.name: clusters for li in table.layers},
                  model_signature=table.signature())


def assert_same_state(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k
        # bit for bit, not just ==: -0.0 and 0.0 would compare equal
        assert a[k].numpy().tobytes() == b[k].numpy().tobytes(), k


@pytest.mark.parametrize("sparsity, clusters", [(0.7, 8), (0.95, 4), (0.0, 16), (0.5, None),
                                                (None, None)])
def test_round_trip_is_bit_exact(net, tmp_path: Path, sparsity, clusters) -> None:
    model, table = net
    names = [li.name for li in table.layers]
    policy = Policy(sparsity={n: sparsity for n in names} if sparsity else {},
                    clusters={n: clusters for n in names} if clusters else {})
    before = copy.deepcopy(model.state_dict())
    size = write_compressed(model, table, policy, tmp_path / "m.stdc")
    assert size == (tmp_path / "m.stdc").stat().st_size
    assert_same_state(model.state_dict(), before)  # the argument is not changed
    expected = compress_weights(copy.deepcopy(model), table, policy).state_dict()
    assert_same_state(read_compressed(tmp_path / "m.stdc"), expected)


def test_sparsity_and_sharing_are_exact(net) -> None:
    model, table = net
    policy = dc_policy(table, sparsity=0.7, clusters=8)
    shared = compress_weights(copy.deepcopy(model), table, policy)
    modules = dict(shared.named_modules())
    for li in table.layers:
        w = modules[li.name].weight.detach()
        assert int((w == 0).sum()) == round(0.7 * w.numel())
        assert len(torch.unique(w[w != 0])) <= 8
    # the survivors are the largest-magnitude weights
    w0 = dict(model.named_modules())["layer1.conv1"].weight.detach().abs().flatten()
    kept = sparsity_masks(model, table, policy)["layer1.conv1"].flatten()
    assert w0[kept].min() >= w0[~kept].max()
    # idempotent: compressing the compressed model changes no bit
    again = compress_weights(copy.deepcopy(shared), table, policy)
    assert_same_state(again.state_dict(), shared.state_dict())


def test_compressed_file_is_smaller_and_shrinks_with_sparsity(net, tmp_path: Path) -> None:
    model, table = net
    dense = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    plain = write_compressed(model, table, Policy(), tmp_path / "a")
    light = write_compressed(model, table, dc_policy(table, 0.5, 16), tmp_path / "b")
    heavy = write_compressed(model, table, dc_policy(table, 0.9, 4), tmp_path / "c")
    assert plain >= dense and heavy < light < plain
    weights = sum(dict(model.named_modules())[li.name].weight.numel() for li in table.layers)
    # 10% of the weights kept at under a byte each (2-bit index, a few bits of gap), the
    # other tensors dense, and a record header (name, shape, code tables) per tensor
    records = len(model.state_dict())
    assert heavy < (dense - 4 * weights) + weights * 0.1 + 48 * records


def test_huffman_round_trip() -> None:
    rng = np.random.default_rng(0)
    fib = [1, 1]
    while len(fib) < 26:
        fib.append(fib[-1] + fib[-2])
    cases = [
        (rng.geometric(0.3, 5000) % 17, 17),
        (np.zeros(100, dtype=np.int64), 5),  # one symbol used
        (np.zeros(0, dtype=np.int64), 3),  # nothing
        (np.repeat(np.arange(26), fib), 26),  # Fibonacci counts: codes longer than 20 bits
    ]
    for symbols, alphabet in cases:
        symbols = symbols.astype(np.int64)
        blob = _huffman_encode(symbols, alphabet)
        decoded = _huffman_decode(_Reader(blob), len(symbols))
        assert np.array_equal(decoded, symbols)
    entropy_bound = len(_huffman_encode(np.zeros(1000, dtype=np.int64), 2))
    assert entropy_bound < 1000 // 8 + 16  # one bit a symbol


@pytest.mark.parametrize("damage", ["flip", "truncate", "magic", "empty", "extend"])
def test_corrupt_files_are_refused(net, tmp_path: Path, damage: str, capsys) -> None:
    model, table = net
    path = tmp_path / "m.stdc"
    write_compressed(model, table, dc_policy(table), path)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x10
    elif damage == "truncate":
        data = data[: len(data) - 100]
    elif damage == "magic":
        data[:4] = b"PK\x03\x04"
    elif damage == "empty":
        data = bytearray()
    else:
        data += b"\x00"
    path.write_bytes(bytes(data))
    with pytest.raises(CompressedFileError):
        read_compressed(path)
    assert main(["load", str(path)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("slimtune: error: ")


def test_policy_keys_round_trip_and_stay_backward_compatible() -> None:
    old = Policy(prune={"a": 0.5}, bits={"b": 8})
    assert set(old.to_dict()) == {"prune", "bits", "model_signature"}
    assert "sparsity" not in old.key()
    new = Policy(prune={"a": 0.5}, sparsity={"c": 0.9, "d": 0.0}, clusters={"c": 16})
    assert new.sparsity == {"c": 0.9}
    assert Policy.from_json(new.to_json()) == new
    assert new.key() != Policy(prune={"a": 0.5}).key()
    for bad in ({"clusters": {"c": 1}}, {"clusters": {"c": 257}}, {"clusters": {"c": 2.5}},
                {"sparsity": {"c": 1.0}}, {"sparsity": {"c": -0.1}}):
        with pytest.raises(ValueError):
            Policy(**bad)


def test_unknown_layers_are_refused(net, tmp_path: Path) -> None:
    model, table = net
    with pytest.raises(PolicyError, match="sparsity of unknown layers: nope"):
        apply_policy(model, table, Policy(sparsity={"nope": 0.5}))
    with pytest.raises(PolicyError, match="clusters of unknown layers: nope"):
        write_compressed(model, table, Policy(clusters={"nope": 4}), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_apply_policy_combines_pruning_and_deep_compression(net, tmp_path: Path) -> None:
    model, table = net
    policy = dc_policy(table, 0.6, 16, prune={table.groups[0].name: 0.5})
    out = apply_policy(model, table, policy).eval()
    conv = dict(out.named_modules())["conv1"].weight
    assert conv.shape[0] < dict(model.named_modules())["conv1"].weight.shape[0]
    assert len(torch.unique(conv[conv != 0])) <= 16
    x = torch.randn(4, *SHAPE)
    path = export_onnx(out, SHAPE, tmp_path / "m.onnx")
    with torch.no_grad():
        np.testing.assert_allclose(onnx_predict(onnx_session(path, threads=1), x),
                                   out(x).numpy(), rtol=1e-4, atol=1e-4)
    size = write_compressed(out, table, policy, tmp_path / "m.stdc")
    assert_same_state(read_compressed(tmp_path / "m.stdc"), out.state_dict())
    assert size < write_compressed(out, table, Policy(prune=policy.prune), tmp_path / "p")


def test_keep_sparsity_during_finetune(net) -> None:
    model, table = net
    policy = dc_policy(table, 0.8, 8)
    model = compress_weights(copy.deepcopy(model).train(), table, policy)
    masks = sparsity_masks(model, table, policy)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    with keep_sparsity(model, table, policy):
        for _ in range(5):
            loss = model(torch.randn(8, *SHAPE)).logsumexp(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        w = modules[name].weight.detach()
        assert torch.all(w[~mask] == 0)
        assert torch.all(w[mask] != 0)


def _fake_job(tmp_path: Path, model, table) -> Path:
    job = tmp_path / "job"
    (job / "trials" / "0").mkdir(parents=True)
    (job / "trials.jsonl").write_text("")
    policy = Policy(prune={table.groups[0].name: 0.5}, model_signature=table.signature())
    pruned = apply_policy(model, table, policy)
    torch.save({"state_dict": pruned.state_dict(), "policy": policy.to_dict(),
                "model": {"arch": "tiny_resnet"}, "round_to": 1, "input_shape": list(SHAPE),
                "num_classes": 10}, job / "trials" / "0" / "model.pt")
    return job


def test_export_compressed_then_load_check(net, tmp_path: Path, capsys) -> None:
    model, table = net
    job = _fake_job(tmp_path, model, table)
    out = tmp_path / "m.stdc"
    args = ["--sparsity", "0.8", "--clusters", "16"]
    assert main(["export", str(job), "--trial", "0", "--format", "compressed",
                 "--out", str(out), *args]) == 0
    assert out.is_file() and out.read_bytes().startswith(MAGIC)
    capsys.readouterr()
    model_pt = str(job / "trials" / "0" / "model.pt")
    assert main(["load", str(out), "--check", model_pt, *args]) == 0
    text = capsys.readouterr().out
    assert "checksum ok" in text and "bit-exact" in text and "conv1.weight" in text
    # other settings than the file was written with: not equal, exit 1
    assert main(["load", str(out), "--check", model_pt, "--sparsity", "0.5",
                 "--clusters", "16", "--quiet"]) == 1


@pytest.mark.parametrize("flags, expected", [
    (["--clusters", "300"], "--clusters must be in [2, 256]"),
    (["--clusters", "1"], "--clusters must be in [2, 256]"),
    (["--sparsity", "1.5"], "--sparsity must be in [0, 1)"),
    (["--trial", "7"], "trial 7 has no saved model.pt"),
])
def test_export_compressed_bad_input(net, tmp_path: Path, capsys, flags, expected) -> None:
    model, table = net
    job = _fake_job(tmp_path, model, table)
    out = tmp_path / "m.stdc"
    flags = flags if "--trial" in flags else ["--trial", "0", *flags]
    code = main(["export", str(job), "--format", "compressed", "--out", str(out), *flags])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and expected in err[0]
    assert not out.exists()


def test_search_space_deep_compression_dimensions(net) -> None:
    from slimtune.spaces import SearchSpace

    _, table = net
    plain = SearchSpace.from_table(table, (0.0, 0.5), (32, 8))
    assert not plain.sparsity and not plain.clusters
    assert plain.dimensions == len(table.groups) + len(table.layers)
    space = SearchSpace.from_table(table, (0.0, 0.5), (32, 8), sparsity=(0.5, 0.9),
                                   clusters=(16,))
    assert space.dimensions == len(table.groups) + 3 * len(table.layers)
    assert space.sparsity["conv1"] == (0.0, 0.5, 0.9) and space.clusters["conv1"] == (0, 16)
    params = space.params_from_policy(Policy())
    params["sparsity.conv1"], params["clusters.fc"] = 0.9, 16
    policy = space.policy_from_params(params)
    assert policy.sparsity == {"conv1": 0.9} and policy.clusters == {"fc": 16}
    assert space.contains(policy) and space.params_from_policy(policy) == params


def test_space_spec_validates_choices() -> None:
    from pydantic import ValidationError

    from slimtune.spec import SpaceSpec

    assert SpaceSpec().sparsity == () and SpaceSpec().clusters == ()
    assert SpaceSpec(sparsity=(0.9, 0.5, 0.5), clusters=(32, 4)).clusters == (4, 32)
    for bad in ({"clusters": (1,)}, {"clusters": (512,)}, {"sparsity": (1.0,)}):
        with pytest.raises(ValidationError):
            SpaceSpec(**bad)


def test_trial_finetune_helpers(net, tmp_path: Path) -> None:
    from slimtune.deep_compression import finetune_compressed
    from slimtune.methods.apply import policy_size_bytes

    model, table = net
    model = copy.deepcopy(model).train()
    policy = dc_policy(table, 0.75, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with finetune_compressed(model, table, policy):
        for _ in range(3):
            loss = model(torch.randn(8, *SHAPE)).logsumexp(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    w = dict(model.named_modules())["layer2.conv1"].weight.detach()
    assert int((w == 0).sum()) == round(0.75 * w.numel())
    assert len(torch.unique(w[w != 0])) <= 8
    size = policy_size_bytes(model, table, policy)
    assert size == write_compressed(model, table, policy, tmp_path / "m")
    assert_same_state(read_compressed(tmp_path / "m"), model.state_dict())


def test_keep_shared_fine_tunes_the_shared_values(net) -> None:
    from slimtune.deep_compression import keep_shared

    model, table = net
    policy = dc_policy(table, 0.7, 8)
    model = compress_weights(copy.deepcopy(model).train(), table, policy)
    before = dict(model.named_modules())["layer1.conv1"].weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4,
                          nesterov=True)
    with keep_shared(model, table, policy):
        for _ in range(4):
            loss = model(torch.randn(8, *SHAPE)).logsumexp(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    after = dict(model.named_modules())["layer1.conv1"].weight.detach()
    assert not torch.equal(after, before)  # the values moved ...
    assert torch.equal(after == 0, before == 0)  # ... the zeros did not
    # ... and every cluster moved as one: equal before means equal after
    for v in torch.unique(before[before != 0]):
        assert len(torch.unique(after[before == v])) == 1
