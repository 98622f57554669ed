"""Streaming splits: every loop reads batches through a DataLoader, with the same results
as the in-memory tensors, and the user's sources stream (lazy images, mapped npz)."""

from __future__ import annotations

import pickle

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from slimtune.baseline import baseline_key
from slimtune.evaluators.bn import recalibrate_bn
from slimtune.export import export_onnx, onnx_predict, onnx_session, quantize_onnx
from slimtune.spec import DataSpec, parse_spec
from slimtune.split import Split
from slimtune.train import predict, train
from slimtune.userdata import load_data
from tests.datafiles import write_image_folder, write_npz

SHAPE = (1, 6, 6)


class CountingItems(TorchDataset):
    """Items one at a time (no batched fetch), counting the fetches and refusing any
    whole-split read: a loop that holds the split would call for every item at once."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, largest_batch: int) -> None:
        self.x, self.y, self.fetched, self.largest_batch = x, y, 0, largest_batch

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        self.fetched += 1
        return self.x[i].clone(), int(self.y[i])

    def __getitems__(self, indices):
        assert len(indices) <= self.largest_batch, f"a batch of {len(indices)} items"
        return [self[i] for i in indices]


def tensors(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    return torch.randn(n, *SHAPE, generator=g) + y.view(n, 1, 1, 1).float(), y


def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4),
                               torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(64, 3))


def test_streamed_split_trains_predicts_recalibrates_like_tensors(one_torch_thread) -> None:
    x, y = tensors()
    memory = Split(x, y, batch_size=32)
    items = CountingItems(x, y, largest_batch=32)
    streamed = Split(items, y, batch_size=32)
    assert not streamed.in_memory and streamed.example_shape == SHAPE
    a, b = net(), net()
    train(a, memory, steps=7, batch_size=16, lr=0.05, seed=3)
    train(b, streamed, steps=7, batch_size=16, lr=0.05, seed=3)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    torch.testing.assert_close(predict(a, memory), predict(b, streamed), rtol=0, atol=0)
    recalibrate_bn(a, memory, batches=3, batch_size=16)
    recalibrate_bn(b, streamed, batches=3, batch_size=16)
    torch.testing.assert_close(a[1].running_mean, b[1].running_mean, rtol=0, atol=0)
    # one for the example shape, then 7 x 16 training items + 96 predicted + 3 x 16
    # recalibrated, each fetched once as its batch came
    assert items.fetched == 1 + 7 * 16 + 96 + 3 * 16


def test_int8_calibration_streams_the_split(tmp_path) -> None:
    x, y = tensors(64)
    model = net().eval()
    fp32 = export_onnx(model, SHAPE, tmp_path / "m.onnx")
    items = CountingItems(x, y, largest_batch=32)
    from_tensor = quantize_onnx(fp32, tmp_path / "a.onnx", int8_layers=["0"], calibration=x)
    streamed = quantize_onnx(fp32, tmp_path / "b.onnx", int8_layers=["0"],
                             calibration=Split(items, y))
    assert items.fetched == 1 + 64  # the example shape, then each calibration item once
    out_a = onnx_predict(onnx_session(from_tensor, threads=1), x)
    out_b = onnx_predict(onnx_session(streamed, threads=1), Split(x, y, batch_size=10))
    np.testing.assert_array_equal(out_a, out_b)


def test_worker_processes_give_the_same_batches() -> None:
    x, y = tensors(40)
    one = Split(x, y, batch_size=8)
    two = one.with_loading(workers=2, batch_size=8)
    for a, b in zip(one.loader(8, shuffle=True, seed=1, steps=6),
                    two.loader(8, shuffle=True, seed=1, steps=6), strict=True):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_subsets_and_probes() -> None:
    x, y = tensors(30)
    split = Split(CountingItems(x, y, largest_batch=512), y)
    assert torch.equal(split.head(4).x, x[:4]) and torch.equal(split.first(5).y, y[:5])
    sample = split.sample(10, seed=2)
    assert len(sample) == 10 and torch.equal(sample.y, split.sample(10, seed=2).y)
    assert torch.equal(sample.x, x[torch.as_tensor(sample.items.indices)])
    assert split.content_hash() == Split(x, y).content_hash()


def test_folder_images_are_decoded_lazily(tmp_path) -> None:
    root = write_image_folder(tmp_path / "pics", counts={"train": 40, "test": 5})
    ds = load_data(DataSpec.model_validate({"folder": root, "workers": 1}), seed=0)
    assert not ds.train.in_memory and ds.train.workers == 1
    # the split pickles as file names (what ray.put ships), not as pixels
    assert len(pickle.dumps(ds.train)) < ds.train.x.numel() * 4 / 2
    again = load_data(DataSpec.model_validate({"folder": root}), seed=0)
    assert torch.equal(again.train.x, ds.train.x) and again.fingerprint == ds.fingerprint


def test_npz_inputs_are_memory_mapped(tmp_path) -> None:
    x = np.random.default_rng(0).normal(size=(600, 3, 8, 8)).astype(np.float32)
    y = np.arange(600) % 3
    path = write_npz(tmp_path / "t.npz", x_train=x, y_train=y, x_val=x[:20], y_val=y[:20],
                     x_test=x[:20], y_test=y[:20])
    ds = load_data(DataSpec.model_validate({"npz": path}), seed=0)
    assert ds.train.items.mapped and ds.notes == ()
    assert len(pickle.dumps(ds.train)) < x.nbytes / 10
    np.testing.assert_array_equal(ds.train.x.numpy(), x)
    compressed = tmp_path / "c.npz"
    np.savez_compressed(compressed, x_train=x, y_train=y, x_test=x[:20], y_test=y[:20])
    packed = load_data(DataSpec.model_validate({"npz": compressed}), seed=0)
    assert "compressed" in packed.notes[-1]
    np.testing.assert_array_equal(packed.train.x.numpy(), x[np.sort(
        np.random.default_rng(0).permutation(600)[60:])])


def test_loading_keys_are_not_part_of_the_baseline_key() -> None:
    job = {"name": "k", "model": {"import": "torch.nn:Identity"},
           "budget": {"latency_fraction": 0.5}}
    plain = parse_spec({**job, "data": {"dataset": "digits", "train_size": 100}})
    loaded = parse_spec({**job, "data": {"dataset": "digits", "train_size": 100,
                                         "workers": 2, "batch_size": 64}})
    assert baseline_key(loaded) == baseline_key(plain) == "f7a6c98707d728ff"
    data = load_data(loaded.data, seed=0)
    assert data.val.workers == 2 and data.test.batch_size == 64 and data.train.in_memory
