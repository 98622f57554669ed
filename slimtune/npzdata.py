"""``data: {npz: FILE}``: arrays read in place from an ``.npz`` archive.

An archive written by ``numpy.savez`` stores its members uncompressed, so each input
array is memory-mapped where it lies in the file (``np.memmap`` at the member's offset):
a batch reads its rows, and the array is never read whole. Members of a compressed
archive (``numpy.savez_compressed``) cannot be mapped and are read into memory; the
Dataset's notes say so. Labels (and ``class_names``) are always read into memory.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from slimtune.data import DataError
from slimtune.imports import one_line
from slimtune.split import Batch

NPZ_KEYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
_LOCAL_HEADER = 30  # bytes of a zip local file header before its name and extra field
_CHUNK_ROWS = 4096


def mapped_member(path: Path, key: str) -> np.ndarray | None:
    """``key`` of the archive as a read-only memmap, or None if it is compressed."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f"{key}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(_LOCAL_HEADER)
        if local[:4] != b"PK\x03\x04":
            return None
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + _LOCAL_HEADER + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read(f)
        offset = f.tell()
    if dtype.hasobject:
        return None
    if int(np.prod(shape)) == 0:
        return np.empty(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order="F" if fortran else "C")


class NpzItems(TorchDataset):
    """Rows ``indices`` of one input array of an archive, as float32 tensors, with labels.

    Pickles as the path and key (a worker maps the file itself), unless the member had to
    be read into memory."""

    def __init__(self, path: Path, key: str, array: np.ndarray, indices: Sequence[int],
                 labels: np.ndarray) -> None:
        self.path, self.key = str(path), key
        self.mapped = isinstance(array, np.memmap)
        self._array: np.ndarray | None = array
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.mapped:
            state["_array"] = None
        return state

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = mapped_member(Path(self.path), self.key)
        assert self._array is not None
        return self._array

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = np.array(self.array[self.indices[i]], dtype=np.float32)  # a writable copy
        return torch.from_numpy(x), int(self.labels[i])

    def __getitems__(self, positions: Sequence[int]) -> Batch:
        pos = np.asarray(positions, dtype=np.int64)
        x = np.asarray(self.array[self.indices[pos]], dtype=np.float32)
        return Batch(torch.from_numpy(x), self.labels[torch.as_tensor(pos)])


def npz_arrays(path: Path) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """The archive's arrays (inputs mapped where stored uncompressed) and the notes."""
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
    notes: tuple[str, ...] = ()
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
                mapped = (mapped_member(path, key) if key.startswith("x_") else None)
                arrays[key] = mapped if mapped is not None else archive[key]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
                raise DataError(f"{path}: cannot read {key}: {one_line(e)} (store arrays "
                                "of numbers, not Python objects)") from None
            if key.startswith("x_") and mapped is None and not notes:
                notes = (f"data: {path} is compressed, so its inputs are read into memory; "
                         "write it with numpy.savez (uncompressed) to stream them",)
    return arrays, notes


def check_npz_split(path: Path, split: str, x: np.ndarray, y: np.ndarray) -> None:
    """One line for inputs that are not numbers or not finite, or labels that do not fit."""
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
    if x.dtype.kind == "f":
        for start in range(0, len(x), _CHUNK_ROWS):  # a chunk at a time: x may be mapped
            if not np.isfinite(x[start:start + _CHUNK_ROWS]).all():
                raise DataError(f"{where} holds NaN or infinite values")
