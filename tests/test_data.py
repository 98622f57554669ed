"""Datasets: IDX parsing, Fashion-MNIST checks and splits, digits, synthetic."""

from __future__ import annotations

import gzip
import hashlib
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from slimtune import data
from slimtune.data import (
    DATASETS,
    FASHION_MNIST_DIR,
    FASHION_MNIST_FILES,
    DataError,
    Split,
    check_dataset,
    load_dataset,
    parse_idx,
    read_idx,
)
from slimtune.models import build_builtin

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` in the IDX format (big-endian)."""
    header = struct.pack(">BBBB", 0, 0, IDX_CODES[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_gz(path: Path, content: bytes) -> None:
    path.write_bytes(gzip.compress(content))


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_read_idx_round_trip(tmp_path: Path, dtype: type) -> None:
    array = (np.arange(24).reshape(2, 3, 4) * 100).astype(dtype)
    write_gz(tmp_path / "a.gz", idx_bytes(array))
    parsed = read_idx(tmp_path / "a.gz")
    assert parsed.shape == (2, 3, 4)
    np.testing.assert_array_equal(parsed, array)


def test_parse_idx_rejects_bad_input() -> None:
    good = idx_bytes(np.zeros((2, 3), np.uint8))
    with pytest.raises(DataError, match="bad magic number"):
        parse_idx(b"\x01" + good[1:])
    with pytest.raises(DataError, match="does not match its dims"):
        parse_idx(good[:-1])


# A fake Fashion-MNIST: image i is filled with the value i, so a split's samples can be
# traced back to the source index. Label of image i is i % 10.
N_TRAIN, N_TEST = 60, 30


def fake_fashion_files() -> dict[str, bytes]:
    def images(n: int) -> np.ndarray:
        return np.repeat(np.arange(n, dtype=np.uint8), 28 * 28).reshape(n, 28, 28)

    def labels(n: int) -> np.ndarray:
        return (np.arange(n) % 10).astype(np.uint8)

    return {
        "train-images-idx3-ubyte.gz": idx_bytes(images(N_TRAIN)),
        "train-labels-idx1-ubyte.gz": idx_bytes(labels(N_TRAIN)),
        "t10k-images-idx3-ubyte.gz": idx_bytes(images(N_TEST)),
        "t10k-labels-idx1-ubyte.gz": idx_bytes(labels(N_TEST)),
    }


@pytest.fixture
def fake_fashion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fake files in a tmp dir named by SLIMTUNE_FASHION_MNIST_DIR, with their MD5s."""
    files = fake_fashion_files()
    for name, content in files.items():
        write_gz(tmp_path / name, content)
    md5s = {name: hashlib.md5(content).hexdigest() for name, content in files.items()}
    monkeypatch.setattr(data, "FASHION_MNIST_FILES", md5s)
    monkeypatch.setenv("SLIMTUNE_FASHION_MNIST_DIR", str(tmp_path))
    return tmp_path


def source_indices(split: Split) -> list[int]:
    pixels = split.x[:, 0, 0, 0] * data.FASHION_MNIST_STD + data.FASHION_MNIST_MEAN
    return [round(v) for v in (pixels * 255).tolist()]


def test_fashion_splits(fake_fashion: Path) -> None:
    ds = load_dataset("fashion-mnist", train_size=20, val_size=10, test_size=15, seed=3)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (20, 10, 15)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert ds.train.x.shape == (20, 1, 28, 28) and ds.train.x.dtype == torch.float32
    assert ds.train.y.dtype == torch.int64
    train, val = source_indices(ds.train), source_indices(ds.val)
    assert not set(train) & set(val)
    assert ds.train.y.tolist() == [i % 10 for i in train]
    assert all(0 <= i < N_TEST for i in source_indices(ds.test))

    again = load_dataset("fashion-mnist", train_size=20, val_size=10, test_size=15, seed=3)
    assert torch.equal(again.train.x, ds.train.x) and torch.equal(again.test.y, ds.test.y)
    bigger = load_dataset("fashion-mnist", train_size=40, val_size=10, test_size=None, seed=3)
    assert source_indices(bigger.val) == val
    assert set(train) <= set(source_indices(bigger.train))
    assert len(bigger.test) == N_TEST
    other = load_dataset("fashion-mnist", train_size=20, val_size=10, test_size=15, seed=4)
    assert source_indices(other.train) != train

    everything = load_dataset("fashion-mnist", train_size=None, val_size=10, test_size=None, seed=0)
    assert len(everything.train) == N_TRAIN - 10


def test_fashion_sizes_too_large(fake_fashion: Path) -> None:
    with pytest.raises(DataError, match="train set has 60 samples, fewer than .* = 70"):
        load_dataset("fashion-mnist", train_size=60, val_size=10, test_size=None, seed=0)
    with pytest.raises(DataError, match="test set has 30 samples"):
        load_dataset("fashion-mnist", train_size=None, val_size=10, test_size=31, seed=0)
    with pytest.raises(DataError, match="val_size must be at least 1"):
        load_dataset("fashion-mnist", train_size=None, val_size=0, test_size=None, seed=0)


def test_fashion_checksum_mismatch(fake_fashion: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_dataset("fashion-mnist")
    write_gz(fake_fashion / "t10k-labels-idx1-ubyte.gz", b"tampered")
    for attempt in (
        lambda: check_dataset("fashion-mnist"),
        lambda: load_dataset("fashion-mnist", train_size=5, val_size=5, test_size=5, seed=0),
    ):
        with pytest.raises(DataError, match="checksum mismatch .*t10k-labels-idx1-ubyte.gz"):
            attempt()


def test_fashion_corrupt_gzip(fake_fashion: Path) -> None:
    (fake_fashion / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="cannot decompress .*train-labels-idx1-ubyte.gz"):
        check_dataset("fashion-mnist")


def test_fashion_missing_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLIMTUNE_FASHION_MNIST_DIR", str(tmp_path / "absent"))
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist") as info:
        check_dataset("fashion-mnist")
    assert "\n" not in str(info.value)


def test_default_dir_is_debian_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLIMTUNE_FASHION_MNIST_DIR", raising=False)
    assert data.fashion_mnist_dir() == FASHION_MNIST_DIR


@pytest.mark.skipif(
    not all((FASHION_MNIST_DIR / name).is_file() for name in FASHION_MNIST_FILES),
    reason="dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLIMTUNE_FASHION_MNIST_DIR", raising=False)
    check_dataset("fashion-mnist")
    ds = load_dataset("fashion-mnist", train_size=500, val_size=100, test_size=100, seed=0)
    assert ds.train.x.shape == (500, 1, 28, 28)
    assert abs(ds.train.x.mean().item()) < 0.15 and abs(ds.train.x.std().item() - 1) < 0.15
    assert set(ds.train.y.tolist()) == set(range(10))
    assert ds.class_names[9] == "Ankle boot"
    default_val = load_dataset("fashion-mnist", train_size=10, val_size=None, test_size=10, seed=0)
    assert len(default_val.val) == 5000


def test_digits_splits() -> None:
    ds = load_dataset("digits", train_size=None, val_size=None, test_size=None, seed=0)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1797 - 2 * 359, 359, 359)
    assert ds.input_shape == (1, 8, 8) and ds.train.x.shape[1:] == (1, 8, 8)
    assert abs(ds.train.x.mean().item()) < 1e-4 and abs(ds.train.x.std().item() - 1) < 1e-2
    small = load_dataset("digits", train_size=100, val_size=50, test_size=50, seed=0)
    assert (len(small.train), len(small.val), len(small.test)) == (100, 50, 50)
    again = load_dataset("digits", train_size=100, val_size=50, test_size=50, seed=0)
    assert torch.equal(again.train.x, small.train.x)
    other = load_dataset("digits", train_size=100, val_size=50, test_size=50, seed=1)
    assert not torch.equal(other.train.y, small.train.y)
    with pytest.raises(DataError, match="digits has 1797 samples"):
        load_dataset("digits", train_size=1500, val_size=200, test_size=None, seed=0)


def test_synthetic_splits() -> None:
    ds = load_dataset("synthetic", train_size=None, val_size=None, test_size=None, seed=0)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (512, 128, 128)
    assert ds.input_shape == (1, 16, 16) and ds.train.x.shape == (512, 1, 16, 16)
    assert len(ds.class_names) == ds.num_classes == 10
    assert torch.bincount(ds.train.y, minlength=10).min() > 20
    again = load_dataset("synthetic", train_size=None, val_size=None, test_size=None, seed=0)
    assert torch.equal(again.train.x, ds.train.x) and torch.equal(again.test.y, ds.test.y)
    other = load_dataset("synthetic", train_size=64, val_size=32, test_size=16, seed=1)
    assert (len(other.train), len(other.val), len(other.test)) == (64, 32, 16)
    other = load_dataset("synthetic", train_size=None, val_size=None, test_size=None, seed=1)
    assert not torch.equal(other.train.x, ds.train.x)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny tensors run faster on one thread than on threads fighting for shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_synthetic_is_learnable() -> None:
    """A few epochs of a 5K-parameter net get far above the 10% chance level."""
    ds = load_dataset("synthetic", train_size=512, val_size=256, test_size=16, seed=0)
    torch.manual_seed(0)
    model = build_builtin("tiny_resnet", ds.num_classes, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):
        model.train()
        for idx in torch.randperm(len(ds.train)).split(64):
            loss = torch.nn.functional.cross_entropy(model(ds.train.x[idx]), ds.train.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(ds.val.x).argmax(1) == ds.val.y).float().mean().item()
    assert accuracy > 0.4


def test_unknown_dataset() -> None:
    for attempt in (
        lambda: check_dataset("cifar10"),
        lambda: load_dataset("cifar10", train_size=None, val_size=1, test_size=None, seed=0),
    ):
        with pytest.raises(DataError, match="unknown dataset 'cifar10'.*" + ", ".join(DATASETS)):
            attempt()


def test_check_dataset_needs_nothing_for_builtin_data() -> None:
    check_dataset("digits")
    check_dataset("synthetic")


def test_split_validates_types() -> None:
    with pytest.raises(ValueError, match="float32"):
        Split(torch.zeros(2, 1, 4, 4, dtype=torch.float64), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="int64"):
        Split(torch.zeros(2, 1, 4, 4), torch.zeros(3, dtype=torch.int64))
