"""The built-in datasets: Fashion-MNIST from local files, sklearn digits, synthetic.

A user's own data (``data: {import|folder|npz: ...}``) is read by :mod:`slimtune.userdata`
into the same :class:`Dataset`. Every split is a :class:`slimtune.split.Split`, read in
batches through DataLoaders; the built-in ones are small and tensor-backed (Fashion-MNIST's
chosen images as float32 are ~190 MB at most), the user's stream from their files.

Nothing is downloaded and nothing is cached on disk. Fashion-MNIST comes from the
Debian package ``dataset-fashion-mnist``; its files are checked against the MD5s of
the original (decompressed) IDX content, so a corrupt or different file is caught
before compute. Every split is a deterministic function of the sizes and the seed.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from slimtune.errors import UserInputError
from slimtune.split import Split

__all__ = ["DATASETS", "DataError", "Dataset", "Split", "check_dataset", "load_dataset"]

DATASETS = ("fashion-mnist", "digits", "synthetic")

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_ENV = "SLIMTUNE_FASHION_MNIST_DIR"
FASHION_MNIST_INSTALL = "apt-get install -y dataset-fashion-mnist"
# MD5 of each file's decompressed bytes (Debian recompressed the .gz files).
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965",
}
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530
FASHION_MNIST_DEFAULT_VAL = 5000
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

SYNTHETIC_SHAPE = (1, 16, 16)
SYNTHETIC_DEFAULT_TRAIN = 512
SYNTHETIC_DEFAULT_VAL = 128
SYNTHETIC_DEFAULT_TEST = 128
# Class c is a grating at angle _SYNTHETIC_ANGLES_DEG[c % 5], period _SYNTHETIC_PERIODS[c // 5].
_SYNTHETIC_ANGLES_DEG = (0, 36, 72, 108, 144)
_SYNTHETIC_PERIODS = (4, 8)
SYNTHETIC_CLASSES = len(_SYNTHETIC_ANGLES_DEG) * len(_SYNTHETIC_PERIODS)
_SYNTHETIC_NOISE = 1.5  # per-pixel noise std; the grating's std is about 1

# IDX type codes (third magic byte) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class DataError(UserInputError):
    """The dataset is unknown, missing, corrupt, or too small for the sizes asked for."""


@dataclass(frozen=True)
class Dataset:
    """Train/val/test splits of one dataset plus what a model needs to know about it.

    ``notes``: lines the user should read (e.g. val carved from train), printed once the
    inputs are checked. ``fingerprint``: a hash of a user's training data for the baseline
    cache key (empty for the built-in datasets, whose content is fixed).
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]  # one example's shape, e.g. (C, H, W)
    class_names: tuple[str, ...]
    notes: tuple[str, ...] = ()
    fingerprint: str = ""

    def with_loading(self, *, workers: int, batch_size: int) -> Dataset:
        """Every split loaded with ``workers`` processes, in passes of ``batch_size``."""
        return replace(self, **{name: getattr(self, name).with_loading(
            workers=workers, batch_size=batch_size) for name in ("train", "val", "test")})


def _unknown(name: str) -> DataError:
    return DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


def fashion_mnist_dir() -> Path:
    """Where the Fashion-MNIST files are: ``$SLIMTUNE_FASHION_MNIST_DIR`` or the Debian path."""
    return Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)


def _read_checked(path: Path, md5: str) -> bytes:
    """Decompressed content of a .gz file, after checking it exists and matches ``md5``."""
    if not path.is_file():
        raise DataError(
            f"Fashion-MNIST file {path} not found; install it with "
            f"`{FASHION_MNIST_INSTALL}` or set {FASHION_MNIST_ENV} to a folder holding "
            f"{', '.join(FASHION_MNIST_FILES)}"
        )
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"cannot decompress {path}: {e}; reinstall with `{FASHION_MNIST_INSTALL}`"
        ) from e
    if hashlib.md5(data).hexdigest() != md5:
        raise DataError(
            f"checksum mismatch for {path}: its content is not the Fashion-MNIST file "
            f"{path.name}; reinstall with `{FASHION_MNIST_INSTALL}`"
        )
    return data


def parse_idx(data: bytes) -> np.ndarray:
    """Parse IDX bytes (the MNIST format): magic 0,0,type,ndim; big-endian uint32 dims."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError("not an IDX file: bad magic number")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError("IDX file truncated in its header")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    count = int(np.prod(dims, dtype=np.int64))
    if len(data) != header + count * dtype.itemsize:
        raise DataError(
            f"IDX file size does not match its dims {dims}: "
            f"{len(data) - header} payload bytes, expected {count * dtype.itemsize}"
        )
    return np.frombuffer(data, dtype, count=count, offset=header).reshape(dims)


def read_idx(path: str | Path) -> np.ndarray:
    """Read a gzip'd IDX file into an array (no checksum check)."""
    with gzip.open(path, "rb") as f:
        return parse_idx(f.read())


def check_dataset(name: str) -> None:
    """Check a dataset can be loaded (files present, checksums right) without building it."""
    if name not in DATASETS:
        raise _unknown(name)
    if name == "fashion-mnist":
        folder = fashion_mnist_dir()
        for filename, md5 in FASHION_MNIST_FILES.items():
            _read_checked(folder / filename, md5)


def _size(requested: int | None, default: int, what: str) -> int:
    size = default if requested is None else requested
    if size < 1:
        raise DataError(f"{what} must be at least 1, got {size}")
    return size


def _check_fits(what: str, available: int, **sizes: int) -> None:
    total = sum(sizes.values())
    if total > available:
        parts = " + ".join(f"{k} {v}" for k, v in sizes.items())
        raise DataError(f"{what} has {available} samples, fewer than {parts} = {total}")


def _to_split(x: np.ndarray, y: np.ndarray) -> Split:
    return Split(
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        torch.from_numpy(y.astype(np.int64)),
    )


def _fashion_mnist(
    train_size: int | None, val_size: int | None, test_size: int | None, seed: int
) -> Dataset:
    """Val is carved out of the 60k train images (disjoint from train), test from t10k."""
    folder = fashion_mnist_dir()
    train_x, train_y, test_x, test_y = (
        parse_idx(_read_checked(folder / filename, md5))
        for filename, md5 in FASHION_MNIST_FILES.items()
    )
    pool, n_test = len(train_y), len(test_y)
    val_size = _size(val_size, FASHION_MNIST_DEFAULT_VAL, "val_size")
    train_size = _size(train_size, max(pool - val_size, 1), "train_size")
    test_size = _size(test_size, n_test, "test_size")
    _check_fits("the Fashion-MNIST train set", pool, train_size=train_size, val_size=val_size)
    _check_fits("the Fashion-MNIST test set", n_test, test_size=test_size)
    perm = np.random.default_rng(seed).permutation(pool)
    val_idx, train_idx = perm[:val_size], perm[val_size : val_size + train_size]
    test_idx = np.random.default_rng(seed).permutation(n_test)[:test_size]

    def split(images: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> Split:
        # Normalize only the chosen images: the full 60k as float32 would be 188 MB.
        x = images[idx, None].astype(np.float32) / 255.0
        return _to_split((x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD, labels[idx])

    return Dataset(
        name="fashion-mnist",
        train=split(train_x, train_y, train_idx),
        val=split(train_x, train_y, val_idx),
        test=split(test_x, test_y, test_idx),
        num_classes=len(FASHION_MNIST_CLASSES),
        input_shape=(1, 28, 28),
        class_names=FASHION_MNIST_CLASSES,
    )


def _digits(
    train_size: int | None, val_size: int | None, test_size: int | None, seed: int
) -> Dataset:
    """sklearn's bundled 8x8 digits (1797 images); val and test default to 20% each."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images, labels = bunch.images / 16.0, bunch.target
    n = len(labels)
    val_size = _size(val_size, round(0.2 * n), "val_size")
    test_size = _size(test_size, round(0.2 * n), "test_size")
    train_size = _size(train_size, max(n - val_size - test_size, 1), "train_size")
    _check_fits("digits", n, train_size=train_size, val_size=val_size, test_size=test_size)
    perm = np.random.default_rng(seed).permutation(n)
    train_idx = perm[:train_size]
    val_idx = perm[train_size : train_size + val_size]
    test_idx = perm[train_size + val_size : train_size + val_size + test_size]
    # Standardize with the train split's statistics, so val/test leak nothing into it.
    mean, std = images[train_idx].mean(), images[train_idx].std()
    x = ((images - mean) / std)[:, None]
    return Dataset(
        name="digits",
        train=_to_split(x[train_idx], labels[train_idx]),
        val=_to_split(x[val_idx], labels[val_idx]),
        test=_to_split(x[test_idx], labels[test_idx]),
        num_classes=10,
        input_shape=(1, 8, 8),
        class_names=tuple(str(d) for d in range(10)),
    )


def _synthetic(
    train_size: int | None, val_size: int | None, test_size: int | None, seed: int
) -> Dataset:
    """Noisy sine gratings; the class is the orientation and period, phase is random.

    The class signal is a local texture, so even a net with a small receptive field
    and a global pool learns it within a few epochs, while the noise keeps a tiny net
    short of 100% and leaves room for compression to cost accuracy.
    """
    sizes = (
        _size(train_size, SYNTHETIC_DEFAULT_TRAIN, "train_size"),
        _size(val_size, SYNTHETIC_DEFAULT_VAL, "val_size"),
        _size(test_size, SYNTHETIC_DEFAULT_TEST, "test_size"),
    )
    n = sum(sizes)
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) % SYNTHETIC_CLASSES)[torch.randperm(n, generator=g)]
    n_angles = len(_SYNTHETIC_ANGLES_DEG)
    angle = torch.deg2rad(torch.tensor(_SYNTHETIC_ANGLES_DEG))[y % n_angles].view(n, 1, 1)
    period = torch.tensor(_SYNTHETIC_PERIODS)[y // n_angles].view(n, 1, 1)
    phase = 2 * math.pi * torch.rand(n, 1, 1, generator=g)
    amplitude = math.sqrt(2) * (0.5 + torch.rand(n, 1, 1, generator=g))
    rows, cols = torch.meshgrid(
        torch.arange(SYNTHETIC_SHAPE[1], dtype=torch.float32),
        torch.arange(SYNTHETIC_SHAPE[2], dtype=torch.float32),
        indexing="ij",
    )
    wave = (torch.cos(angle) * rows + torch.sin(angle) * cols) * (2 * math.pi / period) + phase
    x = amplitude * torch.sin(wave) + _SYNTHETIC_NOISE * torch.randn(wave.shape, generator=g)
    x = (x / math.sqrt(1.0 + _SYNTHETIC_NOISE**2)).unsqueeze(1)
    train, val, test = (
        Split(xs.contiguous(), ys.contiguous())
        for xs, ys in zip(x.split(sizes), y.split(sizes), strict=True)
    )
    return Dataset(
        name="synthetic",
        train=train,
        val=val,
        test=test,
        num_classes=SYNTHETIC_CLASSES,
        input_shape=SYNTHETIC_SHAPE,
        class_names=tuple(
            f"{deg}deg/{px}px" for px in _SYNTHETIC_PERIODS for deg in _SYNTHETIC_ANGLES_DEG
        ),
    )


_LOADERS = {"fashion-mnist": _fashion_mnist, "digits": _digits, "synthetic": _synthetic}


def load_dataset(
    name: str, *, train_size: int | None, val_size: int | None, test_size: int | None, seed: int
) -> Dataset:
    """Load ``name`` as tensors, subsampled deterministically by ``seed``.

    A size of None means the default: for fashion-mnist all of train (less val) and test,
    val 5000; for digits 20% val, 20% test, the rest train; for synthetic 512/128/128.
    Raises DataError if the data is missing or corrupt or the sizes do not fit.
    """
    if name not in _LOADERS:
        raise _unknown(name)
    return _LOADERS[name](train_size, val_size, test_size, seed)
