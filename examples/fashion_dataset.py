"""A user's own ``torch.utils.data.Dataset`` class, handed over by ``data: {import: ...}``.

``splits()`` returns the train and test sets (slimtune carves val from train and says
so); each item is ``(image tensor 1x28x28, label)`` read from the Debian package's IDX
files; ``classes`` names the labels (examples/import.yaml).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from slimtune.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    fashion_mnist_dir,
)


class FashionMNIST(Dataset):
    """One split of Fashion-MNIST, normalised as the built-in dataset is."""

    classes = FASHION_MNIST_CLASSES

    def __init__(self, split: str = "train", *, limit: int | None = None,
                 root: Path | None = None) -> None:
        prefix = "train" if split == "train" else "t10k"
        root = root or fashion_mnist_dir()
        with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz") as f:
            images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
        with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz") as f:
            labels = np.frombuffer(f.read(), np.uint8, offset=8)
        self.images, self.labels = images[:limit], labels[:limit].astype(np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.images[i].astype(np.float32) / 255)
        return ((x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD).unsqueeze(0), int(self.labels[i])


def splits(limit: int | None = 3000) -> dict[str, Dataset]:
    """The first ``limit`` examples of train and of test (no val: slimtune carves it)."""
    return {"train": FashionMNIST("train", limit=limit),
            "test": FashionMNIST("test", limit=limit)}
