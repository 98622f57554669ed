"""Tiny user datasets on disk for tests: an ImageFolder tree of PNGs, an npz, a data module."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

# Class c's images are filled with colour COLOURS[c] plus noise, so each class is learnable.
COLOURS = ((200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30))


def write_image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog", "fox"),
                       counts: dict[str, int] | None = None, size: tuple[int, int] = (8, 8),
                       mode: str = "RGB", suffix: str = ".png", seed: int = 0) -> Path:
    """``root/<split>/<class>/<i>.png``: ``counts[split]`` images a class, ``size`` = (w, h)."""
    counts = {"train": 6, "val": 2, "test": 2} if counts is None else counts
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(np.array(COLOURS[c % len(COLOURS)])
                                 + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255)
                image = Image.fromarray(pixels.astype(np.uint8), "RGB").convert(mode)
                image.save(folder / f"{i}{suffix}")
    return root


def tabular(n: int, features: int = 5, classes: int = 3, seed: int = 0):
    """Gaussian blobs: x float32 (n, features), y int64 (n,)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(0, 1, (n, features)) + 3 * np.eye(classes, features)[y]
    return x.astype(np.float32), y.astype(np.int64)


def write_npz(path: Path, *, val: bool = True, features: int = 5, **arrays) -> Path:
    """An npz of ``tabular`` splits (60/20/20), entries replaced or added by ``arrays``."""
    x_train, y_train = tabular(60, features, seed=0)
    x_val, y_val = tabular(20, features, seed=1)
    x_test, y_test = tabular(20, features, seed=2)
    content = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    if val:
        content.update(x_val=x_val, y_val=y_val)
    content.update(arrays)
    np.savez(path, **{k: v for k, v in content.items() if v is not None})
    return path


DATA_MODULE = '''
import torch
from torch.utils.data import Dataset, TensorDataset


class Blobs(Dataset):
    classes = ["a", "b", "c"]

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % 3
        self.x = torch.randn(n, 2, 6, 6, generator=g) + self.y.view(n, 1, 1, 1).float()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def splits():
    return {"train": Blobs(30, 0), "val": Blobs(9, 1), "test": Blobs(12, 2)}


def no_val():
    return Blobs(30, 0), Blobs(12, 2)


def tensors():
    x, y = torch.randn(20, 4), torch.arange(20) % 2
    return TensorDataset(x, y), TensorDataset(x[:6], y[:6]), TensorDataset(x[:8], y[:8])


def wrong():
    return 42


def raises():
    raise RuntimeError("disk on fire")


def bad_items():
    return [1, 2, 3], [4, 5], [6]


def float_labels():
    data = TensorDataset(torch.randn(8, 4), torch.rand(8))
    return data, data, data
'''


def write_data_module(folder: Path, name: str) -> str:
    """A module ``name`` in ``folder`` (put it on sys.path) with the callables above."""
    (folder / f"{name}.py").write_text(textwrap.dedent(DATA_MODULE))
    return name
