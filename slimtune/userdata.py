"""The user's own data: an import callable, an ImageFolder tree, or an ``.npz`` archive.

Each source becomes the same :class:`slimtune.data.Dataset` as the built-in ones (splits
in memory for now; streaming DataLoaders are a later step of issue 14). The shape of one
example, its dtype and the class count come from the data; nothing assumes 28x28 or one
channel. ``train_size``/``val_size``/``test_size`` take a random subset (seeded) of each
split. A source without a val split gets one carved from train with the data seed, and
the Dataset's ``notes`` say so.

Sources (the key names are a contract):

- ``import: "pkg.module:callable"``: ``callable()`` returns ``{"train": ds, "val": ds,
  "test": ds}`` (``val`` optional) or a tuple ``(train, val, test)`` / ``(train, test)``
  of map-style ``torch.utils.data.Dataset``\\ s whose items are ``(input, label)`` pairs.
  Class names: the train dataset's ``classes`` attribute if it has one.
- ``folder: DIR``: ``DIR/train/<class>/*.png|jpg|jpeg``, ``DIR/test/<class>/...`` and
  optionally ``DIR/val/<class>/...``; the same class folders in every split, at least two.
  Decoded with Pillow; ``channels`` 1 (grey) or 3 (RGB; default: 1 if every image is
  greyscale), ``size`` resizes (needed when the images differ in size), pixels scale to
  [0, 1] and then normalise by ``mean``/``std`` (default: the train split's, per channel).
- ``npz: FILE``: arrays ``x_train, y_train, x_test, y_test`` and optionally ``x_val,
  y_val`` (and ``class_names``); inputs are used as stored (the model's own
  preprocessing), labels are integers from 0.

Every problem is a :class:`slimtune.data.DataError` with one line, raised before compute.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from slimtune.data import DataError, Dataset, Split, check_dataset, load_dataset
from slimtune.imports import import_object, one_line
from slimtune.spec import DataSpec

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NPZ_KEYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
DEFAULT_VAL_FRACTION = 0.1  # of train, when a source has no val split
MAX_UNNAMED_CLASSES = 100_000  # a larger label without class names is not a class index
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
_LOAD_BATCH = 256


def load_data(spec: DataSpec, *, seed: int) -> Dataset:
    """The dataset ``spec`` names, subset by its sizes with ``seed``; DataError if not."""
    sizes = (spec.train_size, spec.val_size, spec.test_size)
    if spec.dataset is not None:
        check_dataset(spec.dataset)
        return load_dataset(spec.dataset, train_size=spec.train_size, val_size=spec.val_size,
                            test_size=spec.test_size, seed=seed)
    if spec.import_ is not None:
        return _imported(spec.import_, sizes, seed)
    if spec.folder is not None:
        return _folder(spec, sizes, seed)
    assert spec.npz is not None
    return _npz(spec.npz, sizes, seed)


# --- which examples of each split --------------------------------------------------------


def _subset(n: int, size: int | None, seed: int, what: str) -> np.ndarray:
    """Indices of ``size`` examples of ``n`` (all, in order, for None), seeded."""
    if size is None:
        return np.arange(n)
    if size > n:
        raise DataError(f"the {what} split has {n} examples, fewer than {what}_size {size}")
    return np.sort(np.random.default_rng(seed).permutation(n)[:size])


def _choose(counts: Mapping[str, int], sizes: tuple[int | None, ...], seed: int,
            source: str) -> tuple[dict[str, tuple[str, np.ndarray]], tuple[str, ...]]:
    """For each split, (the split it is drawn from, indices into it), and the notes.

    Without a val split, val is the first ``val_size`` (default 10%) of a seeded
    permutation of train, and train is drawn from the rest.
    """
    train_size, val_size, test_size = sizes
    chosen = {"test": ("test", _subset(counts["test"], test_size, seed, "test"))}
    if "val" in counts:
        chosen["val"] = ("val", _subset(counts["val"], val_size, seed, "val"))
        chosen["train"] = ("train", _subset(counts["train"], train_size, seed, "train"))
        return chosen, ()
    n = counts["train"]
    n_val = val_size or max(1, round(DEFAULT_VAL_FRACTION * n))
    n_train = train_size or n - n_val
    if n_val + n_train > n or n_train < 1:
        raise DataError(f"{source} has no val split and its train split has {n} examples, "
                        f"fewer than train {n_train} + val {n_val} carved from it")
    perm = np.random.default_rng(seed).permutation(n)
    chosen["val"] = ("train", np.sort(perm[:n_val]))
    chosen["train"] = ("train", np.sort(perm[n_val:n_val + n_train]))
    note = (f"data: {source} has no val split; {n_val} of its {n} train examples are carved "
            f"out as val (seed {seed}), disjoint from train")
    return chosen, (note,)


def _finish(name: str, splits: Mapping[str, tuple[np.ndarray | torch.Tensor, np.ndarray]],
            class_names: Sequence[str] | None, notes: tuple[str, ...]) -> Dataset:
    """The Dataset, after checking shapes and labels agree across the splits."""
    tensors = {}
    for split, (x, y) in splits.items():
        x = torch.as_tensor(x, dtype=torch.float32).contiguous()
        y = torch.as_tensor(y, dtype=torch.int64).contiguous()
        if x.dim() < 2:
            raise DataError(f"{name}: {split} inputs have shape {list(x.shape)}; one example "
                            "must be at least a vector (N x features, or N x C x H x W)")
        tensors[split] = Split(x, y)
    shapes = {split: tuple(s.x.shape[1:]) for split, s in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"{name}: one example's shape differs between splits: "
                        + ", ".join(f"{k} {list(v)}" for k, v in shapes.items()))
    low = min(int(s.y.min()) for s in tensors.values())
    high = max(int(s.y.max()) for s in tensors.values())
    if low < 0:
        raise DataError(f"{name}: labels must be class indices from 0, found {low}")
    if class_names is not None:
        if high >= len(class_names):
            raise DataError(f"{name}: label {high} is out of range for {len(class_names)} "
                            "classes (labels are 0 .. classes - 1)")
        names = tuple(str(c) for c in class_names)
    elif high >= MAX_UNNAMED_CLASSES:
        raise DataError(f"{name}: label {high} is not a class index 0 .. classes - 1 "
                        f"(give class names for more than {MAX_UNNAMED_CLASSES} classes)")
    else:
        names = tuple(str(c) for c in range(high + 1))
    if len(names) < 2:
        raise DataError(f"{name}: found {len(names)} class; classification needs at least 2")
    train = tensors["train"]
    digest = hashlib.sha256(repr((tuple(train.x.shape), names)).encode())
    digest.update(train.x.numpy().data)
    digest.update(train.y.numpy().data)
    return Dataset(name=name, train=train, val=tensors["val"], test=tensors["test"],
                   num_classes=len(names), input_shape=shapes["train"], class_names=names,
                   notes=notes, fingerprint=digest.hexdigest()[:16])


# --- import: "pkg.module:callable" --------------------------------------------------------


def _named_splits(result: object, target: str) -> dict[str, object]:
    if isinstance(result, Mapping):
        keys = set(result)
        if not {"train", "test"} <= keys or keys - set(SPLITS):
            raise DataError(f"data {target!r} returned a mapping with keys "
                            f"{sorted(map(str, keys))}; expected 'train', 'test' and "
                            "optionally 'val'")
        return {k: result[k] for k in SPLITS if k in result}
    if isinstance(result, tuple | list) and len(result) in (2, 3):
        names = SPLITS if len(result) == 3 else ("train", "test")
        return dict(zip(names, result, strict=True))
    raise DataError(f"data {target!r} returned a {type(result).__name__}; expected a "
                    "mapping {train, val, test} or a tuple (train, val, test) of "
                    "torch.utils.data.Dataset")


def _as_example(item: object, where: str) -> tuple[torch.Tensor, int]:
    if not isinstance(item, tuple | list) or len(item) != 2:
        raise DataError(f"{where} is a {type(item).__name__}; expected an (input, label) pair")
    x, y = item
    if type(x).__module__.startswith("PIL"):
        raise DataError(f"{where} holds a PIL image: give the Dataset a transform that "
                        "returns a tensor")
    try:
        x = torch.as_tensor(x, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as e:
        raise DataError(f"{where}: its input ({type(x).__name__}) is not a tensor or an "
                        f"array of numbers: {one_line(e)}") from None
    label = torch.as_tensor(y) if isinstance(y, torch.Tensor | np.ndarray | np.generic) else y
    if isinstance(label, torch.Tensor):
        if label.numel() != 1 or label.is_floating_point() or label.is_complex():
            raise DataError(f"{where}: its label is not one integer class index "
                            f"(a {label.dtype} tensor of shape {list(label.shape)})")
        label = int(label.item())
    if isinstance(label, bool) or not isinstance(label, int):
        raise DataError(f"{where}: its label is a {type(label).__name__}, not an integer "
                        "class index")
    return x, label


def _materialize(dataset: object, idx: np.ndarray, where: str) -> tuple[torch.Tensor,
                                                                        np.ndarray]:
    xs, ys, shape = [], [], None
    for i in idx.tolist():
        try:
            item = dataset[i]  # type: ignore[index]
        except Exception as e:
            raise DataError(f"{where}[{i}] raised {type(e).__name__}: {one_line(e)}") from e
        x, y = _as_example(item, f"{where}[{i}]")
        if shape is None:
            shape = x.shape
        elif x.shape != shape:
            raise DataError(f"{where}[{i}] has shape {list(x.shape)}, {where}[{idx[0]}] "
                            f"{list(shape)}: every example must have the same shape")
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), np.asarray(ys, dtype=np.int64)


def _imported(target: str, sizes: tuple[int | None, ...], seed: int) -> Dataset:
    fn = import_object(target, what="data", error=DataError)
    assert isinstance(fn, Callable)
    try:
        result = fn()
    except Exception as e:
        raise DataError(f"calling data {target!r} failed: {type(e).__name__}: "
                        f"{one_line(e)}") from e
    datasets = _named_splits(result, target)
    counts = {}
    for name, ds in datasets.items():
        if not (hasattr(ds, "__getitem__") and hasattr(ds, "__len__")):
            raise DataError(f"data {target!r}: its {name} split is a {type(ds).__name__}, "
                            "not a map-style torch.utils.data.Dataset (with __len__ and "
                            "__getitem__)")
        counts[name] = len(ds)  # type: ignore[arg-type]
        if counts[name] < 1:
            raise DataError(f"data {target!r}: its {name} split is empty")
    source = f"data {target!r}"
    chosen, notes = _choose(counts, sizes, seed, source)
    for name in SPLITS:  # the first example of each split first: a wrong type fails fast
        origin, idx = chosen[name]
        _materialize(datasets[origin], idx[:1], f"{source} {origin}")
    splits = {name: _materialize(datasets[origin], idx, f"{source} {origin}")
              for name, (origin, idx) in chosen.items()}
    classes = getattr(datasets["train"], "classes", None)
    if not (isinstance(classes, Sequence) and classes
            and all(isinstance(c, str) for c in classes)):
        classes = None
    return _finish(f"import:{target}", splits, classes, notes)


# --- folder: DIR (ImageFolder layout) -----------------------------------------------------


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not
                  d.name.startswith("."))


def _images(class_dir: Path) -> list[Path]:
    return sorted(p for p in class_dir.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def _list_folder(root: Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """Class names and, per split present, its (image file, label) pairs."""
    if not root.is_dir():
        raise DataError(f"data folder {root} not found" if not root.exists()
                        else f"data folder {root} is not a folder")
    layout = "DIR/train/<class>/*.png|jpg, DIR/val/..., DIR/test/..."
    for required in ("train", "test"):
        if not (root / required).is_dir():
            raise DataError(f"data folder {root} has no {required}/ folder (layout: {layout})")
    classes = _class_folders(root / "train")
    if not classes:
        raise DataError(f"{root / 'train'} has no class subfolders (layout: {layout})")
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


def _open_image(path: Path):
    from PIL import Image

    try:
        image = Image.open(path)
        image.load()
        return image
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {type(e).__name__}: "
                        f"{one_line(e)}") from None


def _decode(path: Path, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """One image as float32 C x H x W in [0, 1]."""
    from PIL import Image

    with _open_image(path) as image:
        image = image.convert("L" if channels == 1 else "RGB")
        if size is not None and image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32) / 255.0
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def _per_channel(value: float | tuple[float, ...], channels: int, key: str) -> np.ndarray:
    values = np.atleast_1d(np.asarray(value, dtype=np.float32))
    if len(values) not in (1, channels):
        raise DataError(f"data.{key} has {len(values)} values but the images have "
                        f"{channels} channel(s): give one value or one per channel")
    return np.broadcast_to(values, (channels,)).reshape(channels, 1, 1)


def _folder(spec: DataSpec, sizes: tuple[int | None, ...], seed: int) -> Dataset:
    from PIL import Image

    root = spec.folder
    assert root is not None
    classes, files = _list_folder(root)
    chosen, notes = _choose({k: len(v) for k, v in files.items()}, sizes, seed,
                            f"data folder {root}")
    paths = {name: [files[origin][i] for i in idx] for name, (origin, idx) in chosen.items()}
    size = (spec.size, spec.size) if isinstance(spec.size, int) else spec.size
    channels, first = spec.channels, None
    grey = True
    for pairs in paths.values():  # headers only: modes, sizes, unreadable files
        for path, _ in pairs:
            try:
                with Image.open(path) as image:
                    mode, (width, height) = image.mode, image.size
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                raise DataError(f"cannot read image {path}: {type(e).__name__}: "
                                f"{one_line(e)}") from None
            grey = grey and mode in _GREY_MODES
            if size is None:
                if first is None:
                    first = (path, width, height)
                elif (width, height) != first[1:]:
                    raise DataError(f"images differ in size ({first[0]} is {first[1]}x"
                                    f"{first[2]}, {path} is {width}x{height}): set "
                                    "data.size to resize them")
    channels = channels or (1 if grey else 3)
    splits = {}
    for name, pairs in paths.items():
        x = np.stack([_decode(path, channels, size) for path, _ in pairs])
        splits[name] = (x, np.asarray([label for _, label in pairs], dtype=np.int64))
    train_x = splits["train"][0]
    mean = (_per_channel(spec.mean, channels, "mean") if spec.mean is not None
            else train_x.mean(axis=(0, 2, 3)).reshape(channels, 1, 1))
    std = (_per_channel(spec.std, channels, "std") if spec.std is not None
           else train_x.std(axis=(0, 2, 3)).reshape(channels, 1, 1))
    std = np.where(std > 0, std, 1.0).astype(np.float32)  # a constant channel stays 0
    splits = {name: ((x - mean) / std, y) for name, (x, y) in splits.items()}
    return _finish(f"folder:{root}", splits, classes, notes)


# --- npz: FILE ----------------------------------------------------------------------------


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"npz file not found: {path}" if not path.exists()
                        else f"npz path {path} is not a file")
    if not zipfile.is_zipfile(path):  # np.load would guess at a pickle or an .npy
        with open(path, "rb") as f:
            what = "holds one array (.npy), not" if f.read(6) == b"\x93NUMPY" else "is not"
        raise DataError(f"{path} {what} an .npz archive of {', '.join(NPZ_KEYS)} "
                        "(write one with numpy.savez)")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot read {path} as an .npz archive: {one_line(e)}") from None
    with archive:
        keys = set(archive.files)
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in keys]
        if ("x_val" in keys) != ("y_val" in keys):
            missing.append("y_val" if "x_val" in keys else "x_val")
        if missing:
            raise DataError(f"{path} lacks {', '.join(missing)} (it holds: "
                            f"{', '.join(sorted(keys)) or 'nothing'}; expected "
                            f"{', '.join(NPZ_KEYS)}, val optional)")
        arrays = {}
        for key in (*NPZ_KEYS, "class_names"):
            if key not in keys:
                continue
            try:
                arrays[key] = archive[key]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
                raise DataError(f"{path}: cannot read {key}: {one_line(e)} (store arrays "
                                "of numbers, not Python objects)") from None
    return arrays


def _check_npz_split(path: Path, split: str, x: np.ndarray, y: np.ndarray) -> None:
    where = f"{path}: x_{split}"
    if x.dtype.kind not in "biuf":
        raise DataError(f"{where} has dtype {x.dtype}; inputs must be numbers")
    if x.ndim < 2:
        raise DataError(f"{where} has shape {list(x.shape)}; it must be N x features "
                        "(or N x C x H x W)")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{path}: x_{split} has {len(x)} examples but y_{split} has shape "
                        f"{list(y.shape)}; y must be one label per example")
    if len(x) == 0:
        raise DataError(f"{path}: x_{split} is empty")
    if y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0)):
        raise DataError(f"{path}: y_{split} has dtype {y.dtype}; labels must be integer "
                        "class indices")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DataError(f"{where} holds NaN or infinite values")


def _npz(path: Path, sizes: tuple[int | None, ...], seed: int) -> Dataset:
    arrays = _npz_arrays(path)
    present = [s for s in SPLITS if f"x_{s}" in arrays]
    for split in present:
        _check_npz_split(path, split, arrays[f"x_{split}"], arrays[f"y_{split}"])
    names = arrays.get("class_names")
    if names is not None and (names.ndim != 1 or names.dtype.kind not in "U"):
        raise DataError(f"{path}: class_names must be a 1-D array of strings")
    chosen, notes = _choose({s: len(arrays[f"y_{s}"]) for s in present}, sizes, seed,
                            f"npz {path}")
    splits = {name: (arrays[f"x_{origin}"][idx], arrays[f"y_{origin}"][idx])
              for name, (origin, idx) in chosen.items()}
    return _finish(f"npz:{path}", splits, None if names is None else names.tolist(), notes)
