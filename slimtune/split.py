"""One split of a dataset, read in batches through ``torch.utils.data.DataLoader``\\ s.

A :class:`Split` is a map-style dataset of ``(input, label)`` items (inputs float32 in
the shape the model takes, labels int) plus its labels as one int64 tensor (8 bytes an
example: the one per-example thing held in memory). Every training, evaluation and
calibration loop iterates :meth:`Split.loader` (or one of the loaders built on it), so a
split far larger than RAM works and peak memory depends on the batch size, not on the
split's size. ``data.workers`` loader processes decode items in parallel.

The built-in datasets are tensor-backed (:class:`TensorItems`): a batch is one indexing of
the tensor, the same tensors the in-memory code used, so seeded results do not change.
:meth:`Split.head` (the first ``n`` examples in memory) is for fixed, small probes only
(an example batch, the saliency sample); :attr:`Split.x` reads *everything* into memory
and is kept for tests and small data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset

EVAL_BATCH = 512  # the default batch of a pass over a split (evaluation, statistics)


class Batch(NamedTuple):
    """Inputs and labels of one batch, already stacked."""

    x: torch.Tensor
    y: torch.Tensor


class TensorItems(TorchDataset):
    """Items of in-memory tensors; a batch is fetched with one indexing (no per-item stack)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return Batch(self.x[idx], self.y[idx])


class IndexedItems(TorchDataset):
    """The items ``indices`` of another item dataset, in that order."""

    def __init__(self, items: TorchDataset, indices: Sequence[int]) -> None:
        self.items, self.indices = items, [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.items[self.indices[i]]

    def __getitems__(self, indices: Sequence[int]) -> Any:
        inner = [self.indices[i] for i in indices]
        if hasattr(self.items, "__getitems__"):
            return self.items.__getitems__(inner)
        return [self.items[i] for i in inner]


def collate(items: Batch | Sequence[tuple[Any, int]]) -> Batch:
    """A :class:`Batch` from a fetched batch or a list of ``(input, label)`` items."""
    if isinstance(items, Batch):
        return items
    xs = [torch.as_tensor(x, dtype=torch.float32) for x, _ in items]
    if items and isinstance(items[0][1], torch.Tensor):  # a custom task's tensor targets
        return Batch(torch.stack(xs), torch.stack([y for _, y in items]))
    return Batch(torch.stack(xs), torch.as_tensor([int(y) for _, y in items], dtype=torch.int64))


class IndexBatches(Sampler[list[int]]):
    """A batch sampler from a function that yields lists of indices (for ``batch_sampler``)."""

    def __init__(self, batches: Callable[[], Iterator[list[int]]], length: int) -> None:
        self._batches, self._length = batches, length

    def __iter__(self) -> Iterator[list[int]]:
        return self._batches()

    def __len__(self) -> int:
        return self._length


def ordered_batches(n: int, batch_size: int) -> IndexBatches:
    """``0 .. n-1`` in order, in batches of ``batch_size`` (the last one shorter)."""
    def batches() -> Iterator[list[int]]:
        for i in range(0, n, batch_size):
            yield list(range(i, min(i + batch_size, n)))

    return IndexBatches(batches, -(-n // batch_size))


def shuffled_batches(n: int, batch_size: int, *, seed: int, steps: int) -> IndexBatches:
    """``steps`` mini-batches: epochs of a seeded permutation, each cut into full batches
    (the tail of an epoch is dropped; a split smaller than a batch is one batch)."""
    def batches() -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(seed)
        done = 0
        while done < steps:
            order = torch.randperm(n, generator=generator)
            for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
                if done == steps:
                    return
                yield order[i:i + batch_size].tolist()
                done += 1

    return IndexBatches(batches, steps)


class Split:
    """One split: ``items`` (a map-style dataset of ``(input, label)``) and ``y`` (the labels).

    ``Split(x, y)`` with tensors holds them in memory (x float32 N x ..., y int64 N);
    ``Split(items, y)`` streams ``items``. ``workers`` and ``batch_size`` say how passes
    over the split load it (``data.workers``, ``data.batch_size``).
    """

    def __init__(self, x: torch.Tensor | TorchDataset, y: torch.Tensor | None, *,
                 example_shape: tuple[int, ...] | None = None, workers: int = 0,
                 batch_size: int = EVAL_BATCH) -> None:
        if isinstance(x, torch.Tensor):
            if x.dtype != torch.float32 or x.dim() < 2:
                raise ValueError(
                    f"x must be float32 N x ... (at least 2-D), got {x.dtype} {x.dim()}-D")
            if y.dtype != torch.int64 or y.shape != (len(x),):
                raise ValueError(f"y must be int64 of shape ({len(x)},), got {tuple(y.shape)}")
            items: TorchDataset = TensorItems(x, y)
            example_shape = tuple(x.shape[1:])
        else:
            items = x
            n = len(items)  # type: ignore[arg-type]
            if y is not None and (y.dtype != torch.int64 or y.shape != (n,)):
                raise ValueError(f"labels must be int64 of shape ({n},), "
                                 f"got {y.dtype} {tuple(y.shape)}")
            if example_shape is None:
                example_shape = tuple(collate([items[0]]).x.shape[1:]) if n else ()
        self.items, self._y = items, y
        self.example_shape: tuple[int, ...] = tuple(example_shape)
        self.workers, self.batch_size = workers, batch_size

    def __len__(self) -> int:
        return len(self.items)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return (f"Split({len(self)} x {list(self.example_shape)}, "
                f"{type(self.items).__name__}, workers={self.workers})")

    @property
    def y(self) -> torch.Tensor:
        """The labels, int64 N (in memory); a custom task's tensor targets have none here
        (they come with the inputs in each batch)."""
        if self._y is None:
            raise ValueError("this split's targets are not class labels: read them from "
                             "its batches")
        return self._y

    @property
    def has_labels(self) -> bool:
        return self._y is not None

    @property
    def in_memory(self) -> bool:
        return isinstance(self.items, TensorItems)

    @property
    def x(self) -> torch.Tensor:
        """Every input in memory: for tests and small data; loops use :meth:`loader`."""
        if isinstance(self.items, TensorItems):
            return self.items.x
        parts = [b.x for b in self.loader()]
        return torch.cat(parts) if parts else torch.empty(0, *self.example_shape)

    def _same(self, items: TorchDataset, y: torch.Tensor | None) -> Split:
        return Split(items, y, example_shape=self.example_shape, workers=self.workers,
                     batch_size=self.batch_size)

    def with_loading(self, *, workers: int, batch_size: int) -> Split:
        """This split, loaded with ``workers`` processes in passes of ``batch_size``."""
        return Split(self.items, self._y, example_shape=self.example_shape, workers=workers,
                     batch_size=batch_size)

    def subset(self, indices: Sequence[int] | torch.Tensor) -> Split:
        """The examples ``indices``, in that order (tensor-backed: sliced tensors)."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        y = None if self._y is None else self._y[idx]
        if isinstance(self.items, TensorItems):
            return self._same(TensorItems(self.items.x[idx], self._y[idx]), y)
        return self._same(IndexedItems(self.items, idx.tolist()), y)

    def first(self, n: int) -> Split:
        """The first ``n`` examples (all if fewer)."""
        n = min(n, len(self))
        if isinstance(self.items, TensorItems):
            x, y = self.items.x[:n], self._y[:n]
            return self._same(TensorItems(x, y), y)
        return self.subset(range(n))

    def sample(self, n: int, *, seed: int) -> Split:
        """A seeded random ``n`` of the examples (all if fewer), in index order."""
        if n >= len(self):
            return self
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return self.subset(order[:n].sort().values)

    def head(self, n: int) -> Batch:
        """The first ``n`` examples in memory: for fixed, small probes only."""
        first = self.first(n)
        if isinstance(first.items, TensorItems):
            return Batch(first.items.x, first._y)
        return collate([first.items[i] for i in range(len(first))])

    def batched(self, batches: IndexBatches, *, pin_memory: bool = False) -> DataLoader:
        """A DataLoader of the index batches ``batches`` yields (each a :class:`Batch`)."""
        workers = self.workers
        # its own generator: iterating a DataLoader draws a seed, which must not come from
        # (and shift) the global RNG that dropout and the training loops use
        return DataLoader(self.items, batch_sampler=batches, collate_fn=collate,
                          num_workers=workers, pin_memory=pin_memory,
                          generator=torch.Generator().manual_seed(0),
                          prefetch_factor=2 if workers else None)

    def loader(self, batch_size: int | None = None, *, shuffle: bool = False, seed: int = 0,
               steps: int | None = None, pin_memory: bool = False) -> DataLoader:
        """Batches of the split: in order (every example once), or ``shuffle``\\ d for
        ``steps`` steps (seeded epochs of full batches, as the training loops take them)."""
        size = batch_size or self.batch_size
        if shuffle:
            if steps is None:
                steps = max(len(self) // size, 1)
            return self.batched(shuffled_batches(len(self), size, seed=seed, steps=steps),
                                pin_memory=pin_memory)
        return self.batched(ordered_batches(len(self), size), pin_memory=pin_memory)

    def update_hash(self, h: Any) -> None:
        """Feed the inputs' and labels' bytes (dtype, shape, then values) to ``h``, a batch
        at a time: the digest of the whole tensors, without holding them."""
        h.update(f"torch.float32:{(len(self), *self.example_shape)}".encode())
        for batch in self.loader():
            h.update(batch.x.contiguous().numpy().tobytes())
        if self._y is not None:
            h.update(f"{self._y.dtype}:{tuple(self._y.shape)}".encode())
            h.update(self._y.contiguous().numpy().tobytes())

    def content_hash(self) -> str:
        """SHA-256 of the inputs and labels (see :meth:`update_hash`)."""
        h = hashlib.sha256()
        self.update_hash(h)
        return h.hexdigest()


def concat_outputs(batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """One tensor of per-batch outputs (an empty float tensor for none)."""
    parts = list(batches)
    return torch.cat(parts) if parts else torch.empty(0)
