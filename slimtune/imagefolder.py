"""``data: {folder: DIR}``: an ImageFolder tree, decoded lazily, one image an item.

Loading lists the files, then makes two streaming passes before any compute, holding
one image at a time: the headers of every chosen image (mode, size, and the bytes into
the fingerprint), then a decode of every chosen image (a corrupt one fails here, not in
training) that sums the train split's pixels per channel for the default ``mean``/``std``
(exact, over every chosen train image, accumulated in float64). The decode pass runs in
``data.workers`` loader processes. Training and evaluation then decode each image again
as a batch asks for it (:class:`FolderItems`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from slimtune.data import DataError, Split
from slimtune.imports import one_line

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
LAYOUT = "DIR/train/<class>/*.png|jpg, DIR/val/..., DIR/test/..."


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not
                  d.name.startswith("."))


def _images(class_dir: Path) -> list[Path]:
    return sorted(p for p in class_dir.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def list_folder(root: Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """Class names and, per split present, its (image file, label) pairs."""
    if not root.is_dir():
        raise DataError(f"data folder {root} not found" if not root.exists()
                        else f"data folder {root} is not a folder")
    for required in ("train", "test"):
        if not (root / required).is_dir():
            raise DataError(f"data folder {root} has no {required}/ folder (layout: {LAYOUT})")
    classes = _class_folders(root / "train")
    if not classes:
        raise DataError(f"{root / 'train'} has no class subfolders (layout: {LAYOUT})")
    if len(classes) < 2:
        raise DataError(f"{root / 'train'} has one class folder ({classes[0]}); "
                        "classification needs at least 2")
    files: dict[str, list[tuple[Path, int]]] = {}
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        found = _class_folders(split_dir)
        if found != classes:
            only_train = sorted(set(classes) - set(found))
            only_here = sorted(set(found) - set(classes))
            parts = [f"only in train: {', '.join(only_train)}" if only_train else "",
                     f"only in {split}: {', '.join(only_here)}" if only_here else ""]
            raise DataError(f"data folder {root}: class folders differ between train and "
                            f"{split} ({'; '.join(p for p in parts if p)})")
        files[split] = []
        for label, name in enumerate(classes):
            images = _images(split_dir / name)
            if not images:
                raise DataError(f"{split_dir / name} holds no {'/'.join(IMAGE_SUFFIXES)} "
                                "image")
            files[split].extend((path, label) for path in images)
    return classes, files


def _unreadable(path: Path, e: BaseException) -> DataError:
    return DataError(f"cannot read image {path}: {type(e).__name__}: {one_line(e)}")


def decode(path: Path, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """One image as float32 C x H x W in [0, 1]."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            image = image.convert("L" if channels == 1 else "RGB")
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32) / 255.0
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise _unreadable(path, e) from None
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


class FolderItems(TorchDataset):
    """Image files decoded on access: ``(C x H x W float32, normalised; label)``."""

    def __init__(self, files: Sequence[tuple[Path, int]], *, channels: int,
                 size: tuple[int, int] | None, mean: np.ndarray, std: np.ndarray) -> None:
        self.paths = [str(p) for p, _ in files]
        self.labels = [int(label) for _, label in files]
        self.channels, self.size = channels, size
        self.mean, self.std = mean.astype(np.float32), std.astype(np.float32)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        pixels = decode(Path(self.paths[i]), self.channels, self.size)
        return torch.from_numpy((pixels - self.mean) / self.std), self.labels[i]


class _DecodeStats(TorchDataset):
    """Decode pass items: per image, channel sums, sums of squares and pixel count, or the
    one-line error (returned, not raised: a worker's exception would lose its message)."""

    def __init__(self, paths: Sequence[Path], channels: int,
                 size: tuple[int, int] | None) -> None:
        self.paths, self.channels, self.size = [str(p) for p in paths], channels, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[str, Any, Any, int]:
        try:
            pixels = decode(Path(self.paths[i]), self.channels, self.size).astype(np.float64)
        except DataError as e:
            return str(e), None, None, 0
        flat = pixels.reshape(self.channels, -1)
        return "", flat.sum(1), (flat * flat).sum(1), flat.shape[1]


def _headers(pairs: Sequence[tuple[Path, int]], size: tuple[int, int] | None,
             digest: Any) -> bool:
    """Check every image opens (and, without ``size``, that all have one size); feed the
    file bytes and labels to ``digest``. True if every image is greyscale."""
    from PIL import Image

    grey, first = True, None
    for path, label in pairs:
        try:
            with Image.open(path) as image:
                mode, (width, height) = image.mode, image.size
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise _unreadable(path, e) from None
        grey = grey and mode in GREY_MODES
        if size is None:
            if first is None:
                first = (path, width, height)
            elif (width, height) != first[1:]:
                raise DataError(f"images differ in size ({first[0]} is {first[1]}x"
                                f"{first[2]}, {path} is {width}x{height}): set "
                                "data.size to resize them")
        if digest is not None:
            digest.update(f"{label}:{path.stat().st_size}:".encode())
            with open(path, "rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    digest.update(block)
    return grey


def _per_channel(value: float | tuple[float, ...], channels: int, key: str) -> np.ndarray:
    values = np.atleast_1d(np.asarray(value, dtype=np.float32))
    if len(values) not in (1, channels):
        raise DataError(f"data.{key} has {len(values)} values but the images have "
                        f"{channels} channel(s): give one value or one per channel")
    return np.broadcast_to(values, (channels,)).reshape(channels, 1, 1)


def _decode_all(paths: dict[str, list[tuple[Path, int]]], channels: int,
                size: tuple[int, int] | None, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode every chosen image once (errors first); the train split's per-channel pixel
    mean and std (population), accumulated in float64."""
    total = np.zeros(channels)
    squares = np.zeros(channels)
    count = 0
    for name, pairs in paths.items():
        items = _DecodeStats([p for p, _ in pairs], channels, size)
        loader = DataLoader(items, batch_size=None, num_workers=workers)
        for error, s, q, n in loader:
            if error:
                raise DataError(error)
            if name == "train":
                total += np.asarray(s)
                squares += np.asarray(q)
                count += int(n)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    return mean.reshape(channels, 1, 1), std.reshape(channels, 1, 1)


def folder_splits(spec: Any, paths: dict[str, list[tuple[Path, int]]]
                  ) -> tuple[dict[str, Split], str]:
    """The streamed splits of the chosen ``paths`` (split -> (file, label) pairs) and the
    content digest (file bytes, labels, decoding options) for the fingerprint."""
    size = (spec.size, spec.size) if isinstance(spec.size, int) else spec.size
    digest = hashlib.sha256(repr((size, spec.channels, spec.mean, spec.std)).encode())
    grey = True
    for name, pairs in paths.items():
        digest.update(f"split {name}:{len(pairs)}".encode())
        grey = _headers(pairs, size, digest if name == "train" else None) and grey
    channels = spec.channels or (1 if grey else 3)
    given_mean = None if spec.mean is None else _per_channel(spec.mean, channels, "mean")
    given_std = None if spec.std is None else _per_channel(spec.std, channels, "std")
    mean, std = _decode_all(paths, channels, size, spec.workers)
    mean = mean if given_mean is None else given_mean
    std = std if given_std is None else given_std
    std = np.where(std > 0, std, 1.0)  # a constant channel stays 0
    splits = {}
    for name, pairs in paths.items():
        items = FolderItems(pairs, channels=channels, size=size, mean=mean, std=std)
        labels = torch.as_tensor(items.labels, dtype=torch.int64)
        splits[name] = Split(items, labels, example_shape=(channels, *items[0][0].shape[1:]))
    return splits, digest.hexdigest()
