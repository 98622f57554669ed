"""A tabular problem: scikit-learn's bundled wine data as an ``.npz``, and an MLP for it.

    python -m examples.wine DIR/wine.npz

Features standardised on the train split, a seeded 60/20/20 train/val/test split;
``data: {npz: wine.npz}`` with ``model: {import: "examples.wine:mlp"}`` searches the MLP's
hidden widths and bit-widths (examples/wine.yaml).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from torch import nn


def write_npz(path: Path, *, seed: int = 0) -> Path:
    """The wine data (178 examples, 13 features, 3 classes) split and saved at ``path``."""
    from sklearn.datasets import load_wine

    data = load_wine()
    x, y = data.data.astype(np.float32), data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_train, n_val = int(0.6 * len(y)), int(0.2 * len(y))
    tr, va, te = np.split(order, [n_train, n_train + n_val])
    mean, std = x[tr].mean(0), x[tr].std(0) + 1e-6
    x = (x - mean) / std
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x_train=x[tr], y_train=y[tr], x_val=x[va], y_val=y[va], x_test=x[te],
             y_test=y[te], class_names=np.array(data.target_names))
    return path


def mlp(num_classes: int = 3, in_channels: int = 13) -> nn.Module:
    """Two hidden layers (64, 32) over ``in_channels`` features (13 for wine)."""
    return nn.Sequential(nn.Linear(in_channels, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                         nn.Linear(32, num_classes))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    print(write_npz(p.parse_args().out))


if __name__ == "__main__":
    main()
