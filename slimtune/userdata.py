"""The user's own data: an import callable, an ImageFolder tree, or an ``.npz`` archive.

Each source becomes the same :class:`slimtune.data.Dataset` as the built-in ones, its
splits streamed through DataLoaders (:mod:`slimtune.split`): nothing holds a split's
inputs in memory, only its labels. The shape of one
example, its dtype and the class count come from the data; nothing assumes 28x28 or one
channel. ``train_size``/``val_size``/``test_size`` take a random subset (seeded) of each
split. A source without a val split gets one carved from train with the data seed, and
the Dataset's ``notes`` say so.

Sources (the key names are a contract):

- ``import: "pkg.module:callable"``: ``callable()`` returns ``{"train": ds, "val": ds,
  "test": ds}`` (``val`` optional) or a tuple ``(train, val, test)`` / ``(train, test)``
  of map-style ``torch.utils.data.Dataset``\\ s whose items are ``(input, label)`` pairs.
  Class names: the train dataset's ``classes`` attribute if it has one. Loading reads every
  chosen item once, one at a time (types, shapes, labels, the fingerprint); batches then
  call ``__getitem__`` again (in ``data.workers`` processes: the datasets must pickle).
- ``folder: DIR``: ``DIR/train/<class>/*.png|jpg|jpeg``, ``DIR/test/<class>/...`` and
  optionally ``DIR/val/<class>/...``; the same class folders in every split, at least two.
  Decoded with Pillow; ``channels`` 1 (grey) or 3 (RGB; default: 1 if every image is
  greyscale), ``size`` resizes (needed when the images differ in size), pixels scale to
  [0, 1] and then normalise by ``mean``/``std`` (default: the train split's, per channel).
  See :mod:`slimtune.imagefolder`: images are decoded as batches ask for them.
- ``npz: FILE``: arrays ``x_train, y_train, x_test, y_test`` and optionally ``x_val,
  y_val`` (and ``class_names``); inputs are used as stored (the model's own
  preprocessing), labels are integers from 0. See :mod:`slimtune.npzdata`: an uncompressed
  archive's inputs are memory-mapped, not read.

Every problem is a :class:`slimtune.data.DataError` with one line, raised before compute.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from slimtune.data import DataError, Dataset, Split, check_dataset, load_dataset
from slimtune.imagefolder import folder_splits, list_folder
from slimtune.imports import import_object, one_line
from slimtune.npzdata import NpzItems, check_npz_split, npz_arrays
from slimtune.spec import DataSpec

SPLITS = ("train", "val", "test")
DEFAULT_VAL_FRACTION = 0.1  # of train, when a source has no val split
MAX_UNNAMED_CLASSES = 100_000  # a larger label without class names is not a class index


def load_data(spec: DataSpec, *, seed: int, task: str = "classification") -> Dataset:
    """The dataset ``spec`` names, subset by its sizes with ``seed``, loaded as its
    ``workers``/``batch_size`` say; DataError if not. For ``task: custom`` an imported
    dataset's targets may be tensors (not class indices)."""
    sizes = (spec.train_size, spec.val_size, spec.test_size)
    if spec.dataset is not None:
        check_dataset(spec.dataset)
        data = load_dataset(spec.dataset, train_size=spec.train_size,
                            val_size=spec.val_size, test_size=spec.test_size, seed=seed)
    elif spec.import_ is not None:
        data = _imported(spec.import_, sizes, seed, targets=task != "classification")
    elif spec.folder is not None:
        data = _folder(spec, sizes, seed)
    else:
        assert spec.npz is not None
        data = _npz(spec.npz, sizes, seed)
    return data.with_loading(workers=spec.workers, batch_size=spec.batch_size)


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


def _finish(name: str, splits: Mapping[str, Split], class_names: Sequence[str] | None,
            notes: tuple[str, ...], content: str) -> Dataset:
    """The Dataset, after checking shapes and labels agree across the splits.

    ``content``: a digest of the training data as the source reads it; the fingerprint
    is it with the example shape and the class names.
    """
    shapes = {split: s.example_shape for split, s in splits.items()}
    for split, shape in shapes.items():
        if len(shape) < 1:
            raise DataError(f"{name}: {split} inputs have shape {[len(splits[split])]}; one "
                            "example must be at least a vector (N x features, or N x C x H x W)")
    if len(set(shapes.values())) > 1:
        raise DataError(f"{name}: one example's shape differs between splits: "
                        + ", ".join(f"{k} {list(v)}" for k, v in shapes.items()))
    low = min(int(s.y.min()) for s in splits.values())
    high = max(int(s.y.max()) for s in splits.values())
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
    train = splits["train"]
    digest = hashlib.sha256(repr(((len(train), *shapes["train"]), names)).encode())
    digest.update(content.encode())
    return Dataset(name=name, train=train, val=splits["val"], test=splits["test"],
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


def _as_example(item: object, where: str, *, targets: bool = False
                ) -> tuple[torch.Tensor, int | torch.Tensor]:
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
    if targets and not _is_class_index(label):  # a custom task's target: a float tensor
        try:
            return x, torch.as_tensor(label, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as e:
            raise DataError(f"{where}: its target ({type(y).__name__}) is not a tensor or an "
                            f"array of numbers: {one_line(e)}") from None
    if isinstance(label, torch.Tensor):
        if label.numel() != 1 or label.is_floating_point() or label.is_complex():
            raise DataError(f"{where}: its label is not one integer class index "
                            f"(a {label.dtype} tensor of shape {list(label.shape)})")
        label = int(label.item())
    if isinstance(label, bool) or not isinstance(label, int):
        raise DataError(f"{where}: its label is a {type(label).__name__}, not an integer "
                        "class index")
    return x, label


def _is_class_index(label: object) -> bool:
    if isinstance(label, torch.Tensor):
        return label.numel() == 1 and not label.is_floating_point() and label.dim() == 0
    return isinstance(label, int) and not isinstance(label, bool)


class ImportedItems(TorchDataset):
    """Items ``indices`` of a user's dataset, each checked into ``(float32 tensor, int)``."""

    def __init__(self, dataset: object, indices: Sequence[int], where: str, *,
                 targets: bool = False) -> None:
        self.dataset, self.indices, self.where = dataset, [int(i) for i in indices], where
        self.targets = targets  # a custom task: tensor targets allowed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        j = self.indices[i]
        try:
            item = self.dataset[j]  # type: ignore[index]
        except Exception as e:
            raise DataError(f"{self.where}[{j}] raised {type(e).__name__}: "
                            f"{one_line(e)}") from e
        return _as_example(item, f"{self.where}[{j}]", targets=self.targets)


def _read_once(items: ImportedItems, digest: object | None
               ) -> tuple[tuple[int, ...], torch.Tensor | None, tuple[int, ...] | None]:
    """Every item once, one at a time: the common example shape, the labels (None for
    tensor targets) and the targets' shape (None for labels); the inputs' and labels'
    bytes go to ``digest``."""
    shape, labels, target_shape = None, [], None
    for i in range(len(items)):
        x, y = items[i]
        if shape is None:
            shape = tuple(x.shape)
        elif tuple(x.shape) != shape:
            raise DataError(f"{items.where}[{items.indices[i]}] has shape {list(x.shape)}, "
                            f"{items.where}[{items.indices[0]}] {list(shape)}: every example "
                            "must have the same shape")
        if digest is not None:
            digest.update(x.contiguous().numpy().tobytes())  # type: ignore[attr-defined]
        if isinstance(y, torch.Tensor):
            if target_shape is None:
                target_shape = tuple(y.shape)
            elif tuple(y.shape) != target_shape:
                raise DataError(f"{items.where}[{items.indices[i]}]: its target has shape "
                                f"{list(y.shape)}, the first one's {list(target_shape)}")
            if digest is not None:
                digest.update(y.contiguous().numpy().tobytes())  # type: ignore[attr-defined]
        labels.append(y)
    assert shape is not None
    if target_shape is not None:
        if any(not isinstance(t, torch.Tensor) for t in labels):
            raise DataError(f"{items.where}: some targets are class indices, some tensors")
        return shape, None, target_shape
    y = torch.as_tensor(labels, dtype=torch.int64)
    if digest is not None:
        digest.update(y.numpy().tobytes())  # type: ignore[attr-defined]
    return shape, y, None


def _imported(target: str, sizes: tuple[int | None, ...], seed: int, *,
              targets: bool = False) -> Dataset:
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
    items = {name: ImportedItems(datasets[origin], idx, f"{source} {origin}", targets=targets)
             for name, (origin, idx) in chosen.items()}
    for name in SPLITS:  # the first example of each split first: a wrong type fails fast
        _ = items[name][0]
    digest = hashlib.sha256()
    splits, target_shapes = {}, set()
    for name in SPLITS:
        shape, labels, target_shape = _read_once(items[name],
                                                 digest if name == "train" else None)
        splits[name] = Split(items[name], labels, example_shape=shape)
        target_shapes.add(target_shape)
    if target_shapes != {None}:  # a custom task's tensor targets: no class labels
        if len(target_shapes) > 1:
            raise DataError(f"{source}: the splits' targets differ in shape or kind: "
                            f"{sorted(map(str, target_shapes))}")
        return _targets_dataset(f"import:{target}", splits, notes, digest.hexdigest(),
                                next(iter(target_shapes)))
    classes = getattr(datasets["train"], "classes", None)
    if not (isinstance(classes, Sequence) and classes
            and all(isinstance(c, str) for c in classes)):
        classes = None
    return _finish(f"import:{target}", splits, classes, notes, digest.hexdigest())


def _targets_dataset(name: str, splits: Mapping[str, Split], notes: tuple[str, ...],
                     content: str, target_shape: tuple[int, ...]) -> Dataset:
    """A custom task's Dataset: tensor targets, so no classes; ``num_classes`` is the
    number of values in one target (what a built-in arch's head would have to output)."""
    shapes = {split: s.example_shape for split, s in splits.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"{name}: one example's shape differs between splits: "
                        + ", ".join(f"{k} {list(v)}" for k, v in shapes.items()))
    digest = hashlib.sha256(repr(((len(splits["train"]), *shapes["train"]),
                                  target_shape)).encode())
    digest.update(content.encode())
    return Dataset(name=name, train=splits["train"], val=splits["val"], test=splits["test"],
                   num_classes=max(1, int(np.prod(target_shape))), input_shape=shapes["train"],
                   class_names=(), notes=notes, fingerprint=digest.hexdigest()[:16])


# --- folder: DIR (ImageFolder layout; slimtune.imagefolder) --------------------------------


def _folder(spec: DataSpec, sizes: tuple[int | None, ...], seed: int) -> Dataset:
    root = spec.folder
    assert root is not None
    classes, files = list_folder(root)
    chosen, notes = _choose({k: len(v) for k, v in files.items()}, sizes, seed,
                            f"data folder {root}")
    paths = {name: [files[origin][i] for i in idx] for name, (origin, idx) in chosen.items()}
    splits, content = folder_splits(spec, paths)
    return _finish(f"folder:{root}", splits, classes, notes, content)


# --- npz: FILE (slimtune.npzdata) ----------------------------------------------------------


def _npz(path: Path, sizes: tuple[int | None, ...], seed: int) -> Dataset:
    arrays, notes = npz_arrays(path)
    present = [s for s in SPLITS if f"x_{s}" in arrays]
    for split in present:
        check_npz_split(path, split, arrays[f"x_{split}"], arrays[f"y_{split}"])
    names = arrays.get("class_names")
    if names is not None and (names.ndim != 1 or names.dtype.kind not in "U"):
        raise DataError(f"{path}: class_names must be a 1-D array of strings")
    chosen, carved = _choose({s: len(arrays[f"y_{s}"]) for s in present}, sizes, seed,
                             f"npz {path}")
    splits = {}
    for name, (origin, idx) in chosen.items():
        x, y = arrays[f"x_{origin}"], np.asarray(arrays[f"y_{origin}"])[idx]
        items = NpzItems(path, f"x_{origin}", x, idx, y)
        splits[name] = Split(items, items.labels, example_shape=tuple(x.shape[1:]))
    digest = hashlib.sha256()
    splits["train"].update_hash(digest)
    return _finish(f"npz:{path}", splits, None if names is None else names.tolist(),
                   carved + notes, digest.hexdigest())
