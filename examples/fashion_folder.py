"""Write Fashion-MNIST as an ImageFolder of 32x32 RGB PNG files, as a user's photos are.

    python -m examples.fashion_folder DIR [--per-class 100]

``DIR/train/<class>/*.png`` and ``DIR/test/<class>/*.png`` from the Debian package's IDX
files (``apt-get install -y dataset-fashion-mnist``), ``--per-class`` images of each class
per split; then ``data: {folder: DIR, channels: 3}`` reads them back (examples/folder.yaml).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from slimtune.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    load_dataset,
)

SIZE = 32


def write_folder(out: Path, per_class: int = 100, *, seed: int = 0) -> Path:
    """``out`` filled with ``per_class`` PNGs a class in train/ and test/; returns ``out``."""
    data = load_dataset("fashion-mnist", train_size=None, val_size=None, test_size=None,
                        seed=seed)
    names = [c.replace("/", "-").replace(" ", "_") for c in FASHION_MNIST_CLASSES]
    for split_name, split in (("train", data.train), ("test", data.test)):
        counts = [0] * len(names)
        for x, y in split.loader(1024):
            pixels = x[:, 0].numpy() * FASHION_MNIST_STD + FASHION_MNIST_MEAN  # unnormalised
            for img, label in zip(pixels, y.tolist(), strict=True):
                if counts[label] >= per_class:
                    continue
                folder = out / split_name / names[label]
                folder.mkdir(parents=True, exist_ok=True)
                grey = Image.fromarray(np.clip(img * 255, 0, 255).round().astype(np.uint8))
                grey.resize((SIZE, SIZE), Image.Resampling.BILINEAR).convert("RGB").save(
                    folder / f"{counts[label]:05d}.png")
                counts[label] += 1
            if min(counts) >= per_class:
                break
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--per-class", type=int, default=100)
    args = p.parse_args()
    print(write_folder(args.out, args.per_class))


if __name__ == "__main__":
    main()
